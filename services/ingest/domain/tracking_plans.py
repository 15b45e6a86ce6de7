"""Tracking plans: versioned JSON Schemas per event, a common schema, and how each source enforces them.

Pure logic: plans are validated and compiled here (JSON Schema draft 2020-12, `jsonschema`), and a compiled plan
judges one message in memory. Descriptions of violations name fields and rules, never the values sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError

from cdp.errors import FieldViolation, InvalidInput
from services.ingest.domain.messages import Message
from services.ingest.domain.plans import PlanDecision, PlanViolation, Verdict, ViolationReason

PLAN_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MESSAGE_TYPES = ("identify", "track", "page", "screen", "group")
# Message types whose plan entry is named by the event (track) or page/screen name; the others have one entry.
_NAMED = ("track", "page", "screen")
_PAYLOAD = {"track": "properties", "page": "properties", "screen": "properties"}
_SEVERITY = {Verdict.ALLOW: 0, Verdict.FLAG: 1, Verdict.BLOCK: 2}
_TYPE_ERRORS = frozenset(("type",))
_MISSING = frozenset(("required", "dependentRequired"))
_UNPLANNED = frozenset(("additionalProperties", "unevaluatedProperties"))


@dataclass(frozen=True)
class PlannedEvent:
    """One entry of a plan: a message type, an event (or page/screen name, empty = any) and its schema."""

    message_type: str
    event: str
    json_schema: Mapping[str, Any]
    description: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """What a message is matched on."""
        return (self.message_type, self.event)


@dataclass(frozen=True)
class Enforcement:
    """How one source applies its plan."""

    source_id: str
    unplanned_events: Verdict = Verdict.ALLOW
    schema_violations: Verdict = Verdict.ALLOW
    omit_unplanned_properties: bool = False


@dataclass(frozen=True)
class TrackingPlan:
    """One version of a plan; version 0 means not yet published."""

    plan_id: str
    display_name: str = ""
    common_schema: Mapping[str, Any] | None = None
    events: tuple[PlannedEvent, ...] = ()
    sources: tuple[Enforcement, ...] = ()
    version: int = 0
    published_at: datetime | None = None
    published_by: str = ""

    def to_json(self) -> dict[str, Any]:
        """The plan's rules as stored in `TrackingPlanPublished.rules` (no version, time or actor)."""
        return {
            "display_name": self.display_name,
            "common_json_schema": dict(self.common_schema) if self.common_schema is not None else None,
            "events": [
                {
                    "message_type": e.message_type,
                    "event": e.event,
                    "json_schema": dict(e.json_schema),
                    "description": e.description,
                }
                for e in self.events
            ],
            "sources": [
                {
                    "source_id": s.source_id,
                    "unplanned_events": s.unplanned_events.value,
                    "schema_violations": s.schema_violations.value,
                    "omit_unplanned_properties": s.omit_unplanned_properties,
                }
                for s in self.sources
            ],
        }

    @classmethod
    def from_json(cls, plan_id: str, rules: Mapping[str, Any], **output: Any) -> TrackingPlan:
        """A plan back from its stored rules; `output` sets version, published_at, published_by."""
        common = rules.get("common_json_schema")
        return cls(
            plan_id=plan_id,
            display_name=rules.get("display_name", ""),
            common_schema=common,
            events=tuple(
                PlannedEvent(e["message_type"], e["event"], e["json_schema"], e.get("description", ""))
                for e in rules.get("events", ())
            ),
            sources=tuple(
                Enforcement(
                    s["source_id"],
                    Verdict(s["unplanned_events"]),
                    Verdict(s["schema_violations"]),
                    bool(s["omit_unplanned_properties"]),
                )
                for s in rules.get("sources", ())
            ),
            **output,
        )


def validate_plan(plan: TrackingPlan, sources_elsewhere: Mapping[str, str] | None = None) -> None:
    """Raise `InvalidInput` naming every bad field: ids, duplicates, and schemas that are not JSON Schema.

    `sources_elsewhere` maps source ids to the other plan that holds them (a source has at most one plan).
    """
    problems = list(_plan_problems(plan, sources_elsewhere or {}))
    if problems:
        raise InvalidInput(problems)


def _plan_problems(plan: TrackingPlan, sources_elsewhere: Mapping[str, str]) -> Iterator[FieldViolation]:
    if not PLAN_ID.match(plan.plan_id):
        yield FieldViolation("plan.plan_id", "is required: lower_snake_case, at most 64 characters")
    if plan.common_schema is not None:
        yield from _schema_problems(plan.common_schema, "plan.common_json_schema")
    seen_events: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(plan.events):
        path = f"plan.events[{index}]"
        if entry.message_type not in MESSAGE_TYPES:
            yield FieldViolation(f"{path}.message_type", f"must be one of {', '.join(MESSAGE_TYPES)}")
        elif entry.message_type == "track" and not entry.event:
            yield FieldViolation(f"{path}.event", "is required for a track entry")
        elif entry.message_type not in _NAMED and entry.event:
            yield FieldViolation(f"{path}.event", f"must be empty for {entry.message_type}")
        if entry.key in seen_events:
            yield FieldViolation(path, f"duplicates plan.events[{seen_events[entry.key]}] ({entry.event!r})")
        seen_events.setdefault(entry.key, index)
        yield from _schema_problems(entry.json_schema, f"{path}.json_schema")
    seen_sources: set[str] = set()
    for index, source in enumerate(plan.sources):
        path = f"plan.sources[{index}].source_id"
        if not source.source_id:
            yield FieldViolation(path, "is required")
        elif source.source_id in seen_sources:
            yield FieldViolation(path, "is listed twice")
        elif sources_elsewhere.get(source.source_id, plan.plan_id) != plan.plan_id:
            yield FieldViolation(path, f"already belongs to plan {sources_elsewhere[source.source_id]!r}")
        seen_sources.add(source.source_id)


def _schema_problems(schema: Mapping[str, Any], path: str) -> Iterator[FieldViolation]:
    """A schema that draft 2020-12's meta-schema refuses, named by the path inside it."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        inner = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        yield FieldViolation(f"{path}{inner}", f"is not a valid JSON Schema: {error.message}")


@dataclass(frozen=True)
class _CompiledEvent:
    """An entry's validator and the top-level properties it declares (for omitting the others)."""

    validator: Draft202012Validator
    declared: frozenset[str] | None  # None: the schema does not list its properties, so none is unplanned


@dataclass(frozen=True)
class CompiledPlan:
    """A plan version with every schema compiled once; judges messages in memory."""

    plan: TrackingPlan
    common: Draft202012Validator | None
    events: Mapping[tuple[str, str], _CompiledEvent]
    enforcement: Mapping[str, Enforcement] = field(default_factory=dict)

    @classmethod
    def compile(cls, plan: TrackingPlan) -> CompiledPlan:
        """Compile a validated plan (schemas are checked by `validate_plan` before publishing)."""
        common = Draft202012Validator(plan.common_schema) if plan.common_schema is not None else None
        events = {entry.key: _compile_event(entry.json_schema) for entry in plan.events}
        return cls(plan, common, events, {s.source_id: s for s in plan.sources})

    def check(self, source_id: str, message: Message) -> PlanDecision:
        """The decision for a message of one of the plan's sources."""
        rules = self.enforcement.get(source_id)
        if rules is None:
            return PlanDecision(Verdict.ALLOW, message)
        verdict, violations = Verdict.ALLOW, list[PlanViolation]()

        def record(mode: Verdict, found: Iterable[PlanViolation]) -> None:
            nonlocal verdict
            found = list(found)
            if found and mode is not Verdict.ALLOW:  # ALLOW: accept and record nothing
                violations.extend(found)
                verdict = max(verdict, mode, key=_SEVERITY.__getitem__)

        if self.common is not None:
            record(rules.schema_violations, _common_violations(self.common, message))
        if message.type == "alias":
            return PlanDecision(verdict, message, tuple(violations))
        entry = self._entry_for(message)
        if entry is None:
            unplanned = PlanViolation(ViolationReason.UNPLANNED_EVENT, "", "the event is not in the plan")
            record(rules.unplanned_events, [unplanned])
            return PlanDecision(verdict, message, tuple(violations))
        payload_name = _PAYLOAD.get(message.type, "traits")
        payload: dict[str, Any] = getattr(message, payload_name)
        if rules.omit_unplanned_properties and entry.declared is not None:
            extra = sorted(key for key in payload if key not in entry.declared)
            if extra:
                payload = {key: value for key, value in payload.items() if key in entry.declared}
                message = (
                    replace(message, traits=payload)
                    if payload_name == "traits"
                    else replace(message, properties=payload)
                )
                record(Verdict.FLAG, (_omitted(payload_name, key) for key in extra))
        record(rules.schema_violations, _schema_violations(entry.validator, payload, payload_name))
        return PlanDecision(verdict, message, tuple(violations))

    def _entry_for(self, message: Message) -> _CompiledEvent | None:
        """The entry of the message's event; page and screen fall back to the entry for any name."""
        name = message.event if message.type == "track" else message.name
        if message.type in _NAMED:
            return self.events.get((message.type, name or "")) or (
                self.events.get((message.type, "")) if message.type != "track" else None
            )
        return self.events.get((message.type, ""))


def _compile_event(schema: Mapping[str, Any]) -> _CompiledEvent:
    declared = schema.get("properties")
    has_patterns = bool(schema.get("patternProperties")) or schema.get("additionalProperties") not in (
        None,
        False,
    )
    names = frozenset(declared) if isinstance(declared, Mapping) and not has_patterns else None
    return _CompiledEvent(Draft202012Validator(schema), names)


def _omitted(payload_name: str, key: str) -> PlanViolation:
    return PlanViolation(
        ViolationReason.UNPLANNED_PROPERTY,
        f"{payload_name}.{key}",
        "is not declared by the event's schema; omitted",
    )


def _schema_violations(
    validator: Draft202012Validator, payload: Mapping[str, Any], payload_name: str
) -> Iterator[PlanViolation]:
    """Each schema error as a violation; `is_valid` first because almost every message passes."""
    if validator.is_valid(payload):
        return
    for error in validator.iter_errors(payload):
        yield from _violations_of(error, payload_name)


def _common_violations(validator: Draft202012Validator, message: Message) -> Iterator[PlanViolation]:
    document = message.to_json()
    if validator.is_valid(document):
        return
    for error in validator.iter_errors(document):
        where = _path(error.absolute_path)
        yield PlanViolation(
            ViolationReason.COMMON_SCHEMA, where, f"fails the common schema ({error.validator})"
        )


def _violations_of(error: ValidationError, payload_name: str) -> Iterator[PlanViolation]:
    """Map a jsonschema error to the contract's reasons; descriptions name the rule, never the value."""
    base = _path(error.absolute_path, payload_name)
    rule = str(error.validator)
    if rule in _MISSING:
        for name in _missing_names(error):
            yield PlanViolation(ViolationReason.MISSING_REQUIRED, f"{base}.{name}", "is required")
    elif rule in _UNPLANNED:
        for name in _unexpected_names(error):
            yield PlanViolation(
                ViolationReason.UNPLANNED_PROPERTY, f"{base}.{name}", "is not declared by the event's schema"
            )
    elif rule in _TYPE_ERRORS:
        yield PlanViolation(ViolationReason.INVALID_TYPE, base, f"must be of type {error.validator_value}")
    else:
        yield PlanViolation(ViolationReason.INVALID_VALUE, base, f"breaks the schema's {rule!r} rule")


def _missing_names(error: ValidationError) -> list[str]:
    """The required names absent from the instance (the schema's names, not the sent values)."""
    instance = error.instance if isinstance(error.instance, Mapping) else {}
    wanted = error.validator_value
    if isinstance(wanted, Mapping):  # dependentRequired: {present: [needed, ...]}
        wanted = [name for names in wanted.values() for name in names]
    names = [name for name in wanted if name not in instance] if isinstance(wanted, Sequence) else []
    return names or [""]


def _unexpected_names(error: ValidationError) -> list[str]:
    instance = error.instance if isinstance(error.instance, Mapping) else {}
    declared = error.schema.get("properties", {}) if isinstance(error.schema, Mapping) else {}
    names = [str(key) for key in instance if key not in declared]
    return sorted(names) or [""]


def _path(parts: Iterable[Any], prefix: str = "") -> str:
    text = prefix
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class PlanBook:
    """Every source's current plan, compiled, in memory: the collector's `PlanCheck`.

    `install` only moves forward (a version older than the one held is ignored), so the projection replaying
    history and the publisher installing its own write can both call it in any order.
    """

    def __init__(self) -> None:
        self._plans: dict[str, CompiledPlan] = {}
        self._by_source: dict[str, CompiledPlan] = {}

    def install(self, plan: TrackingPlan) -> bool:
        """Hold this version if it is newer than the one held; True if it was installed."""
        current = self._plans.get(plan.plan_id)
        if current is not None and current.plan.version >= plan.version:
            return False
        compiled = CompiledPlan.compile(plan)
        self._plans[plan.plan_id] = compiled
        # Rebuild the source index: a new version may have dropped sources or taken new ones.
        self._by_source = {s: p for p in self._plans.values() for s in p.enforcement}
        return True

    def plan_of(self, source_id: str) -> TrackingPlan | None:
        """The plan a source is under, if any."""
        compiled = self._by_source.get(source_id)
        return compiled.plan if compiled is not None else None

    def sources(self) -> dict[str, str]:
        """Source id → plan id, for the one-plan-per-source rule."""
        return {source: compiled.plan.plan_id for source, compiled in self._by_source.items()}

    def check(self, source_id: str, message: Message) -> PlanDecision:
        """The decision for one message; sources without a plan allow everything."""
        compiled = self._by_source.get(source_id)
        if compiled is None:
            return PlanDecision(Verdict.ALLOW, message)
        return compiled.check(source_id, message)
