"""Domain events as frozen dataclasses: stable type names, JSON bodies, metadata, and upcasting.

A type name is permanent: once an event was appended under a name, that name means that event forever.
Bodies are UTF-8 JSON with datetimes as ISO-8601 UTC (`2024-05-01T12:00:00.000000Z`). Changes are additive;
anything else bumps the class's `version` and registers an upcaster from the previous version.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import orjson

from cdp.eventlog.port import NewEvent, RecordedEvent

JsonObject = Mapping[str, Any]
"""A JSON object field (definitions, settings); never personal data in the clear."""

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z0-9]{2,63}$")
_ACTOR = re.compile(r"^(admin|system|(admin|source|service):[A-Za-z0-9_.]{1,64})$")
_OPAQUE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

E = TypeVar("E", bound="DomainEvent")
Converter = Callable[[Any], Any]
"""A JSON value → a field's value (None stays None)."""

# orjson turns integers beyond 64 bits into floats, so a body with a run of 19 digits anywhere (inside strings
# too: cheap rather than exact) takes the standard library. The run is found by mapping every digit to "0" and
# anything else to " ": a regex search for it costs about ten times what orjson takes to parse a 1 KB body.
_DIGITS_ONLY = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))  # ASCII digit → "0", else " "
_LONG_NUMBER = b"0" * 19
_SCALARS = frozenset({str, int, bool, float, type(None)})
"""Types `_encode` hands to orjson as they are, without its isinstance checks."""


class EventCatalogError(Exception):
    """An event cannot be encoded, decoded or upcast (unknown type, bad body, version gap)."""


class UnknownEventType(EventCatalogError):
    """No event class is registered under this type name (a projection may skip it)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DomainEvent:
    """Base of every event; subclass with `type_name=` (and `version=` once the shape changes)."""

    type_name: ClassVar[str]
    version: ClassVar[int] = 1

    def __init_subclass__(
        cls, *, type_name: str | None = None, version: int = 1, registry: EventRegistry | None = None
    ) -> None:
        super().__init_subclass__()
        if type_name is not None:
            cls.type_name, cls.version = type_name, version
            (registry or REGISTRY).register(cls)

    def to_json(self) -> bytes:
        """The body: UTF-8 JSON of the fields, keys sorted so equal events give equal bytes."""
        body = {name: _encode(getattr(self, name)) for name in _layout(type(self)).names}
        try:
            return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        except TypeError:  # an integer beyond 64 bits: the standard library writes the same JSON, slower
            return json.dumps(body, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()

    def to_new_event(self, metadata: EventMetadata, *, id: uuid.UUID | None = None) -> NewEvent:
        """This event ready to append; pass a deterministic `id` to make a retried append idempotent."""
        meta = metadata.to_mapping(self.version)
        return NewEvent(type=self.type_name, data=self.to_json(), metadata=meta, id=id or uuid.uuid4())


@dataclasses.dataclass(frozen=True)
class EventMetadata:
    """Who caused an event and in answer to what; never personal data (values are validated)."""

    actor: str
    correlation_id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    causation_id: str | None = None

    def __post_init__(self) -> None:
        if not _ACTOR.match(self.actor):
            raise ValueError(
                f"actor must be admin, system, admin:<id>, source:<id> or service:<name>: {self.actor!r}"
            )
        for name in ("correlation_id", "causation_id"):
            value = getattr(self, name)
            if value is not None and not _OPAQUE_ID.match(value):
                raise ValueError(f"{name} must be an opaque id (letters, digits, _.:-)")

    @classmethod
    def caused_by(cls, cause: RecordedEvent, actor: str) -> EventMetadata:
        """Metadata for an event written in reaction to `cause`: same correlation, caused by it."""
        correlation = cause.metadata.get("correlation_id") or str(cause.id)
        return cls(actor=actor, correlation_id=correlation, causation_id=str(cause.id))

    @classmethod
    def of(cls, recorded: RecordedEvent) -> EventMetadata:
        """The metadata a recorded event carries (tolerating events written without any)."""
        meta = recorded.metadata
        return cls(
            actor=meta.get("actor", "system"),
            correlation_id=meta.get("correlation_id") or str(recorded.id),
            causation_id=meta.get("causation_id"),
        )

    def to_mapping(self, schema_version: int) -> dict[str, str]:
        """The string mapping stored as the event's metadata."""
        meta = {
            "actor": self.actor,
            "correlation_id": self.correlation_id,
            "schema_version": str(schema_version),
        }
        if self.causation_id is not None:
            meta["causation_id"] = self.causation_id
        return meta


class EventRegistry:
    """Type name → event class, plus upcasters `(type name, from version) → fn(body) -> body`."""

    def __init__(self) -> None:
        self._classes: dict[str, type[DomainEvent]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, cls: type[DomainEvent]) -> None:
        """Register an event class; type names are unique and PascalCase."""
        if not _TYPE_NAME.match(cls.type_name):
            raise EventCatalogError(f"type name {cls.type_name!r} must be PascalCase letters and digits")
        if cls.type_name in self._classes:
            raise EventCatalogError(f"type name {cls.type_name!r} is already registered")
        self._classes[cls.type_name] = cls

    def upcaster(self, type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator registering the step that turns a `from_version` body into the next version's body."""

        def register(fn: Upcaster) -> Upcaster:
            self._upcasters[(type_name, from_version)] = fn
            return fn

        return register

    def event_class(self, type_name: str) -> type[DomainEvent]:
        """The class registered under `type_name`; UnknownEventType otherwise."""
        try:
            return self._classes[type_name]
        except KeyError:
            raise UnknownEventType(f"no event type {type_name!r} in the catalog") from None

    def type_names(self) -> tuple[str, ...]:
        """Every registered type name."""
        return tuple(self._classes)

    def decode(self, type_name: str, data: bytes, schema_version: int = 1) -> DomainEvent:
        """Parse a body written at `schema_version`, upcasting it to the class's current version."""
        cls = self.event_class(type_name)
        body = _parse(type_name, data)
        if schema_version != cls.version:
            body = self._upcast(cls, body, schema_version)
        fields = _layout(cls).fields
        try:
            # Absent fields take the class's defaults; fields this class does not know are ignored.
            return cls(
                **{
                    name: body[name] if convert is None else convert(body[name])
                    for name, convert in fields
                    if name in body
                }
            )
        except (TypeError, ValueError) as error:
            raise EventCatalogError(f"{type_name} body does not fit the class: {error}") from error

    def from_recorded(self, recorded: RecordedEvent) -> DomainEvent:
        """The domain event a recorded event holds."""
        version = int(recorded.metadata.get("schema_version", "1"))
        return self.decode(recorded.type, recorded.data, version)

    def _upcast(self, cls: type[DomainEvent], body: dict[str, Any], version: int) -> dict[str, Any]:
        """Apply each upcaster from `version` up to the class's version."""
        if version > cls.version:
            raise EventCatalogError(f"{cls.type_name} v{version} is newer than this code (v{cls.version})")
        for step in range(version, cls.version):
            upcast = self._upcasters.get((cls.type_name, step))
            if upcast is None:
                raise EventCatalogError(f"no upcaster for {cls.type_name} v{step} → v{step + 1}")
            body = upcast(body)
        return body


REGISTRY = EventRegistry()
"""The catalog every service uses."""


def from_recorded(recorded: RecordedEvent, registry: EventRegistry = REGISTRY) -> DomainEvent:
    """The domain event a recorded event holds (upcast to the current version)."""
    return registry.from_recorded(recorded)


def format_datetime(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds and a `Z`; naive datetimes are refused (their zone is a guess)."""
    if moment.tzinfo is None:
        raise EventCatalogError("naive datetime: event timestamps must carry a time zone")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse(type_name: str, data: bytes) -> dict[str, Any]:
    """A body's JSON object (the standard library's parser where orjson would lose a long integer)."""
    try:
        body = json.loads(data) if _LONG_NUMBER in data.translate(_DIGITS_ONLY) else orjson.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:  # orjson's error is a JSONDecodeError
        raise EventCatalogError(f"{type_name} body is not JSON: {error}") from error
    if type(body) is not dict:
        raise EventCatalogError(f"{type_name} body is not a JSON object")
    return body


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    """An event class's fields in order, each with the converter its JSON value needs (None: none)."""

    names: tuple[str, ...]
    fields: tuple[tuple[str, Converter | None], ...]


_LAYOUTS: dict[type[DomainEvent], _Layout] = {}
"""Layouts by class, compiled on first use (hints resolve only once every annotation's name exists)."""


def _layout(cls: type[DomainEvent]) -> _Layout:
    """The class's layout, compiled once from its resolved type hints (classes never change)."""
    found = _LAYOUTS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        fields = tuple((f.name, _converter(hints[f.name])) for f in dataclasses.fields(cls))
        found = _LAYOUTS[cls] = _Layout(tuple(name for name, _ in fields), fields)
    return found


def _converter(hint: Any) -> Converter | None:
    """How a JSON value becomes a field of type `hint`: datetimes are parsed and tuples built (also inside
    `X | None`); everything else (strings, numbers, booleans, mappings, lists) is taken as it is."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _converter(inner[0]) if len(inner) == 1 else None
    if hint is datetime:
        return _to_datetime
    if origin is tuple:
        return _to_tuple
    return None


def _to_datetime(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def _to_tuple(value: Any) -> tuple[Any, ...] | None:
    return None if value is None else tuple(value)


def _encode(value: Any) -> Any:
    """A field value as JSON: datetimes as text, tuples as lists, mappings as objects."""
    if value.__class__ in _SCALARS:  # most values: no isinstance checks (the Mapping one is slow)
        return value
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, tuple | list):
        return [_encode(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _encode(item) for key, item in value.items()}
    return value
