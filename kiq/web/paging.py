"""A page of a list, from the query string: ``page``, ``per`` and the filter ``q``.

Every list is read one window at a time (ZRANGE / LRANGE of ``per`` entries): the total comes
from ZCARD / LLEN, never from reading the list. A filtered list is read a window at a time until
the page is full, only the matches parsed (kiq.api.filtered), so its total is not known: it
offers a next page while more matches follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from kiq.api import Job, Window

PER_PAGE = (25, 50, 100, 250)
MAX_PAGE = 10**9  # its start still fits the 64-bit offsets of Redis's range commands
T = TypeVar("T")
Matches = Callable[[str, int, int], tuple[list[Job], bool]]


@dataclass(frozen=True)
class Paging:
    """What the query string asks for."""

    number: int
    per: int
    text: str

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> Paging:
        number = min(_whole(args.get("page"), 1), MAX_PAGE)
        return cls(number, choice(args.get("per"), PER_PAGE), args.get("q", "").strip())

    @property
    def start(self) -> int:
        return (self.number - 1) * self.per


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    paging: Paging
    total: int | None  # None for a filtered list
    more: bool

    @property
    def pages(self) -> int | None:
        return None if self.total is None else max(1, -(-self.total // self.paging.per))


def jobs(paging: Paging, window: Window, size: Callable[[], int], matches: Matches) -> Page[Job]:
    """A page of jobs read through ``window`` (start, count), or when the paging has a filter text,
    through ``matches`` (text, skip, count)."""
    if paging.text:
        found, more = matches(paging.text, paging.start, paging.per)
        return Page(found, paging, None, more)
    total = size()
    return Page(window(paging.start, paging.per), paging, total, paging.start + paging.per < total)


def of(paging: Paging, items: Sequence[T], text: Callable[[T], str]) -> Page[T]:
    """A page of a short list held in memory (processes, periodic entries, queue names)."""
    if paging.text:
        items = [item for item in items if paging.text.lower() in text(item).lower()]
    window = items[paging.start: paging.start + paging.per]
    return Page(window, paging, len(items), paging.start + paging.per < len(items))


def _whole(text: str | None, default: int) -> int:
    try:
        return max(1, int(text or default))
    except ValueError:
        return default


def choice(text: str | None, allowed: Sequence[int], default: int | None = None) -> int:
    """The number ``text`` if it is one of ``allowed``, else ``default`` (or the first allowed)."""
    fallback = allowed[0] if default is None else default
    value = _whole(text, fallback)
    return value if value in allowed else fallback
