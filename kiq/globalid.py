"""Global IDs: a model object travels as ``gid://APP/Model/ID`` and is loaded again when the job runs.

An argument that is a record of an ORM is stored as ``{"_aj_globalid": "gid://APP/User/42"}``,
Active Job's shape, so Rails and kiq pass records to each other by reference. Locators do the
ORM work and are pluggable: register() adds one; SQLAlchemyLocator and DjangoLocator ship here
and import their ORM only when used, so neither is needed to run kiq.

``app`` names this application in the URIs it writes (``KIQ_GLOBALID_APP``, else ``"kiq"``;
change it with configure()). A URI of another app is refused when located: set the same app
name as the Rails side to read its records. A record that no longer exists raises
RecordNotFoundError, which kiq.serialize turns into kiq.DeserializationError for the job's
``discard_on``; other failures (a database that is down) reach the job's retry policy as they are.

Sessions live as long as the job: the worker runs every job inside scope(), the first lookup of
a job opens the locator's session, all the job's records share it, and it is closed when the
job ends. A job can therefore lazy-load, change and commit the records it was given. Records
located outside a job (app code calling locate()) stay in the thread's own session until that
thread calls release().
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from kiq import serialize
from kiq.serialize import SerializationError

__all__ = [
    "AppMismatchError",
    "DjangoLocator",
    "GlobalID",
    "LocateError",
    "Locator",
    "RecordNotFoundError",
    "SQLAlchemyLocator",
    "UnknownModelError",
    "app",
    "configure",
    "locate",
    "locators",
    "register",
    "release",
    "scope",
    "scoped_resource",
    "to_global_id",
    "unregister",
]

T = TypeVar("T")
L = TypeVar("L", bound="Locator")

app: str = os.environ.get("KIQ_GLOBALID_APP") or "kiq"
"""The app name written into new global IDs and required of located ones (compared without case)."""

logger = logging.getLogger("kiq.globalid")

_APP = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", re.ASCII)
# Python names, Ruby constants (Admin::User) and Django's app_label.Model.
_MODEL = re.compile(r"[A-Za-z_]\w*(?:(?:::|\.)[A-Za-z_]\w*)*", re.ASCII)
_URI = re.compile(r"(?i:gid)://(?P<app>[^/?#]*)/(?P<model>[^/?#]*)/(?P<id>[^?#]*)(?:\?(?P<query>[^#]*))?")


class LocateError(LookupError):
    """A global ID that names no record here; the message says why."""


class AppMismatchError(LocateError):
    """The global ID belongs to another app."""


class UnknownModelError(LocateError):
    """No locator knows the model; a locator raises it to let the next one try."""


class RecordNotFoundError(LocateError):
    """The model is known but the record does not exist (any more)."""


@dataclass(frozen=True)
class GlobalID:
    """A parsed ``gid://APP/MODEL/ID?PARAMS`` URI.

    The id is kept unquoted; in the URI it is form-quoted (a space is ``+``, a
    slash ``%2F``), as Ruby's CGI.escape writes it. Query parameters are kept
    as they came and play no part in locating.
    """

    app: str
    model_name: str
    model_id: str
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not _APP.fullmatch(self.app):
            raise ValueError(f"invalid global ID app name {self.app!r}: use letters, digits, '.' and '-'")
        if not _MODEL.fullmatch(self.model_name):
            raise ValueError(f"invalid global ID model name {self.model_name!r}")
        if not self.model_id:
            raise ValueError("a global ID needs a non-empty id")

    @classmethod
    def build(
        cls,
        model_name: str,
        model_id: object,
        *,
        app: str | None = None,
        params: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    ) -> GlobalID:
        """A global ID of this app (or ``app``) for one record."""
        pairs = tuple(params.items()) if isinstance(params, Mapping) else tuple(params)
        return cls(app or _current_app(), model_name, str(model_id), pairs)

    @classmethod
    def parse(cls, uri: str) -> GlobalID:
        """Read a URI; ValueError says what is wrong with a malformed one."""
        match = _URI.fullmatch(uri)
        if match is None:
            raise ValueError(f"{uri!r} is not a global ID (gid://APP/MODEL/ID)")
        raw_id = match["id"]
        if "/" in raw_id:
            raise ValueError(f"{uri!r} has a composite id; kiq supports single-column ids only")
        params = tuple(urllib.parse.parse_qsl(match["query"] or "", keep_blank_values=True))
        return cls(match["app"], match["model"], urllib.parse.unquote_plus(raw_id), params)

    @property
    def uri(self) -> str:
        text = f"gid://{self.app}/{self.model_name}/{urllib.parse.quote_plus(self.model_id, safe='')}"
        if self.params:
            text += "?" + urllib.parse.urlencode(self.params)
        return text

    def __str__(self) -> str:
        return self.uri


def _current_app() -> str:
    return app


def configure(*, app: str | None = None) -> None:
    """Set the app name of this application's global IDs (Rails' ``GlobalID.app``)."""
    if app is not None:
        if not _APP.fullmatch(app):
            raise ValueError(f"invalid global ID app name {app!r}: use letters, digits, '.' and '-'")
        globals()["app"] = app


# Locators


class Locator(Protocol):
    """Finds records of one ORM (or any store) by model name and id.

    ``identify`` returns ``(model_name, id)`` for an object this locator handles
    and None for any other; for one it handles but cannot name (unsaved, or a
    composite key) it raises SerializationError, which reaches the enqueuing
    caller. ``locate`` returns the record, or raises UnknownModelError for a
    model it does not handle (the next locator then tries) or
    RecordNotFoundError. Other exceptions are failures of the store and are
    left to the job's retry policy.
    """

    def identify(self, obj: object) -> tuple[str, object] | None: ...

    def locate(self, model_name: str, model_id: str) -> object: ...


_locators: list[Locator] = []
_registry_lock = threading.Lock()


def register(locator: L, *, first: bool = False) -> L:
    """Add a locator, after the others (or before them with ``first``); returns it."""
    with _registry_lock:
        if first:
            _locators.insert(0, locator)
        else:
            _locators.append(locator)
    return locator


def unregister(locator: Locator) -> None:
    with _registry_lock:
        _locators.remove(locator)


def locators() -> list[Locator]:
    """The registered locators, in the order they are tried."""
    return list(_locators)


def to_global_id(obj: object) -> str | None:
    """The global ID URI of a record some locator handles, or None for anything else."""
    for locator in list(_locators):
        found = locator.identify(obj)
        if found is not None:
            model_name, model_id = found
            try:
                return GlobalID.build(model_name, model_id).uri
            except ValueError as error:
                raise SerializationError(str(error)) from None
    return None


def locate(gid: str | GlobalID) -> object:
    """The record a global ID names; LocateError (a LookupError) says why when there is none."""
    parsed = GlobalID.parse(gid) if isinstance(gid, str) else gid
    if parsed.app.lower() != app.lower():
        raise AppMismatchError(
            f"{parsed} belongs to app {parsed.app!r}, not to this app {app!r} "
            "(see kiq.globalid.configure(app=...))"
        )
    candidates = list(_locators)
    for locator in candidates:
        try:
            return locator.locate(parsed.model_name, parsed.model_id)
        except UnknownModelError:
            continue
    if not candidates:
        raise UnknownModelError(f"no global ID locator is registered to find model {parsed.model_name!r}")
    raise UnknownModelError(f"no registered locator knows model {parsed.model_name!r}")


# Resources that live as long as a job


class _Scope:
    """A job's resources; entering pushes it on this thread's stack, leaving pops and closes it.

    A plain class rather than a generator context manager: the processor enters
    one per job, and this costs a third as much.
    """

    __slots__ = ("closers", "resources")

    def __init__(self) -> None:
        self.resources: dict[object, object] = {}
        self.closers: list[Callable[[], None]] = []

    def __enter__(self) -> None:
        _stack().append(self)

    def __exit__(self, *exc: object) -> None:
        _stack().pop()
        self.close()

    def close(self) -> None:
        if not self.resources:  # most jobs locate nothing
            return
        closers, self.closers, self.resources = self.closers, [], {}
        for closer in reversed(closers):
            try:
                closer()
            except Exception:
                logger.exception("closing a global ID locator's resource failed")


_local = threading.local()


def _stack() -> list[_Scope]:
    stack: list[_Scope] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = [_Scope()]  # the thread's own scope, ended by release()
    return stack


def scoped_resource(owner: object, open_: Callable[[], tuple[T, Callable[[], None] | None]]) -> T:
    """``owner``'s resource in the innermost scope, opened by ``open_`` on first use.

    ``open_`` returns the resource and how to close it (None: leave it open,
    for one borrowed from elsewhere); it is closed when the scope ends.
    """
    current = _stack()[-1]
    if owner in current.resources:
        return current.resources[owner]  # type: ignore[return-value]
    resource, close = open_()
    current.resources[owner] = resource
    if close is not None:
        current.closers.append(close)
    return resource


def scope() -> _Scope:
    """Resources that locators open inside (one session per locator) are closed on exit.

    kiq's processor runs every job, from reading its arguments to its end, in one scope.
    """
    return _Scope()


def release() -> None:
    """Close what locators opened in this thread outside any scope (locate() from app code)."""
    _stack()[0].close()


def _named_models(models: Iterable[type] | Mapping[str, type] | None) -> dict[str, type]:
    if models is None:
        return {}
    if isinstance(models, Mapping):
        return dict(models)
    named: dict[str, type] = {}
    for model in models:
        if named.get(model.__name__, model) is not model:
            raise ValueError(f"two models are named {model.__name__}: pass models as {{name: class}}")
        named[model.__name__] = model
    return named


class _Names:
    """Model names both ways. Explicit names always hold; an automatic name that two
    models share (or that an explicit name took) names neither of them."""

    def __init__(self, explicit: Mapping[str, type], automatic: Iterable[tuple[type, str]] = ()) -> None:
        self.classes: dict[str, type] = dict(explicit)
        self.names: dict[type, str] = {model: name for name, model in explicit.items()}
        pending = [(model, name) for model, name in automatic if model not in self.names]
        counts = Counter(name for _, name in pending)
        self.shared: set[str] = set()
        for model, name in pending:
            if counts[name] > 1 or name in self.classes:
                self.shared.add(name)
            else:
                self.classes[name] = model
                self.names[model] = name


# SQLAlchemy


class SQLAlchemyLocator:
    """Locates instances of SQLAlchemy mapped classes with ``session.get(Model, id)``.

    ``session_factory`` makes the session lookups use: a ``sessionmaker`` or,
    better, the app's ``scoped_session``, so that the job's own ``Session()``
    is the very session its records are attached to. One session serves every
    record of a job and is closed when the job ends (a ``scoped_session`` is
    removed); a scoped session the thread already had, as when the inline
    adapter runs a job inside a web request, is borrowed and left open. With a
    ``sessionmaker`` the job reaches its session through
    ``sqlalchemy.orm.object_session(record)``. Changes the job does not commit
    are rolled back when the session closes.

    Models are the classes mapped by ``base`` (a declarative base or a
    ``registry``), named by their class name, and those in ``models``: a list,
    or a mapping that gives names of its own (``{"Admin::User": AdminUser}``,
    to match a Ruby class). A class name that two mapped classes share must be
    given in ``models``. Primary keys must be single-column; the id string is
    converted to the key column's Python type.

    Enqueue after the transaction that created the record has committed, or
    the worker may look for it before it exists.
    """

    def __init__(
        self,
        session_factory: Callable[[], Any],
        base: Any = None,
        models: Iterable[type] | Mapping[str, type] | None = None,
    ) -> None:
        if base is None and models is None:
            raise TypeError("SQLAlchemyLocator needs base= (a declarative base or registry) or models=")
        self.session_factory = session_factory
        self.base = base
        self.models = _named_models(models)
        self._names: tuple[int, _Names] | None = None

    def identify(self, obj: object) -> tuple[str, object] | None:
        if isinstance(obj, type):
            return None
        from sqlalchemy import inspect
        from sqlalchemy.orm import InstanceState

        state = inspect(obj, raiseerr=False)
        if not isinstance(state, InstanceState):
            return None
        model = state.mapper.class_
        table = self._table()
        name = table.names.get(model)
        if name is None:
            if model.__name__ in table.shared:
                raise SerializationError(
                    f"two mapped classes are named {model.__name__}: name them in "
                    "SQLAlchemyLocator(models={name: class})"
                )
            return None
        self._key(model, name, SerializationError)
        identity = state.identity
        if identity is None or identity[0] is None:
            raise SerializationError(f"{name} is not saved yet: flush or commit it before enqueueing")
        return name, identity[0]

    def locate(self, model_name: str, model_id: str) -> object:
        table = self._table()
        model = table.classes.get(model_name)
        if model is None:
            if model_name in table.shared:
                raise LocateError(f"two mapped classes are named {model_name}: name them in models=")
            raise UnknownModelError(f"no mapped class named {model_name!r}")
        key = self._convert(model, model_name, model_id)
        session = scoped_resource(self, self._open_session)
        record = session.get(model, key)
        if record is None:
            raise RecordNotFoundError(f"{model_name} with id {model_id!r} not found")
        return record

    def _table(self) -> _Names:
        """Names of the mapped classes, rebuilt when the registry maps more classes."""
        mappers: Iterable[Any] = ()
        if self.base is not None:
            mappers = getattr(self.base, "registry", self.base).mappers
        mappers = list(mappers)
        if self._names is not None and self._names[0] == len(mappers):
            return self._names[1]
        names = _Names(self.models, ((mapper.class_, mapper.class_.__name__) for mapper in mappers))
        self._names = (len(mappers), names)
        return names

    @staticmethod
    def _key(model: type, name: str, error: type[Exception]) -> Any:
        from sqlalchemy import inspect

        columns: Any = inspect(model).primary_key
        if len(columns) != 1:
            listed = ", ".join(column.name for column in columns)
            raise error(f"{name} has a composite primary key ({listed}); global IDs need a single-column key")
        return columns[0]

    def _convert(self, model: type, name: str, model_id: str) -> object:
        column = self._key(model, name, LocateError)
        try:
            kind = column.type.python_type
        except NotImplementedError:
            return model_id
        if kind is str:
            return model_id
        try:
            return kind(model_id)  # int, UUID, Decimal... read their own str()
        except (TypeError, ValueError):
            raise RecordNotFoundError(
                f"{model_id!r} is not a valid id for {name} (its key is {kind.__name__})"
            ) from None

    def _open_session(self) -> tuple[Any, Callable[[], None] | None]:
        from sqlalchemy.orm import scoped_session

        factory = self.session_factory
        if isinstance(factory, scoped_session):
            if factory.registry.has():
                return factory(), None
            return factory(), factory.remove
        session = factory()
        return session, session.close


# Django


class DjangoLocator:
    """Locates Django model instances through their model's default manager (``.get(pk=id)``).

    A model is named by its class name; where two installed apps have a model
    of the same class name, both are named ``app_label.ClassName``, and that
    form is always accepted when locating. ``models`` (a list, or a mapping
    with names of its own such as ``{"Admin::User": User}``) limits the
    locator to those models. A default manager that filters rows (soft
    deletes) makes the rows it hides not found.
    """

    def __init__(self, models: Iterable[type] | Mapping[str, type] | None = None) -> None:
        self.models = _named_models(models) if models is not None else None
        self._names: tuple[object, _Names] | None = None

    def identify(self, obj: object) -> tuple[str, object] | None:
        django_models: Any = importlib.import_module("django.db.models")
        if not isinstance(obj, django_models.Model):
            return None
        model: Any = type(obj)
        name = self._table().names.get(model)
        if name is None:
            return None
        key = obj.pk
        if isinstance(key, tuple):
            raise SerializationError(
                f"{name} has a composite primary key; global IDs need a single-column key"
            )
        if key is None or obj._state.adding:
            raise SerializationError(f"{name} is not saved yet: save() it before enqueueing")
        return name, key

    def locate(self, model_name: str, model_id: str) -> object:
        model = self._model(model_name)
        exceptions: Any = importlib.import_module("django.core.exceptions")
        try:
            key = model._meta.pk.to_python(model_id)
        except exceptions.ValidationError:
            raise RecordNotFoundError(f"{model_id!r} is not a valid id for {model_name}") from None
        try:
            return model._default_manager.get(pk=key)
        except model.DoesNotExist:
            raise RecordNotFoundError(f"{model_name} with id {model_id!r} not found") from None

    def _model(self, model_name: str) -> Any:
        table = self._table()
        model = table.classes.get(model_name)
        if model is not None:
            return model
        if model_name in table.shared:
            raise LocateError(f"two apps have a model named {model_name}: use app_label.{model_name}")
        if self.models is None and "." in model_name:
            apps: Any = importlib.import_module("django.apps").apps
            app_label, _, name = model_name.partition(".")
            with contextlib.suppress(LookupError):
                return apps.get_model(app_label, name)
        raise UnknownModelError(f"no Django model named {model_name!r}")

    def _table(self) -> _Names:
        if self.models is not None:
            if self._names is None:
                self._names = (None, _Names(self.models))
            return self._names[1]
        apps: Any = importlib.import_module("django.apps").apps
        installed = apps.get_models()  # cached by Django until the registry changes
        if self._names is not None and self._names[0] is installed:
            return self._names[1]
        counts = Counter(model.__name__ for model in installed)

        def name(model: Any) -> str:
            unique = counts[model.__name__] == 1
            return str(model.__name__ if unique else f"{model._meta.app_label}.{model.__name__}")

        names = _Names({}, ((model, name(model)) for model in installed))
        names.shared.update(shared for shared, count in counts.items() if count > 1)
        self._names = (installed, names)
        return names


serialize.locate_global_id = locate
serialize.global_id_of = to_global_id
