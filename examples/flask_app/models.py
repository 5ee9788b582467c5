"""The example app's data: one SQLAlchemy model, and kiq's global-ID locator for it."""

from __future__ import annotations

import os

from sqlalchemy import String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, scoped_session, sessionmaker

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


Base.metadata.create_all(engine)
globalid.configure(app="example")
globalid.register(globalid.SQLAlchemyLocator(Session, base=Base))
