"""Global IDs: a model object travels as ``gid://APP/Model/ID`` and is loaded again when the job runs.

An argument that is a record of an ORM is stored as ``{"_aj_globalid": "gid://APP/User/42"}``,
Active Job's shape, so Rails and kiq pass records to each other by reference. Locators do the
ORM work and are pluggable: register() adds one; SQLAlchemyLocator and DjangoLocator ship here
and import their ORM only when used, so neither is needed to run kiq. Both load only the models
they are given (an allow-list): a payload comes from whoever can write to Redis, and a job
must not receive a row of a model it never expected.

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
    reasons = []
    for locator in candidates:
        try:
            return locator.locate(parsed.model_name, parsed.model_id)
        except UnknownModelError as error:
            reasons.append(str(error))
    if not candidates:
        raise UnknownModelError(f"no global ID locator is registered to find model {parsed.model_name!r}")
    raise UnknownModelError(f"no registered locator knows model {parsed.model_name!r}: {'; '.join(reasons)}")


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


Models = Iterable[type] | Mapping[str, type]


def _allowed(locator: str, models: Models | None, base: object = None) -> Models:
    """The allow-list a locator was given; without one, TypeError says what to write."""
    if models is None or base is not None or isinstance(models, type):
        raise TypeError(
            f"{locator} needs models=[...], the models jobs may receive: a global ID naming any other "
            "model fails its job instead of loading that row (see docs/globalid.md)"
        )
    return models


def _named_models(models: Models) -> dict[str, type]:
    if isinstance(models, Mapping):
        return dict(models)
    named: dict[str, type] = {}
    for model in models:
        if named.get(model.__name__, model) is not model:
            raise ValueError(f"two models are named {model.__name__}: pass models as {{name: class}}")
        named[model.__name__] = model
    return named


def _not_allowed(locator: str, model_name: str) -> UnknownModelError:
    return UnknownModelError(f"{model_name!r} is not one of the models this {locator} may load (its models=)")


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

    ``models`` is the allow-list, and is required: the mapped classes that jobs may
    receive, as a list (named by class name) or a mapping that gives names of its own
    (``{"Admin::User": AdminUser}``, to match a Ruby class). A payload comes from whoever
    can write to Redis, so a global ID naming any other model fails its job rather than
    loading that row, and a record of any other model is not enqueued. ``base=`` (which
    once allowed every class of a declarative base) is refused with that advice. Primary
    keys must be single-column; the id string is converted to the key column's Python type.

    Enqueue after the transaction that created the record has committed, or the worker
    may look for it before it exists.
    """

    def __init__(
        self,
        session_factory: Callable[[], Any],
        models: Models | None = None,
        *,
        base: object = None,
    ) -> None:
        self.session_factory = session_factory
        self.classes = _named_models(_allowed("SQLAlchemyLocator", models, base))
        self.names = {model: name for name, model in self.classes.items()}

    def identify(self, obj: object) -> tuple[str, object] | None:
        if isinstance(obj, type):
            return None
        from sqlalchemy import inspect
        from sqlalchemy.orm import InstanceState

        state = inspect(obj, raiseerr=False)
        if not isinstance(state, InstanceState):
            return None
        name = self.names.get(state.mapper.class_)
        if name is None:
            return None
        self._key(state.mapper.class_, name, SerializationError)
        identity = state.identity
        if identity is None or identity[0] is None:
            raise SerializationError(f"{name} is not saved yet: flush or commit it before enqueueing")
        return name, identity[0]

    def locate(self, model_name: str, model_id: str) -> object:
        model = self.classes.get(model_name)
        if model is None:
            raise _not_allowed("SQLAlchemyLocator", model_name)
        key = self._convert(model, model_name, model_id)
        session = scoped_resource(self, self._open_session)
        record = session.get(model, key)
        if record is None:
            raise RecordNotFoundError(f"{model_name} with id {model_id!r} not found")
        return record

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

    ``models`` is the allow-list, and is required: the models that jobs may receive. A
    payload comes from whoever can write to Redis, so a global ID naming any other model
    fails its job rather than loading that row, and a record of any other model is not
    enqueued. Given as a list, a model is named by its class name; where two listed models
    share a class name, both are named ``app_label.ClassName``, and that form is always
    accepted when locating. A mapping gives names of its own (``{"Admin::User": User}``).
    A default manager that filters rows (soft deletes) makes the rows it hides not found.
    """

    def __init__(self, models: Models | None = None) -> None:
        models = _allowed("DjangoLocator", models)
        self.shared: set[str] = set()
        if isinstance(models, Mapping):
            self.classes = dict(models)
            self.names = {model: name for name, model in self.classes.items()}
        else:
            self._name(list(models))

    def _name(self, models: list[Any]) -> None:
        """Each model by its class name where that is unique among ``models``, else by
        ``app_label.ClassName``; the latter form finds every one of them."""
        counts = Counter(model.__name__ for model in models)
        self.shared = {name for name, count in counts.items() if count > 1}
        self.classes, self.names = {}, {}
        for model in models:
            full = f"{model._meta.app_label}.{model.__name__}"
            name = model.__name__ if counts[model.__name__] == 1 else full
            self.classes[full] = self.classes[name] = model
            self.names[model] = name

    def identify(self, obj: object) -> tuple[str, object] | None:
        django_models: Any = importlib.import_module("django.db.models")
        if not isinstance(obj, django_models.Model):
            return None
        name = self.names.get(type(obj))
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
        model: Any = self.classes.get(model_name)
        if model is None:
            if model_name in self.shared:
                raise LocateError(f"two apps have a model named {model_name}: use app_label.{model_name}")
            raise _not_allowed("DjangoLocator", model_name)
        exceptions: Any = importlib.import_module("django.core.exceptions")
        try:
            key = model._meta.pk.to_python(model_id)
        except exceptions.ValidationError:
            raise RecordNotFoundError(f"{model_id!r} is not a valid id for {model_name}") from None
        try:
            return model._default_manager.get(pk=key)
        except model.DoesNotExist:
            raise RecordNotFoundError(f"{model_name} with id {model_id!r} not found") from None


serialize.locate_global_id = locate
serialize.global_id_of = to_global_id
