"""Required by the kiq workers of the global ID end-to-end test.

Locates users in the SQLite file named by KIQ_TEST_GLOBALID_DB; the job records what it found in Redis.
"""

from __future__ import annotations

import os

from globalid_models import User
from sample_jobs import conn
from sqlalchemy import create_engine
from sqlalchemy.orm import scoped_session, sessionmaker

import kiq
from kiq import globalid

engine = create_engine(f"sqlite:///{os.environ['KIQ_TEST_GLOBALID_DB']}")
Session = scoped_session(sessionmaker(engine))
globalid.register(globalid.SQLAlchemyLocator(Session, models=[User]))  # jobs may receive Users, nothing else


class LocatedUserJob(kiq.Job):
    def perform(self, user: User) -> None:
        titles = ",".join(post.title for post in user.posts)  # lazy load: the session is still open
        conn().rpush("located", f"{user.name}:{titles}")
