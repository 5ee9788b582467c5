"""The example app's data: one SQLAlchemy model, and kiq's global-ID locator allowed to load it."""

from __future__ import annotations

import os

from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker
from sqlalchemy.schema import CreateTable

from kiq import globalid

engine = create_engine(os.environ.get("EXAMPLE_DATABASE_URL", "sqlite:///example.db"))
Session = scoped_session(sessionmaker(engine))


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    welcomed: Mapped[bool] = mapped_column(default=False)


# CREATE TABLE IF NOT EXISTS rather than create_all(): the web app and `kiq start -r jobs` both
# import this module, and create_all's check-then-create fails one of two processes that start
# together on a new database ("table users already exists").
with engine.begin() as connection:
    for table in Base.metadata.sorted_tables:
        connection.execute(CreateTable(table, if_not_exists=True))
globalid.configure(app="example")
# The models a job may receive as arguments: a payload naming any other fails its job.
globalid.register(globalid.SQLAlchemyLocator(Session, models=[User]))
