"""Segments' use cases: define audiences and computed traits (append events), answer who is in them."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cdp.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from cdp.eventlog.port import (
    EventFilter,
    EventStore,
    ExpectedVersion,
    StreamAppend,
    WrongExpectedVersion,
    append_all,
)
from cdp.events import (
    AudienceArchived,
    AudienceDefined,
    ComputedTraitDefined,
    EventMetadata,
    MembershipChanged,
    streams,
)
from cdp.events.envelope import from_recorded
from cdp.reactor import Reactor
from services.segments import queries as q
from services.segments.domain import checks, codec
from services.segments.domain.conditions import Aggregate, Band, ComputedCond, Condition, walk
from services.segments.domain.errors import DefinitionError
from services.segments.domain.language import parse_aggregate, parse_condition, render, render_aggregate
from services.segments.domain.times import micros, moment
from services.segments.policy import Segmentation

log = structlog.get_logger("cdp.segments")

ID = re.compile(r"^[a-z][a-z0-9_]{0,79}$")
SETTLE_SECONDS = 30.0
"""How long a definition waits for the evaluator before answering with state COMPUTING."""


@dataclass(frozen=True)
class AudienceDraft:
    """What a caller defines: a condition tree or an expression (one of the two)."""

    audience_id: str
    display_name: str
    description: str
    condition: Condition | None = None
    expression: str = ""


@dataclass(frozen=True)
class TraitDraft:
    """A computed trait as a caller defines it: an aggregate or an expression."""

    trait_id: str
    display_name: str
    description: str
    aggregate: Aggregate | None = None
    expression: str = ""


class SegmentsApp:
    """The use cases behind the gRPC edge."""

    def __init__(self, store: EventStore, reactor: Reactor, policy: Segmentation, engine: Engine) -> None:
        self.store, self.reactor, self.policy, self.engine = store, reactor, policy, engine
        self.queries = q.Queries(engine)

    # -- audiences ---------------------------------------------------------------------------------

    def parse(self, audience_id: str, condition: Condition | None, expression: str) -> tuple[Condition, str]:
        """The checked tree of a definition (bands resolved) and its text."""
        if condition is None:
            if not expression.strip():
                raise InvalidInput.field("audience.condition", "is required (or audience.expression)")
            condition = _defined(lambda: parse_condition(expression))
        condition = _defined(lambda: checks.resolve_bands(condition, self._bands))
        if any(isinstance(node, ComputedCond) and node.cond.path for node in walk(condition)):
            # The contract's ComputedTraitCondition has no path yet, so such an audience could not be returned.
            raise InvalidInput.field(
                "audience.condition", "a path into a computed trait's value is not supported yet"
            )
        _defined(lambda: checks.check_depth(condition))
        definitions = self.policy.definitions
        _defined(
            lambda: checks.check_references(
                audience_id, condition, definitions.condition, lambda trait: trait in definitions.traits
            )
        )
        return condition, expression.strip() or render(condition)

    async def create_audience(
        self, draft: AudienceDraft, validate_only: bool, actor: str
    ) -> q.AudienceRecord:
        """Define a new audience; its members are computed from the whole population."""
        audience_id = draft.audience_id or f"audience_{uuid.uuid4().hex[:12]}"
        _check_id(audience_id, "audience.audience_id")
        _check_name(draft.display_name, "audience.display_name")
        condition, text = self.parse(audience_id, draft.condition, draft.expression)
        if validate_only:
            return _draft_record(audience_id, draft, condition, text, actor)
        if self.queries.audience(audience_id) is not None:
            raise AlreadyExists(f"audience {audience_id} exists")
        event = AudienceDefined(
            audience_id=audience_id,
            name=draft.display_name,
            definition=codec.condition_to_json(condition),
            description=draft.description,
            expression=text,
            defined_at=moment(_now()),
        )
        at = await self._append(
            streams.audience_stream(audience_id), event, ExpectedVersion.NO_STREAM, actor, create=True
        )
        return await self._settled(
            audience_id, at, lambda: _draft_record(audience_id, draft, condition, text, actor)
        )

    async def update_audience(
        self, draft: AudienceDraft, fields: set[str], expected_version: int | None, actor: str
    ) -> q.AudienceRecord:
        """Change an audience's name, description or condition (`fields`); members are recomputed."""
        current = self._audience(draft.audience_id)
        if current.state == "archived":
            raise Conflict(f"audience {draft.audience_id} is archived")
        if expected_version is not None and expected_version != current.version:
            raise Conflict(
                f"audience {draft.audience_id} is at version {current.version}, not {expected_version}"
            )
        name = draft.display_name if "display_name" in fields else current.display_name
        _check_name(name, "audience.display_name")
        description = draft.description if "description" in fields else current.description
        if "condition" in fields:
            condition, text = self.parse(draft.audience_id, draft.condition, draft.expression)
        else:
            condition, text = codec.condition_from_json(current.definition), current.expression
        event = AudienceDefined(
            audience_id=draft.audience_id,
            name=name,
            definition=codec.condition_to_json(condition),
            description=description,
            expression=text,
            defined_at=moment(_now()),
        )
        at = await self._append(streams.audience_stream(draft.audience_id), event, current.version - 1, actor)
        return await self._settled(draft.audience_id, at, lambda: current, version=current.version + 1)

    async def archive_audience(self, audience_id: str, reason: str, actor: str) -> q.AudienceRecord:
        """Stop computing an audience: its members exit."""
        current = self._audience(audience_id)
        if current.state == "archived":
            return current
        event = AudienceArchived(audience_id=audience_id, reason=reason, archived_at=moment(_now()))
        at = await self._append(streams.audience_stream(audience_id), event, current.version - 1, actor)
        return await self._settled(audience_id, at, lambda: current, version=current.version + 1)

    def get_audience(self, audience_id: str) -> q.AudienceRecord:
        """One audience."""
        return self._audience(audience_id)

    def preview(
        self, condition: Condition | None, expression: str, sample: int
    ) -> tuple[int, list[str], int]:
        """Size and a sample of a condition over the whole population now, without saving it."""
        tree, _ = self.parse("", condition, expression)
        now = _now()
        size, ids = self.queries.preview(tree, now, self.policy.definitions.condition, sample)
        return size, ids, now

    def members(self, audience_id: str, as_of: int | None, chunk: int) -> Iterator[list[q.Member]]:
        """An audience's members now or at a past instant, in chunks by profile id."""
        self._audience(audience_id)
        if as_of is None:
            return self.queries.members(audience_id, chunk)
        return self.queries.members_as_of(audience_id, as_of, chunk)

    def check(self, profile_id: str, audience_ids: Sequence[str]) -> list[q.Membership]:
        """Which of these audiences (all active ones when empty) the profile belongs to."""
        wanted = list(audience_ids)
        if not wanted:
            wanted = sorted(a for a, found in self.policy.definitions.audiences.items() if found.active)
        else:
            for audience_id in wanted:
                self._audience(audience_id)
        rows = self.queries.memberships(profile_id, wanted)
        return [rows.get(a) or q.Membership(a, False, None) for a in wanted]

    async def watch(
        self, audience_ids: Sequence[str], after: int | None
    ) -> AsyncIterator[tuple[int, q.Change]]:
        """Membership changes after a global position (None: from now on), straight from the log.

        The `MembershipChanged` events carry everything a watcher is told, so the stream follows the log's
        membership streams and never waits for the evaluator to read its own events back (one pass of the
        reactor fewer between an event and the client that reacts to it).
        """
        for audience_id in audience_ids:
            self._audience(audience_id)
        wanted = set(audience_ids)
        position = after if after is not None else await self.store.head_position()
        changes = EventFilter(categories=(streams.MEMBERSHIP,), event_types=("MembershipChanged",))
        subscription = self.store.subscribe(position, filter=changes)
        try:
            async for recorded in subscription:
                event = from_recorded(recorded)
                if not isinstance(event, MembershipChanged) or (wanted and event.audience_id not in wanted):
                    continue
                yield (
                    recorded.global_position,
                    q.Change(
                        audience_id=event.audience_id,
                        profile_id=event.profile_id,
                        entered=event.entered,
                        time=micros(event.computed_at),
                        reason=event.reason,
                        changed=event.changed,
                    ),
                )
        finally:
            await subscription.aclose()  # type: ignore[attr-defined]

    def stats(self, audience_id: str, start: int | None, end: int | None, interval: int | None) -> Any:
        """Size now, entries and exits in the range, and the size after each interval."""
        audience = self._audience(audience_id)
        end = end if end is not None else _now()
        start = start if start is not None else end - 30 * 86_400_000_000
        if end < start:
            raise InvalidInput.field("time_range", "end is before start")
        interval = interval or 86_400_000_000
        if interval <= 0:
            raise InvalidInput.field("interval", "must be positive")
        if (end - start) // interval > 1000:
            raise InvalidInput.field("interval", "makes more than 1,000 points over the range")
        entered, exited, points = self.queries.stats(audience_id, start, end, interval)
        return audience.size, entered, exited, points

    # -- computed traits ---------------------------------------------------------------------------

    async def define_trait(
        self, draft: TraitDraft, expected_version: int | None, actor: str
    ) -> tuple[q.TraitRecord, bool]:
        """Create or replace a computed trait; its values are recomputed from history."""
        _check_id(draft.trait_id, "computed_trait.computed_trait_id")
        aggregate = draft.aggregate
        if aggregate is None:
            if not draft.expression.strip():
                raise InvalidInput.field(
                    "computed_trait.aggregation", "is required (or computed_trait.expression)"
                )
            aggregate = _defined(lambda: parse_aggregate(draft.expression))
        text = draft.expression.strip() or render_aggregate(aggregate)
        current = self.queries.trait(draft.trait_id)
        version = current.version if current is not None else 0
        if expected_version is not None and expected_version != version:
            raise Conflict(f"computed trait {draft.trait_id} is at version {version}, not {expected_version}")
        event = ComputedTraitDefined(
            trait_id=draft.trait_id,
            name=draft.display_name,
            definition=codec.aggregate_to_json(aggregate),
            description=draft.description,
            expression=text,
            defined_at=moment(_now()),
        )
        expected: ExpectedVersion | int = ExpectedVersion.NO_STREAM if current is None else version - 1
        at = await self._append(streams.trait_stream(draft.trait_id), event, expected, actor)
        await self._settle_trait(draft.trait_id, at, version + 1)
        stored = self.queries.trait(draft.trait_id)
        if stored is None:
            stored = q.TraitRecord(
                draft.trait_id,
                draft.display_name,
                draft.description,
                text,
                dict(event.definition),
                version + 1,
                _now(),
            )
        return stored, current is None

    def traits(self, after: str, size: int) -> list[q.TraitRecord]:
        """A page of computed traits."""
        return self.queries.traits(after, size)

    def audiences(self, after: str, size: int, include_archived: bool) -> list[q.AudienceRecord]:
        """A page of audiences."""
        return self.queries.audiences(after, size, include_archived)

    # -- time passing ------------------------------------------------------------------------------

    async def tick(self) -> int:
        """Evaluate every profile whose window boundary has passed (between events); the changes made."""
        async with self.reactor.exclusive():
            loop = asyncio.get_running_loop()
            return await asyncio.to_thread(self._tick, loop, _now())

    def _tick(self, loop: asyncio.AbstractEventLoop, now: int) -> int:
        with Session(self.engine.execution_options(sqlite_immediate=True)) as session, session.begin():
            appends = self.policy.tick(session, now)
            if appends:
                asyncio.run_coroutine_threadsafe(append_all(self.store, appends), loop).result()
        return len(appends)

    async def run_clock(self, every: float = 5.0) -> None:
        """Tick forever: no membership is more than `every` seconds (plus a batch) behind the clock."""
        while True:
            await asyncio.sleep(every)
            try:
                changed = await self.tick()
            except Exception as error:  # an outage: the next tick tries again
                log.warning("segments_tick_failed", error=str(error))
                continue
            if changed:
                log.info("segments_window_changes", changes=changed)

    # -- helpers -----------------------------------------------------------------------------------

    def _audience(self, audience_id: str) -> q.AudienceRecord:
        found = self.queries.audience(audience_id)
        if found is None:
            raise NotFound(f"audience {audience_id} does not exist")
        return found

    def _bands(self, attribute: str) -> list[Band]:
        return [
            Band(attribute, str(b.get("label", "")), b.get("lower_bound"), b.get("upper_bound"))
            for b in self.queries.bands(attribute)
        ]

    async def _append(
        self, stream: str, event: Any, expected: ExpectedVersion | int, actor: str, *, create: bool = False
    ) -> int:
        new = event.to_new_event(EventMetadata(actor=actor))
        try:
            results = await append_all(self.store, [StreamAppend(stream, [new], expected)])
        except WrongExpectedVersion:
            if create:
                raise AlreadyExists(f"{stream} exists") from None
            raise Conflict(f"{stream} changed meanwhile; read it again") from None
        return results[0].global_position

    async def _settled(
        self, audience_id: str, position: int, fallback: Any, version: int | None = None
    ) -> q.AudienceRecord:
        """The audience once the evaluator applied the definition (members computed), or COMPUTING."""
        with contextlib.suppress(TimeoutError):  # the evaluator is behind: answer with state COMPUTING
            await self.reactor.wait_for(position, within=SETTLE_SECONDS)
        found = self.queries.audience(audience_id)
        if found is not None and (version is None or found.version >= version):
            return found
        record: q.AudienceRecord = fallback()
        return q.AudienceRecord(**{**record.__dict__, "state": "computing"})

    async def _settle_trait(self, trait_id: str, position: int, version: int) -> None:
        try:
            await self.reactor.wait_for(position, within=SETTLE_SECONDS)
        except TimeoutError:
            log.warning("segments_trait_still_computing", trait_id=trait_id, version=version)


def _now() -> int:
    return time.time_ns() // 1000


def _defined(make: Any) -> Any:
    """Run a definition step; its DefinitionError becomes InvalidInput naming the field."""
    try:
        return make()
    except DefinitionError as error:
        raise InvalidInput.field(
            f"audience.{error.field}" if "." not in error.field else error.field, str(error)
        ) from None


def _check_id(value: str, path: str) -> None:
    if not ID.match(value):
        raise InvalidInput.field(
            path, "must be lower_snake_case: a letter, then letters, digits or _ (at most 80)"
        )


def _check_name(value: str, path: str) -> None:
    if not value.strip():
        raise InvalidInput.field(path, "is required")
    if len(value) > 200:
        raise InvalidInput.field(path, "is longer than 200 characters")


def _draft_record(
    audience_id: str, draft: AudienceDraft, condition: Condition, text: str, actor: str
) -> q.AudienceRecord:
    now = _now()
    return q.AudienceRecord(
        audience_id=audience_id,
        display_name=draft.display_name,
        description=draft.description,
        expression=text,
        definition=codec.condition_to_json(condition),
        state="computing",
        version=1,
        size=0,
        create_time=now,
        update_time=now,
        created_by=actor,
    )
