"""The catalog's compiled decoder decodes every event class exactly as the generic decoder it replaced.

`_generic_decode` below is that decoder, kept verbatim as the reference: for any body, of every registered
class, either both give equal events or both refuse it (the compiled one always with `EventCatalogError`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.events import (
    CATALOG,
    REGISTRY,
    DomainEvent,
    EventCatalogError,
    EventRegistry,
    IdentityRulesSet,
    MembershipChanged,
)

ALL_EVENTS = [cls for classes in CATALOG.values() for cls in classes]
_LONG_NUMBER = re.compile(rb"\d{19}")


def _generic_decode(registry: EventRegistry, type_name: str, data: bytes) -> DomainEvent:
    """The catalog's decoder before it was compiled per class (type hints inspected for every value)."""
    cls = registry.event_class(type_name)
    try:
        body = json.loads(data) if _LONG_NUMBER.search(data) else orjson.loads(data)
    except (UnicodeDecodeError, orjson.JSONDecodeError) as error:
        raise EventCatalogError(f"{type_name} body is not JSON: {error}") from error
    body = registry._upcast(cls, body, 1)
    hints = typing.get_type_hints(cls)
    values = {
        f.name: _generic_value(hints[f.name], body[f.name]) for f in dataclasses.fields(cls) if f.name in body
    }
    try:
        return cls(**values)
    except TypeError as error:
        raise EventCatalogError(f"{type_name} body does not fit the class: {error}") from error


def _generic_value(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _generic_value(inner[0], value) if len(inner) == 1 else value
    if hint is datetime:
        return datetime.fromisoformat(value).astimezone(UTC)
    if origin is tuple:
        return tuple(value)
    return value


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits too, the standard library's case
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
"""Any JSON value (NaN aside: it is not equal to itself)."""
ZONES = st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))])
MOMENTS = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=ZONES)


def values_of(hint: Any) -> st.SearchStrategy[Any]:
    """Field values of type `hint`, as the catalog's events hold them."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return st.one_of(*(values_of(arg) for arg in args))
    if origin is tuple:
        return st.lists(values_of(args[0]), max_size=3).map(tuple)
    if origin is Mapping:
        return st.dictionaries(st.text(max_size=5), values_of(args[1]), max_size=3)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        type(None): st.none(),
        Any: JSON,
        datetime: MOMENTS,
        str: st.text(),
        int: st.integers(),
        bool: st.booleans(),
        float: st.floats(allow_nan=False, allow_infinity=False),
    }
    return simple[hint]


def events_of(cls: type[DomainEvent]) -> st.SearchStrategy[DomainEvent]:
    """Instances with random values, fields that have a default sometimes left to it."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    required = {f.name: values_of(hints[f.name]) for f in fields if _required(f)}
    optional = {f.name: values_of(hints[f.name]) for f in fields if not _required(f)}
    return st.fixed_dictionaries(required, optional=optional).map(lambda values: cls(**values))


def bodies_of(cls: type[DomainEvent]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects that fit (every required field, each well typed or null, datetimes at any offset) or may
    not (any field absent, of any JSON type), with fields the class does not know."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    fitting = {f.name: values_of(hints[f.name]).map(_as_json) | st.none() for f in fields}
    wild = {name: strategy | JSON | MOMENTS.map(datetime.isoformat) for name, strategy in fitting.items()}
    required = {f.name: fitting[f.name] for f in fields if _required(f)}
    optional = {f.name: fitting[f.name] for f in fields if not _required(f)}
    return st.fixed_dictionaries(
        required, optional={**optional, "added_later": JSON}
    ) | st.fixed_dictionaries({}, optional={**wild, "added_later": JSON})


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _as_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_as_json(item) for item in value]
    return value


def outcome(decode: Callable[[], DomainEvent]) -> DomainEvent | type[Exception]:
    """The decoded event, or the type of error decoding raised."""
    try:
        return decode()
    except Exception as error:
        return type(error)


def assert_decoded_alike(cls: type[DomainEvent], data: bytes) -> None:
    """The compiled decoder gives the generic one's event, or refuses what it refused."""
    old = outcome(lambda: _generic_decode(REGISTRY, cls.type_name, data))
    new = outcome(lambda: REGISTRY.decode(cls.type_name, data))
    if isinstance(old, DomainEvent):
        assert new == old
    else:
        # The generic decoder let some errors through raw (ValueError from a bad datetime, TypeError from a
        # body that is not an object); the compiled one names them all as the catalog's error.
        assert new is EventCatalogError, (old, new)


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=lambda cls: cls.type_name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_event_round_trips_as_with_the_generic_decoder(
    cls: type[DomainEvent], data: st.DataObject
) -> None:
    event = data.draw(events_of(cls))
    body = event.to_json()
    decoded = REGISTRY.decode(cls.type_name, body)
    assert decoded == event
    assert decoded == _generic_decode(REGISTRY, cls.type_name, body)


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=lambda cls: cls.type_name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_body_decodes_or_is_refused_as_by_the_generic_decoder(
    cls: type[DomainEvent], data: st.DataObject
) -> None:
    assert_decoded_alike(cls, json.dumps(data.draw(bodies_of(cls))).encode())


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=40) | JSON.map(lambda value: json.dumps(value).encode()))
def test_bodies_that_are_not_objects_are_refused_as_by_the_generic_decoder(data: bytes) -> None:
    for cls in ALL_EVENTS:
        assert_decoded_alike(cls, data)


def test_datetimes_come_back_in_utc() -> None:
    body = b'{"audience_id":"a","profile_id":"p","entered":true,"computed_at":"2024-05-01T14:00:00+02:00"}'
    event = REGISTRY.decode("MembershipChanged", body)
    assert isinstance(event, MembershipChanged)
    assert event.computed_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert event.computed_at.utcoffset() == timedelta(0)


def test_a_long_integer_is_kept_exactly() -> None:
    rules = {"limit": 123456789012345678901234567890}
    body = json.dumps({"priority": [], "limits": {}, "rules": rules}).encode()
    event = REGISTRY.decode("IdentityRulesSet", body)
    assert isinstance(event, IdentityRulesSet) and event.rules == rules


@pytest.mark.parametrize(
    "body",
    [
        b'{"audience_id":"a","profile_id":"p","entered":true,"computed_at":"yesterday"}',
        b'{"audience_id":"a","profile_id":"p","entered":true,"computed_at":5}',
        b'{"priority":[], "limits":{}, "max_merges": NaN}',
        b'{"priority":[], "limits":{}, "max_merges": 12345678901234567890123',  # broken, long number
        b'["priority", "limits"]',
    ],
)
def test_a_body_that_does_not_fit_is_the_catalogs_error(body: bytes) -> None:
    for type_name in ("MembershipChanged", "IdentityRulesSet"):
        with pytest.raises(EventCatalogError):
            REGISTRY.decode(type_name, body)


def test_an_upcaster_is_only_given_json_objects() -> None:
    registry, seen = EventRegistry(), []

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Renamed(DomainEvent, type_name="Renamed", version=2, registry=registry):
        name: str

    @registry.upcaster("Renamed", from_version=1)
    def _rename(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"name": body["title"]}

    with pytest.raises(EventCatalogError, match="not a JSON object"):
        registry.decode("Renamed", b'["title"]', schema_version=1)
    assert registry.decode("Renamed", b'{"title":"t"}', schema_version=1) == Renamed(name="t")
    assert seen == [{"title": "t"}]
