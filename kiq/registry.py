"""The registry of job classes: the only classes a worker ever runs.

A payload naming a class that is not registered here is refused, so a payload can never
make kiq import or call arbitrary code. Job classes register themselves when they are
defined (kiq.job); the processor and the adapters look them up by wire name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiq.job import Job

_registry: dict[str, type[Job]] = {}


class JobNameError(TypeError):
    """Two job classes claim one wire name."""


def register(cls: type[Job]) -> None:
    """Make ``cls`` runnable under its wire name; a second class with that name is an error.

    Re-registering the same class (same module and qualified name, as after a
    module reload) replaces the old entry, and so does a class of the same name
    defined inside a function after another (two tests that each define a local
    ``SendJob``): the latest definition is the one in use.
    """
    name = cls.job_name
    if not name:
        raise JobNameError(f"{cls.__qualname__}.job_name must not be empty")
    existing = _registry.get(name)
    if existing is not None and _origin(existing) != _origin(cls) and not _redefined(existing, cls):
        raise JobNameError(
            f"job name {name!r} is used by both {_origin(existing)} and {_origin(cls)}; "
            "set job_name on one of them"
        )
    _registry[name] = cls


def lookup(name: str) -> type[Job] | None:
    return _registry.get(name)


def registered() -> dict[str, type[Job]]:
    return dict(_registry)


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _redefined(existing: type, cls: type) -> bool:
    """Whether ``cls`` is a local class defined again under its name, as a test does: both made
    inside functions, where no worker's import finds them."""
    local = "<locals>"
    return existing.__name__ == cls.__name__ and local in existing.__qualname__ and local in cls.__qualname__
