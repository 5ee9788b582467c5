"""Job arguments to JSON-safe values at enqueue time, and back at run time.

Types JSON lacks are written as ``{"_aj_serialized": NAME, "value": ...}``,
the shape Rails Active Job uses, so Ruby and Python read each other's
arguments. Types Active Job has no serializer for get a ``kiq:`` name.

Built-in types match by exact type: a subclass (an OrderedDict, a namedtuple,
a datetime subclass) would come back as its base class and break the job only
when it runs, so it is refused at enqueue time instead. Enum members and types
added with register() also match subclasses.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import reprlib
import sys
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from enum import Enum
from types import ModuleType
from typing import Any, Protocol, TypeVar

__all__ = [
    "DeserializationError",
    "SerializationError",
    "Serializer",
    "deserialize",
    "deserialize_args",
    "deserialize_kwargs",
    "global_id_of",
    "locate_global_id",
    "register",
    "serialize",
    "serialize_args",
    "serialize_kwargs",
]

T = TypeVar("T")


class SerializationError(TypeError):
    """An argument cannot be stored; raised in the enqueuing caller.

    ``path`` says where the value sits inside the arguments, such as
    ``args[1]['user']``; each enclosing container prepends its step as the
    error passes through it, so building it costs nothing when all is well.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = ""

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class DeserializationError(ValueError):
    """A job's stored arguments cannot be rebuilt."""


class Serializer(Protocol[T]):
    """Support for one more argument type; see register().

    dump() returns a JSON-safe value (anything serialize() accepts works too);
    load() receives that value back and rebuilds the object.
    """

    @property
    def name(self) -> str: ...

    @property
    def python_type(self) -> type[T]: ...

    def dump(self, value: T) -> object: ...

    def load(self, data: Any) -> T: ...


# Turns a "gid://..." URI back into its object, and an object into its URI (None if
# it is no record); kiq.globalid sets both. The locator raises LookupError (or
# ValueError) for a record that cannot be found; anything else, such as a database
# that is down, reaches the job as it is, so that discard_on(DeserializationError)
# never drops a job for a passing outage.
locate_global_id: Callable[[str], object] | None = None
global_id_of: Callable[[object], str | None] | None = None

_TAG = "_aj_serialized"
_GLOBAL_ID = "_aj_globalid"
_SYMBOL_KEYS = "_aj_symbol_keys"
_RESERVED_PREFIX = "_aj_"
_HASH_MARKERS = frozenset({_SYMBOL_KEYS, "_aj_ruby2_keywords", "_aj_hash_with_indifferent_access"})

_AJ = "ActiveJob::Serializers::"
_TIME_WITH_ZONE = _AJ + "TimeWithZoneSerializer"
_DATETIME = _AJ + "DateTimeSerializer"
_RUBY_TIME = _AJ + "TimeSerializer"
_DATE = _AJ + "DateSerializer"
_DURATION = _AJ + "DurationSerializer"
_BIG_DECIMAL = _AJ + "BigDecimalSerializer"
_SYMBOL = _AJ + "SymbolSerializer"
_MODULE = _AJ + "ModuleSerializer"
_TIME = "kiq:Time"
_UUID = "kiq:UUID"
_ENUM = "kiq:Enum"
_TUPLE = "kiq:Tuple"
_SET = "kiq:Set"
_FROZENSET = "kiq:FrozenSet"
_BYTES = "kiq:Bytes"
_DICT = "kiq:Dict"

_SECOND = dt.timedelta(seconds=1)
# Up to 2**52 microseconds (about 142 years) float seconds round-trip exactly.
_EXACT_FLOAT_SECONDS = dt.timedelta(microseconds=2**52)

_PLAIN: frozenset[type] = frozenset({str, int, bool, type(None)})
_SCALARS: frozenset[type] = _PLAIN | {float}

_Writer = Callable[[Any], object]
_Reader = Callable[[object], object]

_writers: dict[type, _Writer] = {}
_subclass_writers: list[tuple[type, _Writer]] = []
_readers: dict[str, _Reader] = {}


# Public API


TOO_DEEP = "nested too deep to store, or a list or dict that contains itself"


def serialize(value: object) -> object:
    """Return one argument as a JSON-safe value."""
    try:
        return _dump(value)
    except SerializationError as error:
        if error.path:
            error.path = "value" + error.path
        raise
    except RecursionError:
        raise SerializationError(TOO_DEEP) from None


def deserialize(value: object) -> object:
    """Rebuild one argument from what serialize() (or Active Job) wrote."""
    return _load(value)


def each_list(args_list: Sequence[Sequence[object]], build: Callable[[int, Sequence[object]], T]) -> list[T]:
    """``build(index, args)`` for each argument list of a bulk enqueue; a SerializationError's
    path names the list first (``args_list[3]: args[0]``)."""
    built = []
    index = 0
    try:
        for index, args in enumerate(args_list):  # the index names the bad list
            built.append(build(index, args))
    except SerializationError as error:
        error.path = f"args_list[{index}]: {error.path}" if error.path else f"args_list[{index}]"
        raise
    return built


def serialize_args(args: Sequence[object]) -> list[object]:
    """Serialize positional arguments; errors name the path from ``args``."""
    if not _is_sequence(args):
        raise SerializationError(f"args must be a list or tuple, not {_type_name(args)}")
    try:
        return _dump_items(args)
    except SerializationError as error:
        error.path = "args" + error.path
        raise
    except RecursionError:
        raise SerializationError(f"args: {TOO_DEEP}") from None


def deserialize_args(args: Sequence[object]) -> list[object]:
    """Rebuild positional arguments."""
    if not _is_sequence(args):
        raise DeserializationError(f"args must be a list, not {_type_name(args)}")
    return _load_items(args)


def serialize_kwargs(kwargs: Mapping[str, object]) -> dict[str, object]:
    """Serialize keyword arguments; errors name the path from ``kwargs``."""
    try:
        for key in kwargs:
            if type(key) is not str:
                raise SerializationError(f"keyword names must be str, not {_type_name(key)}")
        return _dump_str_dict(kwargs)
    except SerializationError as error:
        error.path = "kwargs" + error.path
        raise
    except RecursionError:
        raise SerializationError(f"kwargs: {TOO_DEEP}") from None


def deserialize_kwargs(kwargs: Mapping[str, object]) -> dict[str, object]:
    """Rebuild keyword arguments, dropping Active Job's hash markers."""
    if not isinstance(kwargs, Mapping):
        raise DeserializationError(f"kwargs must be an object, not {_type_name(kwargs)}")
    return _load_hash(kwargs)


def register(serializer: Serializer[Any]) -> None:
    """Add a serializer for a type of the user's, and its subclasses.

    Subclasses are tried in registration order after exact types, so
    register a subclass's own serializer if it must differ from its base's.
    """
    name, kind = serializer.name, serializer.python_type
    if name in _readers:
        raise ValueError(f"a serializer named {name!r} is already registered")
    if kind in _PLAIN or kind in _writers:
        raise ValueError(f"{kind.__qualname__} already has a serializer")

    def write(value: object) -> object:
        return _tagged(name, _dump(serializer.dump(value)))

    def read(data: object) -> object:
        return serializer.load(_load(data))

    _writers[kind] = write
    _subclass_writers.append((kind, write))
    _readers[name] = read


# Writing


def _dump(value: object) -> object:
    kind = type(value)
    if kind in _PLAIN:
        return value
    writer = _writers.get(kind)
    if writer is None:
        writer = _subclass_writer(value)
    return writer(value)


def _subclass_writer(value: object) -> _Writer:
    for kind, writer in _subclass_writers:
        if isinstance(value, kind):
            return writer
    if isinstance(value, type):
        raise SerializationError(f"cannot serialize class {value.__qualname__}")
    gid = global_id_of(value) if global_id_of is not None else None
    if gid is not None:
        return lambda _: {_GLOBAL_ID: gid}
    base = next((kind for kind in (*_PLAIN, *_writers) if isinstance(value, kind)), None)
    if base is not None:  # a subclass of a type kiq writes: it would come back as its base
        raise SerializationError(f"cannot serialize object of type {_type_name(value)}: it would come back "
                                 f"as a plain {base.__name__}; pass {base.__name__}(value), or register a "
                                 "serializer for it (kiq.serialize.register)")
    raise SerializationError(f"cannot serialize object of type {_type_name(value)}")


def _dump_float(value: float) -> float:
    if not math.isfinite(value):
        raise SerializationError(f"cannot serialize {value!r}: JSON has no NaN or infinity")
    return value


def _dump_items(items: Iterable[object]) -> list[object]:
    """Serialize items in order (set items are numbered in iteration order)."""
    result: list[object] = []
    for index, item in enumerate(items):
        try:
            result.append(item if type(item) in _PLAIN else _dump(item))
        except SerializationError as error:
            error.path = f"[{index}]{error.path}"
            raise
    return result


def _dump_dict(value: dict[Any, object]) -> object:
    for key in value:
        if type(key) is not str:
            return _tagged(_DICT, _dump_pairs(value))
    return _dump_str_dict(value)


def _dump_str_dict(value: Mapping[str, object]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, item in value.items():
        if key.startswith(_RESERVED_PREFIX):
            raise SerializationError(
                f"key {key!r} is reserved: keys starting with '_aj_' carry Active Job metadata"
            )
        try:
            result[key] = item if type(item) in _PLAIN else _dump(item)
        except SerializationError as error:
            error.path = f"[{key!r}]{error.path}"
            raise
    return result


def _dump_pairs(value: dict[Any, object]) -> list[object]:
    pairs: list[object] = []
    for key, item in value.items():
        try:
            dumped_key = _dump(key)
        except SerializationError as error:
            error.path = f"[<key>]{error.path}"
            raise
        try:
            pairs.append([dumped_key, _dump(item)])
        except SerializationError as error:
            error.path = f"[{key!r}]{error.path}"
            raise
    return pairs


def _tagged(name: str, value: object) -> dict[str, object]:
    return {_TAG: name, "value": value}


def _write_datetime(value: dt.datetime) -> object:
    if value.utcoffset() is None:
        return _tagged(_DATETIME, value.isoformat(timespec="microseconds"))
    tagged = _tagged(_TIME_WITH_ZONE, value.isoformat(timespec="microseconds"))
    zone = getattr(value.tzinfo, "key", None)  # a zoneinfo.ZoneInfo's name, as Rails 7.1 writes it
    if isinstance(zone, str):
        tagged["time_zone"] = zone
    return tagged


def _write_date(value: dt.date) -> object:
    return _tagged(_DATE, value.isoformat())


def _write_time(value: dt.time) -> object:
    if value.tzinfo is not None and value.utcoffset() is None:
        raise SerializationError(f"cannot serialize {value!r}: its zone gives no offset without a date "
                                 "(a ZoneInfo), so it would come back without its zone; pass a datetime, "
                                 "or a time with a fixed offset (datetime.timezone)")
    return _tagged(_TIME, value.isoformat(timespec="microseconds"))


def _write_timedelta(value: dt.timedelta) -> object:
    """Write Active Job's shape: whole seconds stay an int, as Ruby writes them, and ``parts``
    is a list of ``[unit symbol, amount]`` pairs (Rails writes ``duration.parts`` through
    ``Arguments.serialize``, which turns the hash into pairs; a hash there fails to load)."""
    seconds: float = value // _SECOND
    if value.microseconds:
        if abs(value) > _EXACT_FLOAT_SECONDS:
            raise SerializationError(
                f"cannot serialize {value!r}: too long to keep its microseconds as float seconds"
            )
        seconds = value.total_seconds()
    return {_TAG: _DURATION, "value": seconds, "parts": [[_tagged(_SYMBOL, "seconds"), seconds]]}


def _write_decimal(value: Decimal) -> object:
    return _tagged(_BIG_DECIMAL, str(value))


def _write_uuid(value: uuid.UUID) -> object:
    return _tagged(_UUID, str(value))


def _write_bytes(value: bytes | bytearray) -> object:
    return _tagged(_BYTES, base64.b64encode(value).decode("ascii"))


def _collection_writer(name: str) -> _Writer:
    def write(value: Iterable[object]) -> object:
        return _tagged(name, _dump_items(value))

    return write


def _write_enum(member: Enum) -> object:
    """Write the class by name; refuse now a class a worker could never find."""
    cls = type(member)
    path = f"{cls.__module__}:{cls.__qualname__}"
    if _resolve(path) is not cls:
        raise SerializationError(f"enum {path} cannot be found by name; define it at module level")
    try:
        value = _dump(member.value)
    except SerializationError as error:
        error.path = f".value{error.path}"
        raise
    return _tagged(_ENUM, {"class": path, "value": value})


def _resolve(path: str) -> object | None:
    """Find ``module:Qual.Name`` among loaded modules, or None.

    Reads namespaces directly: importing a module, a module's __getattr__ or
    a descriptor could run code chosen by whoever wrote the payload.
    """
    module_name, _, qualname = path.partition(":")
    found: object = sys.modules.get(module_name)
    for name in qualname.split("."):
        if not isinstance(found, (ModuleType, type)):
            return None
        found = vars(found).get(name)
    return found


# Reading


def _load(value: object) -> object:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, list):
        return _load_items(value)
    if isinstance(value, dict):
        return _load_dict(value)
    raise DeserializationError(f"unexpected {_type_name(value)} in job arguments")


def _load_items(items: Iterable[object]) -> list[object]:
    return [item if type(item) in _SCALARS else _load(item) for item in items]


def _load_dict(value: dict[Any, object]) -> object:
    if _TAG in value:
        return _load_tagged(value)
    if _GLOBAL_ID in value:
        return _load_global_id(value)
    return _load_hash(value)


def _load_hash(value: Mapping[Any, object]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, item in value.items():
        if type(key) is not str:
            raise DeserializationError(f"hash keys must be str, not {_type_name(key)}")
        if key.startswith(_RESERVED_PREFIX):
            if key in _HASH_MARKERS:
                continue
            raise DeserializationError(f"unexpected reserved key {key!r} in a hash")
        result[key] = item if type(item) in _SCALARS else _load(item)
    return result


def _load_tagged(value: Mapping[str, object]) -> object:
    name = value[_TAG]
    reader = _readers.get(name) if type(name) is str else None
    if reader is None:
        raise DeserializationError(f"unknown serializer {name!r}")
    if "value" not in value:
        raise DeserializationError(f"{name} has no 'value'")
    data = value["value"]
    try:
        loaded = reader(data)
    except DeserializationError:
        raise
    except Exception as error:
        raise DeserializationError(f"cannot load {name} from {reprlib.repr(data)}: {error}") from error
    zone = value.get("time_zone")
    if name == _TIME_WITH_ZONE and type(zone) is str:  # Rails 7.1's, and kiq's for a ZoneInfo
        return _in_zone(loaded, zone)  # type: ignore[arg-type]
    return loaded


def _in_zone(moment: dt.datetime, name: str) -> dt.datetime:
    """The time in its named zone (which a fixed offset cannot follow across a DST change); as
    it is where this machine does not know the name."""
    try:
        return moment.astimezone(zoneinfo.ZoneInfo(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return moment


def _load_global_id(value: Mapping[str, object]) -> object:
    gid = value[_GLOBAL_ID]
    if len(value) != 1 or type(gid) is not str:
        raise DeserializationError(f"malformed global ID {reprlib.repr(value)}")
    locator = locate_global_id
    if locator is None:
        raise DeserializationError(f"no global ID locator configured for {gid}")
    try:
        return locator(gid)
    except DeserializationError:
        raise
    except (LookupError, ValueError) as error:
        raise DeserializationError(f"cannot locate {gid}: {error}") from error


def _text(data: object) -> str:
    if not isinstance(data, str):
        raise TypeError(f"expected a string, got {_type_name(data)}")
    return data


def _list(data: object) -> list[object]:
    if not isinstance(data, list):
        raise TypeError(f"expected a list, got {_type_name(data)}")
    return _load_items(data)


_ISO_DATETIME = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})[T ]"
    r"(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?"
    r"(?:(?P<utc>Z)|(?P<sign>[+-])(?P<off_hour>\d{2}):?(?P<off_minute>\d{2})"
    r"(?::?(?P<off_second>\d{2})(?:\.(?P<off_micro>\d{6}))?)?)?",
    re.ASCII,
)


def _read_datetime(data: object) -> dt.datetime:
    """Parse ISO 8601 by hand: datetime.fromisoformat is strict on Python 3.10.

    Digits past microseconds (Ruby writes nanoseconds) are truncated.
    """
    match = _ISO_DATETIME.fullmatch(_text(data))
    if match is None:
        raise ValueError("not an ISO 8601 date and time")
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    return dt.datetime(
        int(match["year"]),
        int(match["month"]),
        int(match["day"]),
        int(match["hour"]),
        int(match["minute"]),
        int(match["second"] or 0),
        int(fraction),
        tzinfo=_offset(match),
    )


def _offset(match: re.Match[str]) -> dt.tzinfo | None:
    if match["utc"]:
        return dt.timezone.utc
    if not match["sign"]:
        return None
    offset = dt.timedelta(
        hours=int(match["off_hour"]),
        minutes=int(match["off_minute"]),
        seconds=int(match["off_second"] or 0),
        microseconds=int(match["off_micro"] or 0),
    )
    return dt.timezone(-offset if match["sign"] == "-" else offset)


def _read_duration(data: object) -> dt.timedelta:
    if not isinstance(data, (int, float)) or isinstance(data, bool):
        raise TypeError(f"expected a number of seconds, got {_type_name(data)}")
    return dt.timedelta(seconds=data)


def _read_decimal(data: object) -> Decimal:
    try:
        return Decimal(_text(data))
    except InvalidOperation:
        raise ValueError("not a decimal number") from None


def _read_pairs(data: object) -> dict[object, object]:
    result: dict[object, object] = {}
    for pair in _list(data):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError("expected a list of [key, value] pairs")
        result[pair[0]] = pair[1]
    return result


def _read_enum(data: object) -> Enum:
    """Find a loaded Enum class and look its member up by value; nothing else runs."""
    if not isinstance(data, dict) or type(data.get("class")) is not str or "value" not in data:
        raise ValueError("expected {'class': 'module:Name', 'value': ...}")
    path = data["class"]
    cls = _resolve(path)
    if cls is None:
        raise DeserializationError(f"enum class {path} is not loaded in this process")
    if not (isinstance(cls, type) and issubclass(cls, Enum)):
        raise DeserializationError(f"{path} is not an Enum class")
    if not cls.__members__:  # Python 3.10 says "not a valid Enum", 3.11 raises TypeError
        raise DeserializationError(f"{path} has no members")
    value = _load(data["value"])
    try:
        return cls(value)
    except ValueError:
        raise DeserializationError(f"{value!r} is not a member of {path}") from None


def _is_sequence(value: object) -> bool:
    if type(value) is list or type(value) is tuple:  # the common case, without the slow ABC check
        return True
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def _type_name(value: object) -> str:
    return type(value).__qualname__


_writers.update(
    {
        float: _dump_float,
        list: _dump_items,
        dict: _dump_dict,
        dt.datetime: _write_datetime,
        dt.date: _write_date,
        dt.time: _write_time,
        dt.timedelta: _write_timedelta,
        Decimal: _write_decimal,
        uuid.UUID: _write_uuid,
        bytes: _write_bytes,
        bytearray: _write_bytes,
        tuple: _collection_writer(_TUPLE),
        set: _collection_writer(_SET),
        frozenset: _collection_writer(_FROZENSET),
    }
)
_subclass_writers.append((Enum, _write_enum))
_readers.update(
    {
        _TIME_WITH_ZONE: _read_datetime,
        _DATETIME: _read_datetime,
        _RUBY_TIME: _read_datetime,
        _DATE: lambda data: dt.date.fromisoformat(_text(data)),
        _TIME: lambda data: dt.time.fromisoformat(_text(data)),
        _DURATION: _read_duration,
        _BIG_DECIMAL: _read_decimal,
        _SYMBOL: _text,
        _MODULE: _text,
        _UUID: lambda data: uuid.UUID(_text(data)),
        _ENUM: _read_enum,
        _TUPLE: lambda data: tuple(_list(data)),
        _SET: lambda data: set(_list(data)),
        _FROZENSET: lambda data: frozenset(_list(data)),
        _BYTES: lambda data: base64.b64decode(_text(data), validate=True),
        _DICT: _read_pairs,
    }
)
