"""Unit tests for kiq.serialize: round trips, failures, and Active Job's wire format."""

from __future__ import annotations

import datetime as dt
import enum
import json
import sys
import uuid
from collections import OrderedDict, namedtuple
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import stable_id

from kiq import serialize as serialize_module
from kiq.serialize import (
    DeserializationError,
    SerializationError,
    deserialize,
    deserialize_args,
    deserialize_kwargs,
    register,
    serialize,
    serialize_args,
    serialize_kwargs,
)

AJ = "ActiveJob::Serializers::"
UTC = dt.timezone.utc
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


class Color(enum.Enum):
    RED = "red"
    GREEN = (0, 255, 0)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


class Outer:
    class Inner(enum.Enum):
        ONE = 1


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str


class Euro(Money):
    pass


class MoneySerializer:
    """A user serializer whose dump returns a value that still needs tagging (a Decimal)."""

    name = "test:Money"
    python_type = Money

    def dump(self, value: Money) -> object:
        return {"amount": value.amount, "currency": value.currency}

    def load(self, data: Any) -> Money:
        return Money(data["amount"], data["currency"])


register(MoneySerializer())


class Foo:
    pass


Point = namedtuple("Point", "x y")


def roundtrip(value: object) -> object:
    """Serialize, go through JSON text as Redis would store it, and read back."""
    text = json.dumps(serialize(value), allow_nan=False)
    return deserialize(json.loads(text))


def shape(value: object) -> object:
    """A hashable description that changes whenever a type or a value changes.

    Plain == is too lenient: 1 == True == Level.LOW and Decimal("1.1") == Decimal("1.10").
    """
    if isinstance(value, (list, tuple)):
        return type(value), tuple(shape(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return type(value), frozenset(shape(item) for item in value)
    if isinstance(value, dict):
        return type(value), frozenset((shape(k), shape(v)) for k, v in value.items())
    return type(value), repr(value)


ROUND_TRIPS = [
    "text",
    "",
    "ünïcødé ✓",
    0,
    -7,
    2**80,
    1.5,
    -0.0,
    True,
    False,
    None,
    [],
    [1, "a", None, [2.5, [True]]],
    {},
    {"a": 1, "b": {"c": [1, {"d": None}]}},
    dt.datetime(2026, 11, 29, 13, 27, 21, 123456),
    dt.datetime(2026, 11, 29, 13, 27, 21, tzinfo=UTC),
    dt.datetime(2026, 11, 29, 13, 27, 21, 5, tzinfo=IST),
    dt.datetime(2026, 11, 29, tzinfo=dt.timezone(-dt.timedelta(hours=3, seconds=7))),
    dt.date(2026, 11, 29),
    dt.time(13, 27, 21, 1),
    dt.time(13, 27, tzinfo=IST),
    dt.timedelta(0),
    dt.timedelta(hours=1),
    dt.timedelta(seconds=-5),
    dt.timedelta(days=3, microseconds=7),
    dt.timedelta(days=40000, microseconds=-1),
    Decimal("1.10"),
    Decimal("-0.000"),
    Decimal("1E+3"),
    Decimal("123456789012345678901234567890.123456789"),
    uuid.UUID("0b0c5c1e-4d2b-4c3e-9a51-6a1f0b9b5c0d"),
    Color.RED,
    Color.GREEN,
    Level.HIGH,
    Perm.READ | Perm.WRITE,
    Outer.Inner.ONE,
    (),
    (1, "a", (2, None)),
    set(),
    {1, "a", (2, 3)},
    frozenset({1, 2}),
    {frozenset({(1, "a"), ("b", None)}), frozenset()},
    {1: "one", 2: "two"},
    {(1, 2): "pair", "s": 3, None: [4]},
    {Color.RED: 1, Level.LOW: 2},
    {"_aj_fine_here": 1, 2: "mixed keys go through the pair list"},
    b"",
    b"\xff\x00\xfe\x80 not utf-8",
    Money(Decimal("9.90"), "EUR"),
    [{"when": dt.date(2026, 1, 1), "ids": (1, 2), "tags": {"x"}, "raw": {1: b"\x00"}}],
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=stable_id)
def test_round_trip(value: object) -> None:
    result = roundtrip(value)
    assert result == value
    assert shape(result) == shape(value)


def test_round_trip_keeps_decimal_exponent() -> None:
    assert str(roundtrip(Decimal("1.10"))) == "1.10"


def test_bytearray_comes_back_as_bytes() -> None:
    assert roundtrip(bytearray(b"\xff\x01")) == b"\xff\x01"
    assert type(roundtrip(bytearray(b"\xff\x01"))) is bytes


def test_aware_datetime_keeps_its_offset() -> None:
    result = roundtrip(dt.datetime(2026, 11, 29, 13, 0, tzinfo=IST))
    assert isinstance(result, dt.datetime)
    assert result.utcoffset() == dt.timedelta(hours=5, minutes=30)


def test_a_datetime_in_a_named_zone_comes_back_in_that_zone_as_rails_7_1_writes_it() -> None:
    """With its offset alone, 12:00 in Paris the day before the change to summer time came back
    as +01:00 for ever: a day later it read 13:00 where Paris says 12:00."""
    paris = dt.datetime(2026, 3, 28, 12, tzinfo=ZoneInfo("Europe/Paris"))
    stored = serialize(paris)
    assert stored == {"_aj_serialized": "ActiveJob::Serializers::TimeWithZoneSerializer",
                      "value": "2026-03-28T12:00:00.000000+01:00", "time_zone": "Europe/Paris"}
    back = roundtrip(paris)
    assert back == paris and isinstance(back, dt.datetime) and back.tzinfo == ZoneInfo("Europe/Paris")
    assert (back + dt.timedelta(days=1)).utcoffset() == dt.timedelta(hours=2)
    unknown = deserialize({**stored, "time_zone": "Nowhere/Atlantis"})  # a name this machine lacks
    assert unknown == paris and unknown.utcoffset() == dt.timedelta(hours=1)  # type: ignore[union-attr]
    assert deserialize({**stored, "time_zone": "../../etc/passwd"}) == paris  # no file read for it
    assert "time_zone" not in serialize(dt.datetime(2026, 3, 28, 12, tzinfo=dt.timezone.utc))  # type: ignore[operator]


def test_args_and_kwargs_round_trip() -> None:
    args = [1, dt.date(2026, 1, 1), {"a": (1, 2)}]
    kwargs = {"size": "large", "at": dt.datetime(2026, 1, 1, tzinfo=UTC)}
    stored = json.loads(json.dumps([serialize_args(args), serialize_kwargs(kwargs)]))
    assert deserialize_args(stored[0]) == args
    assert deserialize_kwargs(stored[1]) == kwargs


def test_serialize_args_accepts_a_tuple() -> None:
    assert serialize_args((1, "a")) == [1, "a"]


def test_primitives_pass_through_unchanged() -> None:
    for value in ["text", 3, 2.5, True, None]:
        assert serialize(value) is value
    nested = {"a": [1, "b"]}
    assert serialize(nested) == nested


def test_input_is_not_modified() -> None:
    value = {"a": [dt.date(2026, 1, 1)], "b": {1: 2}}
    serialize(value)
    assert value == {"a": [dt.date(2026, 1, 1)], "b": {1: 2}}


def test_int_enum_is_tagged_not_an_int() -> None:
    assert serialize(Level.HIGH) == {
        "_aj_serialized": "kiq:Enum",
        "value": {"class": f"{Level.__module__}:Level", "value": 2},
    }


def test_user_serializer_matches_subclasses() -> None:
    stored = serialize(Euro(Decimal("1"), "EUR"))
    assert stored == {
        "_aj_serialized": "test:Money",
        "value": {
            "amount": {"_aj_serialized": AJ + "BigDecimalSerializer", "value": "1"},
            "currency": "EUR",
        },
    }


# What kiq writes, which Ruby's Active Job 6.1 must be able to read


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            dt.datetime(2026, 11, 29, 13, 27, 21, 123456, tzinfo=UTC),
            {
                "_aj_serialized": AJ + "TimeWithZoneSerializer",
                "value": "2026-11-29T13:27:21.123456+00:00",
            },
        ),
        (
            dt.datetime(2026, 11, 29, 13, 27, 21),
            {"_aj_serialized": AJ + "DateTimeSerializer", "value": "2026-11-29T13:27:21.000000"},
        ),
        (dt.date(2026, 11, 29), {"_aj_serialized": AJ + "DateSerializer", "value": "2026-11-29"}),
        (dt.time(8, 5, tzinfo=IST), {"_aj_serialized": "kiq:Time", "value": "08:05:00.000000+05:30"}),
        (
            dt.timedelta(hours=1),
            {
                "_aj_serialized": AJ + "DurationSerializer",
                "value": 3600,
                "parts": [[{"_aj_serialized": AJ + "SymbolSerializer", "value": "seconds"}, 3600]],
            },
        ),
        (
            dt.timedelta(seconds=1.5),
            {
                "_aj_serialized": AJ + "DurationSerializer",
                "value": 1.5,
                "parts": [[{"_aj_serialized": AJ + "SymbolSerializer", "value": "seconds"}, 1.5]],
            },
        ),
        (Decimal("1.10"), {"_aj_serialized": AJ + "BigDecimalSerializer", "value": "1.10"}),
        (b"\xff\x00", {"_aj_serialized": "kiq:Bytes", "value": "/wA="}),
        ({1: "a"}, {"_aj_serialized": "kiq:Dict", "value": [[1, "a"]]}),
        ((1, 2), {"_aj_serialized": "kiq:Tuple", "value": [1, 2]}),
    ],
    ids=stable_id,
)
def test_wire_format(value: object, expected: object) -> None:
    assert serialize(value) == expected
    assert type(serialize(value)["value"]) is type(expected["value"])  # type: ignore[index]


# What Ruby's Active Job 6.1 writes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"_aj_serialized":"ActiveJob::Serializers::TimeWithZoneSerializer",'
            '"value":"2026-11-29T13:27:21.123456789Z"}',
            dt.datetime(2026, 11, 29, 13, 27, 21, 123456, tzinfo=UTC),
        ),
        (
            '{"_aj_serialized":"ActiveJob::Serializers::TimeWithZoneSerializer",'
            '"value":"2026-11-29T22:27:21.000000000+09:00"}',
            dt.datetime(2026, 11, 29, 22, 27, 21, tzinfo=dt.timezone(dt.timedelta(hours=9))),
        ),
        (
            '{"_aj_serialized":"ActiveJob::Serializers::TimeSerializer",'
            '"value":"2026-11-29T08:27:21.5-05:00"}',
            dt.datetime(2026, 11, 29, 8, 27, 21, 500000, tzinfo=dt.timezone(-dt.timedelta(hours=5))),
        ),
        (
            '{"_aj_serialized":"ActiveJob::Serializers::DateTimeSerializer",'
            '"value":"2026-11-29T13:27:21+00:00"}',
            dt.datetime(2026, 11, 29, 13, 27, 21, tzinfo=UTC),
        ),
        (
            '{"_aj_serialized":"ActiveJob::Serializers::DateSerializer","value":"2026-11-29"}',
            dt.date(2026, 11, 29),
        ),
        (
            '{"_aj_serialized":"ActiveJob::Serializers::DurationSerializer","value":3600,'
            '"parts":[[{"_aj_serialized":"ActiveJob::Serializers::SymbolSerializer","value":"hours"},1]]}',
            dt.timedelta(hours=1),
        ),
        (
            '{"_aj_serialized":"ActiveJob::Serializers::DurationSerializer","value":3600,'
            '"parts":{"hours":1,"_aj_symbol_keys":["hours"]}}',
            dt.timedelta(hours=1),
        ),
        (
            '{"_aj_serialized":"ActiveJob::Serializers::DurationSerializer","value":90.5,'
            '"parts":{"minutes":1.5,"seconds":0.5,"_aj_symbol_keys":["minutes","seconds"]}}',
            dt.timedelta(seconds=90.5),
        ),
        ('{"_aj_serialized":"ActiveJob::Serializers::SymbolSerializer","value":"pending"}', "pending"),
        (
            '{"_aj_serialized":"ActiveJob::Serializers::ModuleSerializer","value":"Billing::Invoice"}',
            "Billing::Invoice",
        ),
        (
            '{"_aj_serialized":"ActiveJob::Serializers::BigDecimalSerializer","value":"0.11e1"}',
            Decimal("1.1"),
        ),
        ('{"name":"x","count":2,"_aj_symbol_keys":["name","count"]}', {"name": "x", "count": 2}),
        ('{"a":{"b":1,"_aj_symbol_keys":[]},"_aj_symbol_keys":["a"]}', {"a": {"b": 1}}),
        ('{"name":"x","_aj_hash_with_indifferent_access":true}', {"name": "x"}),
        ('{"size":"large","_aj_ruby2_keywords":["size"]}', {"size": "large"}),
    ],
    ids=lambda item: item if isinstance(item, str) else "",
)
def test_reads_active_job_json(text: str, expected: object) -> None:
    result = deserialize(json.loads(text))
    assert result == expected
    assert shape(result) == shape(expected)


def test_naive_when_ruby_string_has_no_offset() -> None:
    result = deserialize({"_aj_serialized": AJ + "DateTimeSerializer", "value": "2026-11-29T13:27:21"})
    assert result == dt.datetime(2026, 11, 29, 13, 27, 21)
    assert isinstance(result, dt.datetime) and result.tzinfo is None


def test_reads_a_ruby_argument_list() -> None:
    text = (
        '[42,"two",{"_aj_serialized":"ActiveJob::Serializers::SymbolSerializer","value":"low"},'
        '{"size":"large","_aj_ruby2_keywords":["size"]}]'
    )
    assert deserialize_args(json.loads(text)) == [42, "two", "low", {"size": "large"}]


# Global IDs


def test_global_id_without_locator_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serialize_module, "locate_global_id", None)
    with pytest.raises(DeserializationError, match="no global ID locator configured for gid://app/User/1"):
        deserialize({"_aj_globalid": "gid://app/User/1"})


def test_global_id_calls_the_locator(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    user = object()

    def locate(gid: str) -> object:
        calls.append(gid)
        return user

    monkeypatch.setattr(serialize_module, "locate_global_id", locate)
    result = deserialize_args(json.loads('[1, [{"_aj_globalid": "gid://app/User/7"}]]'))
    assert result == [1, [user]]
    assert result[1][0] is user  # type: ignore[index]
    assert calls == ["gid://app/User/7"]


def test_global_id_locator_errors_become_deserialization_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = LookupError("User 7 not found")

    def locate(gid: str) -> object:
        raise missing

    monkeypatch.setattr(serialize_module, "locate_global_id", locate)
    with pytest.raises(DeserializationError, match="cannot locate gid://app/User/7") as caught:
        deserialize({"_aj_globalid": "gid://app/User/7"})
    assert caught.value.__cause__ is missing


@pytest.mark.parametrize(
    "value", [{"_aj_globalid": 7}, {"_aj_globalid": "gid://app/User/7", "extra": 1}], ids=stable_id
)
def test_malformed_global_id(value: object) -> None:
    with pytest.raises(DeserializationError, match="malformed global ID"):
        deserialize(value)


# Failures at enqueue time


def generator() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (Foo(), "cannot serialize object of type Foo"),
        (Foo, "cannot serialize class Foo"),
        (generator, "cannot serialize object of type function"),
        (generator(), "cannot serialize object of type generator"),
        (OrderedDict(a=1), r"type OrderedDict: it would come back as a plain dict; pass dict\(value\)"),
        (Point(1, 2), r"type Point: it would come back as a plain tuple; pass tuple\(value\)"),
        (type("Text", (str,), {})("x"), r"type Text: .* pass str\(value\), or register a serializer"),
        (float("nan"), "cannot serialize nan"),
        (float("inf"), "cannot serialize inf"),
        (float("-inf"), "cannot serialize -inf"),
        (dt.timedelta.max, "too long to keep its microseconds"),
        (dt.time(3, 4, tzinfo=ZoneInfo("Europe/Paris")), "its zone gives no offset without a date"),
    ],
    ids=stable_id,
)
def test_unsupported_values(value: object, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        serialize(value)


def test_error_names_the_path_in_args() -> None:
    with pytest.raises(SerializationError) as caught:
        serialize_args([1, {"user": Foo()}])
    assert str(caught.value) == "args[1]['user']: cannot serialize object of type Foo"
    assert isinstance(caught.value, TypeError)


@pytest.mark.parametrize(
    ("args", "path"),
    [
        ([[1, (2, float("nan"))]], "args[0][1][1]"),
        ([{1: {"deep": [Foo()]}}], "args[0][1]['deep'][0]"),
        ([{(1, Foo()): "key"}], "args[0][<key>][1]"),
        ([{Foo()}], "args[0][0]"),
        ([Color.RED, Money(Decimal(1), Foo())], "args[1]['currency']"),  # type: ignore[arg-type]
    ],
    ids=stable_id,
)
def test_error_path_through_containers(args: list[object], path: str) -> None:
    with pytest.raises(SerializationError) as caught:
        serialize_args(args)
    assert caught.value.path == path
    assert str(caught.value).startswith(path + ": cannot serialize ")


def test_error_names_the_path_in_kwargs() -> None:
    with pytest.raises(SerializationError, match=r"^kwargs\['when'\]\[0\]: cannot serialize"):
        serialize_kwargs({"when": [Foo()]})


def test_error_path_of_a_single_value() -> None:
    with pytest.raises(SerializationError, match=r"^value\[0\]: cannot serialize object of type Foo"):
        serialize([Foo()])


@pytest.mark.parametrize(
    "value", [{"_aj_globalid": "gid://x"}, {"a": {"_aj_serialized": "x"}}, {"_aj_other": 1}], ids=stable_id
)
def test_reserved_keys_are_refused(value: object) -> None:
    with pytest.raises(SerializationError, match=r"key '_aj_.*' is reserved"):
        serialize_args([value])


def test_reserved_keyword_name_is_refused() -> None:
    with pytest.raises(SerializationError, match=r"^kwargs: key '_aj_symbol_keys' is reserved"):
        serialize_kwargs({"_aj_symbol_keys": 1})


def test_a_container_that_holds_itself_or_nests_too_deep_is_refused_as_unstorable() -> None:
    looped: list[object] = [1]
    looped.append(looped)
    cyclic: dict[str, object] = {}
    cyclic["self"] = cyclic
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    too_deep = "nested too deep to store, or a list or dict that contains itself"
    with pytest.raises(SerializationError, match=f"^args: {too_deep}$"):
        serialize_args([looped])
    with pytest.raises(SerializationError, match=f"^kwargs: {too_deep}$"):
        serialize_kwargs({"d": cyclic})
    with pytest.raises(SerializationError, match=f"^{too_deep}$"):
        serialize(deep)


def test_args_must_be_a_sequence() -> None:
    with pytest.raises(SerializationError, match="args must be a list or tuple, not str"):
        serialize_args("abc")


def test_enum_defined_in_a_function_fails_at_enqueue() -> None:
    class Local(enum.Enum):
        A = 1

    with pytest.raises(SerializationError, match="cannot be found by name"):
        serialize(Local.A)


def test_enum_with_unsupported_value_names_the_value() -> None:
    Odd = enum.Enum("Odd", {"A": Foo()}, module=__name__)
    globals()["Odd"] = Odd
    try:
        with pytest.raises(SerializationError, match=r"^args\[0\]\.value: cannot serialize"):
            serialize_args([Odd.A])
    finally:
        del globals()["Odd"]


# Failures at run time


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"_aj_serialized": "Nope::Serializer", "value": 1}, "unknown serializer 'Nope::Serializer'"),
        ({"_aj_serialized": 5, "value": 1}, "unknown serializer 5"),
        ({"_aj_serialized": "kiq:Tuple"}, "kiq:Tuple has no 'value'"),
        ({"_aj_serialized": "kiq:Tuple", "value": "ab"}, "cannot load kiq:Tuple from 'ab': expected a list"),
        ({"_aj_serialized": "kiq:Set", "value": [[1]]}, "cannot load kiq:Set .*unhashable"),
        ({"_aj_serialized": "kiq:Dict", "value": [[1]]}, "expected a list of \\[key, value\\] pairs"),
        ({"_aj_serialized": "kiq:Dict", "value": ["ab"]}, "expected a list of \\[key, value\\] pairs"),
        ({"_aj_serialized": "kiq:Bytes", "value": "not base64!"}, "cannot load kiq:Bytes"),
        ({"_aj_serialized": "kiq:Bytes", "value": 5}, "expected a string, got int"),
        ({"_aj_serialized": "kiq:UUID", "value": "xyz"}, "cannot load kiq:UUID"),
        ({"_aj_serialized": "kiq:Time", "value": "25:00"}, "cannot load kiq:Time"),
        ({"_aj_serialized": AJ + "DateSerializer", "value": 20261129}, "expected a string"),
        ({"_aj_serialized": AJ + "DateSerializer", "value": "2026-13-01"}, "cannot load"),
        ({"_aj_serialized": AJ + "TimeWithZoneSerializer", "value": "yesterday"}, "not an ISO 8601"),
        ({"_aj_serialized": AJ + "TimeWithZoneSerializer", "value": "2026-02-30T00:00:00Z"}, "day"),
        ({"_aj_serialized": AJ + "TimeWithZoneSerializer", "value": "2026-01-01T00:00Z+"}, "ISO"),
        ({"_aj_serialized": AJ + "TimeSerializer", "value": "2026-01-01T00:00:00+25:00"}, "cannot load"),
        (
            {"_aj_serialized": AJ + "TimeSerializer", "value": "\uff12\uff10\uff12\uff16-01-01T00:00:00Z"},
            "ISO",
        ),
        ({"_aj_serialized": AJ + "BigDecimalSerializer", "value": "abc"}, "not a decimal number"),
        ({"_aj_serialized": AJ + "DurationSerializer", "value": "1h"}, "expected a number"),
        ({"_aj_serialized": AJ + "DurationSerializer", "value": True}, "expected a number"),
        ({"_aj_serialized": AJ + "DurationSerializer", "value": 1e20}, "cannot load"),
        ({"_aj_serialized": "kiq:Enum", "value": "Color.RED"}, "expected {'class'"),
        ({"_aj_serialized": "kiq:Enum", "value": {"class": 1, "value": 1}}, "expected {'class'"),
        ({"_aj_serialized": "test:Money", "value": {"amount": 1}}, "cannot load test:Money"),
        ({"_aj_other": 1}, "unexpected reserved key '_aj_other'"),
        ({"a": {"b": [{"_aj_serialized": "x", "value": 1}]}}, "unknown serializer 'x'"),
    ],
    ids=stable_id,
)
def test_malformed_input(value: object, message: str) -> None:
    with pytest.raises(DeserializationError, match=message):
        deserialize(value)


@pytest.mark.parametrize("value", [object(), (1, 2), {1: "a"}, b"x"], ids=stable_id)
def test_non_json_input_is_refused(value: object) -> None:
    with pytest.raises(DeserializationError):
        deserialize(value)


def test_args_and_kwargs_shapes_are_checked() -> None:
    with pytest.raises(DeserializationError, match="args must be a list, not str"):
        deserialize_args("abc")
    with pytest.raises(DeserializationError, match="kwargs must be an object, not list"):
        deserialize_kwargs([1])  # type: ignore[arg-type]
    with pytest.raises(DeserializationError, match="unexpected reserved key '_aj_serialized'"):
        deserialize_kwargs({"_aj_serialized": "kiq:Tuple", "value": []})


def test_enum_value_not_a_member() -> None:
    stored = {"_aj_serialized": "kiq:Enum", "value": {"class": f"{__name__}:Color", "value": "blue"}}
    with pytest.raises(DeserializationError, match=f"'blue' is not a member of {__name__}:Color"):
        deserialize(stored)


def enum_tag(path: str) -> dict[str, object]:
    return {"_aj_serialized": "kiq:Enum", "value": {"class": path, "value": 1}}


def test_enum_class_not_loaded_is_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The module exists and is importable, but loading must not import it."""
    (tmp_path / "kiq_canary_enum.py").write_text("import enum\nclass Canary(enum.Enum):\n    A = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DeserializationError, match="kiq_canary_enum:Canary is not loaded"):
        deserialize(enum_tag("kiq_canary_enum:Canary"))
    assert "kiq_canary_enum" not in sys.modules


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module:Color", "is not loaded"),
        (f"{__name__}:Missing", "is not loaded"),
        (f"{__name__}:Outer.Missing", "is not loaded"),
        (f"{__name__}:Color.RED.value", "is not loaded"),
        (f"{__name__}:Color", "is not a member"),
        (f"{__name__}", "is not loaded"),
        ("os:system", "os:system is not an Enum class"),
        ("json:JSONDecoder", "json:JSONDecoder is not an Enum class"),
        ("enum:Enum", "has no members"),
        (f"{__name__}:Foo", "is not an Enum class"),
    ],
)
def test_enum_class_lookup(path: str, message: str) -> None:
    with pytest.raises(DeserializationError, match=message):
        deserialize(enum_tag(path))


def test_enum_lookup_does_not_run_module_getattr() -> None:
    calls: list[str] = []
    module = type(sys)("kiq_getattr_module")
    module.__getattr__ = lambda name: calls.append(name)  # type: ignore[method-assign]
    sys.modules["kiq_getattr_module"] = module
    try:
        with pytest.raises(DeserializationError, match="is not loaded"):
            deserialize(enum_tag("kiq_getattr_module:Anything"))
    finally:
        del sys.modules["kiq_getattr_module"]
    assert calls == []


# Registration


class OtherMoneySerializer(MoneySerializer):
    name = "test:OtherMoney"


def test_register_refuses_a_name_twice() -> None:
    with pytest.raises(ValueError, match="'test:Money' is already registered"):
        register(MoneySerializer())


def test_register_refuses_a_type_twice_and_changes_nothing() -> None:
    with pytest.raises(ValueError, match="Money already has a serializer"):
        register(OtherMoneySerializer())
    with pytest.raises(DeserializationError, match="unknown serializer 'test:OtherMoney'"):
        deserialize({"_aj_serialized": "test:OtherMoney", "value": {}})


@pytest.mark.parametrize("kind", [int, str, dict, dt.datetime, tuple])
def test_register_refuses_built_in_types(kind: type) -> None:
    class Builtin:
        name = f"test:{kind.__name__}"
        python_type = kind

        def dump(self, value: object) -> object:
            return value

        def load(self, data: Any) -> object:
            return data

    with pytest.raises(ValueError, match="already has a serializer"):
        register(Builtin())


def test_register_refuses_active_job_names() -> None:
    class Impostor(MoneySerializer):
        name = AJ + "DateSerializer"
        python_type = Euro

    with pytest.raises(ValueError, match="already registered"):
        register(Impostor())
