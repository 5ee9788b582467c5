"""SQLAlchemy models for the global ID tests, shared by the test process and the kiq workers."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    posts: Mapped[list[Post]] = relationship(back_populates="author", cascade="all, delete-orphan")


class Post(Base):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    author: Mapped[User] = relationship(back_populates="posts")


class Tag(Base):
    """A string primary key, to check ids that need quoting."""

    __tablename__ = "tags"

    slug: Mapped[str] = mapped_column(String(50), primary_key=True)


class Membership(Base):
    """A composite primary key, which global IDs refuse."""

    __tablename__ = "memberships"

    user_id: Mapped[int] = mapped_column(primary_key=True)
    group: Mapped[str] = mapped_column(String(50), primary_key=True)
