"""Segments' reactor policy: follow messages and the profile stream, keep computed traits and memberships current.

Per batch, in log order: decrypted messages are stored (unattributed until the profile stream names their
profile); the profile stream, merges, splits, links and erasures move them between profiles; consent and
definitions are recorded. Then every profile the batch touched, and every profile whose next window boundary
has passed (`due_at`), is evaluated in Python (`domain.evaluate`) against every computed trait and active
audience; a new or changed definition is evaluated over the whole population in SQL (`sqlcompile`). Each
membership change is a `MembershipChanged` event, numbered per (audience, profile) so a re-run after a crash
appends nothing twice.

Evaluation time is the batch's latest `recorded_at`, not the wall clock, so deciding the same batch again gives
the same events. Time passing without events is `Clock`'s business (`tick`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Engine, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from cdp.eventlog.port import EventFilter, RecordedEvent, StreamAppend
from cdp.events import (
    AttributeDefined,
    AudienceArchived,
    AudienceDefined,
    ComputedTraitDefined,
    ConsentChanged,
    EventMetadata,
    IdentifierLinked,
    MembershipChanged,
    MessageCollected,
    MessagesAttributed,
    ProfilesMerged,
    ProfileSplit,
    SubjectErased,
    from_recorded,
    streams,
)
from cdp.events.envelope import UnknownEventType
from cdp.events.ingest import PAYLOAD_CONTEXT
from cdp.keyring import DecryptionFailed, Keyring, decrypt_value_with
from cdp.keyring import SubjectErased as KeyErased
from cdp.reactor import Policy, derived_id
from cdp.reactor.purge import Purges
from cdp.sqlengine import chunks, read_only, rows_deleted
from services.segments import facts as f
from services.segments import sqlcompile
from services.segments import tables as t
from services.segments.domain.codec import aggregate_from_json, condition_from_json
from services.segments.domain.conditions import (
    Aggregate,
    And,
    Condition,
    EventNeeds,
    ValueCond,
    audiences_named,
    computed_traits_named,
    event_needs,
    needs_of_aggregate,
)
from services.segments.domain.evaluate import ProfileFacts, compute, evaluate, next_change, timed_parts
from services.segments.domain.language import render
from services.segments.domain.times import micros, moment
from services.segments.domain.values import Doc, flatten
from services.segments.loading import leaf_rows

log = structlog.get_logger("cdp.segments.policy")

ACTOR = "service:segments"
FOLLOWED = (
    "MessageCollected",
    "MessagesAttributed",
    "ProfilesMerged",
    "ProfileSplit",
    "IdentifierLinked",
    "SubjectErased",
    "ConsentChanged",
    "AttributeDefined",
    "AudienceDefined",
    "AudienceArchived",
    "ComputedTraitDefined",
    "MembershipChanged",
)
CARRIED = ("track", "page", "screen", "identify", "group")


@dataclass(frozen=True)
class AudienceDef:
    """An audience as the evaluator uses it."""

    audience_id: str
    condition: Condition
    version: int
    active: bool
    parts: tuple[Condition, ...]
    """The top-level conditions whose truth each change reports."""
    texts: tuple[str, ...]


@dataclass
class Definitions:
    """The definitions in force, in memory (a few hundred at most), reloaded with the policy."""

    audiences: dict[str, AudienceDef] = field(default_factory=dict)
    traits: dict[str, Aggregate] = field(default_factory=dict)

    def condition(self, audience_id: str) -> Condition | None:
        """What `audience(...)` refers to: an active audience's condition."""
        found = self.audiences.get(audience_id)
        return found.condition if found is not None and found.active else None

    def event_needs(self) -> EventNeeds:
        """What the active audiences and every computed trait read of a profile's messages."""
        found = EventNeeds()
        for aggregate in self.traits.values():
            found = found | needs_of_aggregate(aggregate)
        for audience in self.audiences.values():
            if audience.active:
                found = found | event_needs(audience.condition)
        return found

    def timed(self) -> tuple[list[Aggregate], list[ValueCond]]:
        """Everything time alone can change: sliding-window aggregates and WITHIN_LAST trait conditions."""
        aggregates = [a for a in self.traits.values() if a.window.sliding]
        conds: list[ValueCond] = []
        for audience in self.audiences.values():
            if audience.active:
                more, timed_conds = timed_parts(audience.condition)
                aggregates.extend(more)
                conds.extend(timed_conds)
        return aggregates, conds


def audience_def(audience_id: str, condition: Condition, version: int, active: bool) -> AudienceDef:
    """An audience with its top-level parts (an `and` reports which of its parts changed)."""
    parts = condition.parts if isinstance(condition, And) else (condition,)
    return AudienceDef(audience_id, condition, version, active, parts, tuple(render(p) for p in parts))


@dataclass
class _Batch:
    """What one batch changed, gathered while its events are applied in order."""

    now: int
    touched: dict[str, str] = field(default_factory=dict)
    """Profile → why it must be evaluated (the first reason wins)."""
    traits_dirty: set[str] = field(default_factory=set)
    consent_dirty: set[str] = field(default_factory=set)
    redefined: dict[str, str] = field(default_factory=dict)
    """Audience → `definition` or `archived`: evaluated over the whole population after the profiles."""
    retraited: set[str] = field(default_factory=set)
    appends: list[StreamAppend] = field(default_factory=list)
    cause: RecordedEvent | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    leaves: list[dict[str, Any]] = field(default_factory=list)
    """Message rows (and their property leaves) not inserted yet: a run of messages is one executemany."""
    links: list[IdentifierLinked] = field(default_factory=list)
    """Links not applied yet: a run of them (a burst of new people) is applied with a few statements."""

    def touch(self, profile_id: str, reason: str) -> None:
        if profile_id:
            self.touched.setdefault(profile_id, reason)


_MISSING = object()
"""A message `prepare` did not open (decide opens it itself)."""
_UNREAD = object()
"""A membership row the caller has not read."""


class Segmentation(Policy):
    """The segments evaluator: computed traits and memberships from the log."""

    name = "segments-evaluator"
    filter = EventFilter(event_types=FOLLOWED)
    metadata = t.metadata

    def __init__(self, keyring: Keyring, engine: Engine, purges: Purges | None = None) -> None:
        self.keyring, self.engine = keyring, engine
        self.purges = purges
        """Erasures purged in a batch, confirmed (`ReadModelPurged`) once it committed."""
        self.definitions = Definitions()

    async def load(self, position: int) -> None:
        """Read the definitions in force from the read model; confirm purges a crash left unconfirmed."""
        self.definitions = await asyncio.to_thread(self._read_definitions)
        await self.committed()

    async def committed(self) -> None:
        """After a committed batch: scrub the files and confirm the purges it recorded (cheap when none)."""
        if self.purges is not None:
            await self.purges.confirm()

    def _read_definitions(self) -> Definitions:
        found = Definitions()
        with read_only(self.engine).connect() as connection:
            for row in connection.execute(select(t.audiences)):
                condition = condition_from_json(row.definition)
                found.audiences[row.audience_id] = audience_def(
                    row.audience_id, condition, row.version, row.state != "archived"
                )
            for row in connection.execute(select(t.traits)):
                found.traits[row.trait_id] = aggregate_from_json(row.definition)
        return found

    def reset(self) -> None:
        """A batch failed: its definitions never happened."""
        self.definitions = Definitions()

    async def prepare(self, events: Sequence[RecordedEvent], *, backlog: bool) -> dict[str, Any]:
        """Decrypt the messages' payloads (event id → payload, or None when the subject's keys are gone)."""
        messages: list[MessageCollected] = []
        ids: list[str] = []
        for recorded in events:
            if recorded.type == "MessageCollected":
                try:
                    event = from_recorded(recorded)
                except Exception:  # decide meets the same body and parks it
                    continue
                if isinstance(event, MessageCollected):
                    messages.append(event)
                    ids.append(str(recorded.id))
        if not messages:
            return {}
        keys = await self.keyring.prefetch({m.subject_id for m in messages})
        opened: dict[str, Any] = {}
        for event_id, message in zip(ids, messages, strict=True):
            subject_keys = keys.get(message.subject_id)
            payload = None
            if subject_keys is not None and not subject_keys.erased:
                try:
                    payload = decrypt_value_with(subject_keys, message.payload, context=PAYLOAD_CONTEXT)
                except (KeyErased, DecryptionFailed):
                    payload = None
            opened[event_id] = payload
        return opened

    def decide(
        self, session: Session, events: Sequence[RecordedEvent], prepared: Any
    ) -> Sequence[StreamAppend]:
        """Apply the batch in order, then evaluate what it touched."""
        batch = _Batch(now=max(micros(e.recorded_at) for e in events))
        opened: Mapping[str, Any] = prepared or {}
        for recorded in events:
            batch.cause = recorded
            try:
                event = from_recorded(recorded)
            except UnknownEventType:
                continue
            if not isinstance(event, MessageCollected):
                self._insert_messages(session, batch)  # what follows may update the messages' rows
            if not isinstance(event, IdentifierLinked):
                self._link(session, batch)  # what follows may read the subjects
            self._apply(session, batch, recorded, event, opened)
        self._insert_messages(session, batch)
        self._link(session, batch)
        self._evaluate_due(session, batch)
        self._settle(session, batch)
        return batch.appends

    def tick(self, session: Session, now: int) -> list[StreamAppend]:
        """Time passed without events: evaluate every profile whose window boundary is behind `now`."""
        batch = _Batch(now=now)
        self._evaluate_due(session, batch)
        self._settle(session, batch)
        return batch.appends

    # -- applying events ------------------------------------------------------------------------------

    def _apply(
        self, session: Session, batch: _Batch, recorded: RecordedEvent, event: Any, opened: Mapping[str, Any]
    ) -> None:
        if isinstance(event, MessageCollected):
            self._store_message(batch, recorded, event, opened.get(str(recorded.id), _MISSING))
        elif isinstance(event, MessagesAttributed):
            self._attribute(session, batch, event)
        elif isinstance(event, ProfilesMerged):
            self._merge(session, batch, event)
        elif isinstance(event, ProfileSplit):
            self._move_subjects(session, batch, event.subject_ids, event.new_profile_id, "split")
            batch.touch(event.profile_id, "split")
            batch.traits_dirty.add(event.profile_id)
            batch.consent_dirty.add(event.profile_id)
        elif isinstance(event, IdentifierLinked):
            batch.links.append(event)
        elif isinstance(event, SubjectErased):
            deleted = self._erase(session, batch, event)
            if self.purges is not None:
                self.purges.record(session, recorded, event, deleted)
        elif isinstance(event, ConsentChanged):
            self._consent(session, batch, recorded, event)
        elif isinstance(event, AttributeDefined):
            self._bands(session, event)
        elif isinstance(event, AudienceDefined):
            self._define_audience(session, batch, recorded, event)
        elif isinstance(event, AudienceArchived):
            self._archive(session, batch, event)
        elif isinstance(event, ComputedTraitDefined):
            self._define_trait(session, batch, event)
        elif isinstance(event, MembershipChanged):
            session.execute(
                insert(t.changes).values(
                    position=recorded.global_position,
                    audience_id=event.audience_id,
                    profile_id=event.profile_id,
                    entered=event.entered,
                    time=micros(event.computed_at),
                    reason=event.reason,
                    changed=list(event.changed),
                )
            )

    def _store_message(
        self, batch: _Batch, recorded: RecordedEvent, event: MessageCollected, payload: Any
    ) -> None:
        if payload is _MISSING:  # not prepared (a batch split in halves re-decides without prepare)
            try:
                payload = event.open_payload(self.keyring)
            except (KeyErased, DecryptionFailed):
                payload = None
        if payload is None or event.message_type not in CARRIED:
            return  # shredded: nothing of this person may reach the read model
        opened = payload if isinstance(payload, Mapping) else {}
        properties = opened.get("properties")
        if not isinstance(properties, Mapping):
            properties = {}
        # Only an identify's traits are the person's (a group's describe the group).
        traits = opened.get("traits") if event.message_type == "identify" else None
        batch.messages.append(
            {
                "position": recorded.global_position,
                "event_id": str(recorded.id),
                "subject_id": event.subject_id,
                "profile_id": None,
                "message_type": event.message_type,
                "name": event.event_name,
                "time": micros(event.timestamp),
                "properties": dict(properties),
                "traits": dict(traits) if isinstance(traits, Mapping) else None,
            }
        )
        batch.leaves.extend(leaf_rows(flatten(dict(properties)), position=recorded.global_position))

    @staticmethod
    def _insert_messages(session: Session, batch: _Batch) -> None:
        if batch.messages:
            session.execute(insert(t.events), batch.messages)
            batch.messages = []
        if batch.leaves:
            session.execute(insert(t.event_leaves), batch.leaves)
            batch.leaves = []

    def _attribute(self, session: Session, batch: _Batch, event: MessagesAttributed) -> None:
        entries = event.entries()
        if entries:
            session.execute(
                update(t.events)
                .where(t.events.c.event_id == bindparam("b_event"))
                .values(profile_id=bindparam("b_profile"), subject_id=bindparam("b_subject")),
                [
                    {"b_event": e.event_id, "b_profile": e.profile_id, "b_subject": e.subject_id}
                    for e in entries
                ],
            )
        known = self._subject_profiles(session, {e.subject_id for e in entries})
        for entry in entries:
            if entry.profile_id and known.get(entry.subject_id) != entry.profile_id:
                self._put_subject(
                    session, entry.subject_id, entry.profile_id, None, exists=entry.subject_id in known
                )
                known[entry.subject_id] = entry.profile_id
            batch.touch(entry.profile_id, "event")
        identifies = session.execute(
            select(t.events.c.profile_id)
            .where(t.events.c.event_id.in_([e.event_id for e in entries if e.profile_id]))
            .where(t.events.c.message_type == "identify")
        ).scalars()
        batch.traits_dirty.update(p for p in identifies if p)
        # Messages identity looked at but could not attribute are never going to be: drop them.
        gone = (
            (t.events.c.profile_id.is_(None))
            & (t.events.c.position > event.after_position)
            & (t.events.c.position <= event.through_position)
        )
        positions = list(session.execute(select(t.events.c.position).where(gone)).scalars())
        for part in chunks(positions):
            session.execute(delete(t.event_leaves).where(t.event_leaves.c.position.in_(part)))
        session.execute(delete(t.events).where(gone))

    def _merge(self, session: Session, batch: _Batch, event: ProfilesMerged) -> None:
        survivor, merged = event.profile_id, event.merged_profile_id
        session.execute(update(t.events).where(t.events.c.profile_id == merged).values(profile_id=survivor))
        session.execute(
            update(t.subjects).where(t.subjects.c.profile_id == merged).values(profile_id=survivor)
        )
        for audience_id in self._memberships_of(session, merged):
            self._change(session, batch, audience_id, merged, False, "merge", ())
        session.execute(
            delete(t.memberships).where(t.memberships.c.profile_id == merged, t.memberships.c.changes == 0)
        )
        f.purge_profile(session, merged)
        batch.touched.pop(merged, None)
        batch.traits_dirty.discard(merged)
        batch.consent_dirty.discard(merged)
        batch.touch(survivor, "merge")
        batch.traits_dirty.add(survivor)
        batch.consent_dirty.add(survivor)

    def _move_subjects(
        self, session: Session, batch: _Batch, subject_ids: Sequence[str], profile_id: str, reason: str
    ) -> None:
        moved = list(subject_ids)
        before = set(self._subject_profiles(session, set(moved)).values())
        for part in chunks(moved):
            session.execute(
                update(t.events).where(t.events.c.subject_id.in_(part)).values(profile_id=profile_id)
            )
            session.execute(
                update(t.subjects).where(t.subjects.c.subject_id.in_(part)).values(profile_id=profile_id)
            )
        for profile in (*before, profile_id):
            batch.touch(profile, reason)
            batch.traits_dirty.add(profile)
            batch.consent_dirty.add(profile)

    def _link(self, session: Session, batch: _Batch) -> None:
        """Apply the pending links in order: each subject's profile (and identifier type), its messages moved
        when the profile changed, both profiles evaluated. One query and three executemanys for the run."""
        links, batch.links = batch.links, []
        if not links:
            return
        known = self._subject_profiles(session, {link.subject_id for link in links})
        stored = set(known)
        new: dict[str, dict[str, Any]] = {}
        changed: list[dict[str, Any]] = []
        moved: list[dict[str, Any]] = []
        for link in links:
            previous = known.get(link.subject_id)
            if link.subject_id in stored:
                changed.append(
                    {
                        "b_subject": link.subject_id,
                        "b_profile": link.profile_id,
                        "b_type": link.identifier_type or None,
                    }
                )
            else:
                row = new.setdefault(link.subject_id, {"subject_id": link.subject_id})
                row["profile_id"] = link.profile_id
                row["identifier_type"] = link.identifier_type or row.get("identifier_type")
            known[link.subject_id] = link.profile_id
            if previous != link.profile_id:
                moved.append({"b_subject": link.subject_id, "b_profile": link.profile_id})
                for profile in (previous, link.profile_id):
                    if profile:
                        batch.touch(profile, "event")
                        batch.traits_dirty.add(profile)
                        batch.consent_dirty.add(profile)
            else:
                batch.touch(link.profile_id, "event")
        if new:
            session.execute(insert(t.subjects), list(new.values()))
        if changed:
            session.execute(
                update(t.subjects)
                .where(t.subjects.c.subject_id == bindparam("b_subject"))
                .values(
                    profile_id=bindparam("b_profile"),
                    identifier_type=func.coalesce(bindparam("b_type"), t.subjects.c.identifier_type),
                ),
                changed,
            )
        if moved:
            session.execute(
                update(t.events)
                .where(t.events.c.subject_id == bindparam("b_subject"), t.events.c.profile_id.is_not(None))
                .values(profile_id=bindparam("b_profile")),
                moved,
            )

    def _erase(self, session: Session, batch: _Batch, event: SubjectErased) -> int:
        """Forget the person: the subject, every subject of its profile, and every row keyed by one of the
        person's profiles (the profile stream's, and those governance names); how many rows went."""
        profile_id = self._subject_profiles(session, {event.subject_id}).get(event.subject_id)
        profile_ids = sorted({*event.profile_ids, *([profile_id] if profile_id else [])})
        subjects = {event.subject_id}
        for part in chunks(profile_ids):
            subjects.update(
                session.execute(
                    select(t.subjects.c.subject_id).where(t.subjects.c.profile_id.in_(part))
                ).scalars()
            )
        deleted = 0

        def run(statement: Any) -> None:
            nonlocal deleted
            deleted += rows_deleted(session.execute(statement))

        for part in chunks(sorted(subjects)):
            positions = list(
                session.execute(select(t.events.c.position).where(t.events.c.subject_id.in_(part))).scalars()
            )
            for chunk in chunks(positions):
                run(delete(t.event_leaves).where(t.event_leaves.c.position.in_(chunk)))
            run(delete(t.events).where(t.events.c.subject_id.in_(part)))
            run(delete(t.consent).where(t.consent.c.subject_id.in_(part)))
            run(delete(t.subjects).where(t.subjects.c.subject_id.in_(part)))
        for part in chunks(profile_ids):
            positions = list(
                session.execute(select(t.events.c.position).where(t.events.c.profile_id.in_(part))).scalars()
            )
            for chunk in chunks(positions):
                run(delete(t.event_leaves).where(t.event_leaves.c.position.in_(chunk)))
            run(delete(t.events).where(t.events.c.profile_id.in_(part)))
            run(delete(t.memberships).where(t.memberships.c.profile_id.in_(part)))
            run(delete(t.changes).where(t.changes.c.profile_id.in_(part)))
        for one in profile_ids:
            deleted += f.purge_profile(session, one)
            batch.touched.pop(one, None)
            batch.traits_dirty.discard(one)
            batch.consent_dirty.discard(one)
        if profile_ids:
            self._refresh_sizes(session)
        return deleted

    def _consent(
        self, session: Session, batch: _Batch, recorded: RecordedEvent, event: ConsentChanged
    ) -> None:
        for purpose, granted in event.purposes.items():
            session.execute(
                delete(t.consent).where(
                    t.consent.c.subject_id == event.subject_id, t.consent.c.purpose == purpose
                )
            )
            session.execute(
                insert(t.consent).values(
                    subject_id=event.subject_id,
                    purpose=purpose,
                    granted=bool(granted),
                    position=recorded.global_position,
                )
            )
        profile_id = self._subject_profiles(session, {event.subject_id}).get(event.subject_id)
        if profile_id:
            batch.touch(profile_id, "consent")
            batch.consent_dirty.add(profile_id)

    def _bands(self, session: Session, event: AttributeDefined) -> None:
        session.execute(delete(t.bands).where(t.bands.c.attribute == event.name))
        if event.bands:
            session.execute(insert(t.bands).values(attribute=event.name, bands=list(event.bands)))

    def _define_audience(
        self, session: Session, batch: _Batch, recorded: RecordedEvent, event: AudienceDefined
    ) -> None:
        condition = condition_from_json(event.definition)
        at = micros(event.defined_at or recorded.recorded_at)
        row = session.execute(
            select(t.audiences).where(t.audiences.c.audience_id == event.audience_id)
        ).first()
        values = {
            "display_name": event.name,
            "description": event.description,
            "expression": event.expression or render(condition),
            "definition": dict(event.definition),
            "state": "active",
            "update_time": at,
        }
        if row is None:
            session.execute(
                insert(t.audiences).values(
                    audience_id=event.audience_id,
                    version=1,
                    size=0,
                    create_time=at,
                    created_by=EventMetadata.of(recorded).actor,
                    **values,
                )
            )
            version = 1
        else:
            version = row.version + 1
            session.execute(
                update(t.audiences)
                .where(t.audiences.c.audience_id == event.audience_id)
                .values(version=version, **values)
            )
        self.definitions.audiences[event.audience_id] = audience_def(
            event.audience_id, condition, version, True
        )
        batch.redefined[event.audience_id] = "definition"
        for other in self._dependents(event.audience_id):
            batch.redefined.setdefault(other, "definition")

    def _archive(self, session: Session, batch: _Batch, event: AudienceArchived) -> None:
        found = self.definitions.audiences.get(event.audience_id)
        if found is None:
            return
        session.execute(
            update(t.audiences)
            .where(t.audiences.c.audience_id == event.audience_id)
            .values(state="archived", version=found.version + 1, update_time=batch.now)
        )
        self.definitions.audiences[event.audience_id] = AudienceDef(
            found.audience_id, found.condition, found.version + 1, False, found.parts, found.texts
        )
        batch.redefined[event.audience_id] = "archived"
        for other in self._dependents(event.audience_id):
            batch.redefined.setdefault(other, "definition")

    def _define_trait(self, session: Session, batch: _Batch, event: ComputedTraitDefined) -> None:
        aggregate = aggregate_from_json(event.definition)
        row = session.execute(select(t.traits.c.version).where(t.traits.c.trait_id == event.trait_id)).first()
        values = {
            "display_name": event.name,
            "description": event.description,
            "expression": event.expression,
            "definition": dict(event.definition),
            "update_time": micros(event.defined_at) if event.defined_at else batch.now,
        }
        if row is None:
            session.execute(insert(t.traits).values(trait_id=event.trait_id, version=1, **values))
        else:
            session.execute(
                update(t.traits)
                .where(t.traits.c.trait_id == event.trait_id)
                .values(version=row.version + 1, **values)
            )
        self.definitions.traits[event.trait_id] = aggregate
        batch.retraited.add(event.trait_id)

    # -- evaluating -----------------------------------------------------------------------------------

    def _evaluate_due(self, session: Session, batch: _Batch) -> None:
        due = session.execute(
            select(t.profiles.c.profile_id).where(
                t.profiles.c.due_at.is_not(None), t.profiles.c.due_at <= batch.now
            )
        ).scalars()
        for profile_id in due:
            batch.touch(profile_id, "time")

    def _settle(self, session: Session, batch: _Batch) -> None:
        """Evaluate the touched profiles, then the redefined audiences over everyone."""
        if batch.traits_dirty:
            f.write_traits(session, f.fold_traits(session, sorted(batch.traits_dirty)), batch.now)
        if batch.consent_dirty:
            f.write_consent(session, sorted(batch.consent_dirty))
        needs = self.definitions.event_needs()  # what the definitions read of a profile's messages
        if batch.retraited:
            self._recompute_traits(session, batch, needs)
        touched = sorted(batch.touched)
        for part in chunks(touched):
            self._evaluate(session, batch, list(part), needs)
        if batch.redefined:
            self._evaluate_audiences(session, batch)

    def _recompute_traits(self, session: Session, batch: _Batch, needs: EventNeeds) -> None:
        """A computed trait was (re)defined: compute it for every profile, then re-check audiences using it."""
        everyone = list(
            session.execute(select(t.profiles.c.profile_id).order_by(t.profiles.c.profile_id)).scalars()
        )
        for part in chunks(everyone):
            for facts in f.load_facts(session, list(part), needs).values():
                for trait_id in batch.retraited:
                    self._write_trait(session, facts, trait_id, batch.now)
        for audience in self.definitions.audiences.values():
            if computed_traits_named(audience.condition) & batch.retraited and audience.active:
                batch.redefined.setdefault(audience.audience_id, "definition")

    def _write_trait(self, session: Session, facts: ProfileFacts, trait_id: str, now: int) -> None:
        aggregate = self.definitions.traits[trait_id]
        value = compute(aggregate, facts.events, now)
        stored = facts.computed.get(trait_id)
        if stored is not None and value is not None and _same(Doc.of(value), stored):
            return
        if stored is None and value is None:
            return
        f.write_computed(session, facts.profile_id, trait_id, value, now)
        computed = dict(facts.computed)
        if value is None:
            computed.pop(trait_id, None)
        else:
            computed[trait_id] = Doc.of(value)
        facts.computed = computed

    def _evaluate(self, session: Session, batch: _Batch, profile_ids: list[str], needs: EventNeeds) -> None:
        found = f.load_facts(session, profile_ids, needs)
        rows = {
            (row.audience_id, row.profile_id): row
            for row in session.execute(
                select(t.memberships).where(t.memberships.c.profile_id.in_(profile_ids))
            )
        }
        f.add_missing_profiles(session, profile_ids, batch.now)
        aggregates, conds = self.definitions.timed()
        lookup = self.definitions.condition
        dues: list[dict[str, Any]] = []
        for profile_id in profile_ids:
            facts = found[profile_id]
            for trait_id in self.definitions.traits:
                self._write_trait(session, facts, trait_id, batch.now)
            reason = batch.touched.get(profile_id, "event")
            for audience in self.definitions.audiences.values():
                if not audience.active or audience.audience_id in batch.redefined:
                    continue
                truths = [evaluate(part, facts, batch.now, lookup) for part in audience.parts]
                member = all(truths)
                row = rows.get((audience.audience_id, profile_id))
                was = bool(row.member) if row is not None else False
                before = list(row.parts) if row is not None and row.parts else None
                if member != was:
                    changed = tuple(
                        text
                        for text, now_true, then_true in zip(
                            audience.texts, truths, before or [not v for v in truths], strict=False
                        )
                        if now_true != then_true
                    )
                    self._change(
                        session, batch, audience.audience_id, profile_id, member, reason, changed, truths, row
                    )
                elif row is not None and before != truths:
                    session.execute(
                        update(t.memberships)
                        .where(
                            t.memberships.c.audience_id == audience.audience_id,
                            t.memberships.c.profile_id == profile_id,
                        )
                        .values(parts=truths)
                    )
                elif row is None and any(truths):
                    # Part of the way in: remember which conditions hold, so that the entry names the one
                    # that changed. `changes` 0: it never entered (no change time to report).
                    session.execute(
                        insert(t.memberships).values(
                            audience_id=audience.audience_id,
                            profile_id=profile_id,
                            member=False,
                            change_time=0,
                            changes=0,
                            parts=truths,
                        )
                    )
            dues.append({"b_profile": profile_id, "b_due": next_change(aggregates, conds, facts, batch.now)})
        if dues:
            session.execute(
                update(t.profiles)
                .where(t.profiles.c.profile_id == bindparam("b_profile"))
                .values(due_at=bindparam("b_due")),
                dues,
            )

    def _evaluate_audiences(self, session: Session, batch: _Batch) -> None:
        """Defined, redefined or archived audiences: the whole population in SQL, diffed with the members."""
        lookup = self.definitions.condition
        for audience_id, reason in batch.redefined.items():
            audience = self.definitions.audiences.get(audience_id)
            if audience is None:
                continue
            # What the rows remember of the old definition's conditions means nothing for the new one.
            of_audience = t.memberships.c.audience_id == audience_id
            session.execute(delete(t.memberships).where(of_audience, t.memberships.c.changes == 0))
            session.execute(update(t.memberships).where(of_audience).values(parts=[]))
            members: set[str] = set()
            if audience.active:
                members = set(
                    session.execute(sqlcompile.members(audience.condition, batch.now, lookup)).scalars()
                )
            current = set(
                session.execute(
                    select(t.memberships.c.profile_id).where(
                        t.memberships.c.audience_id == audience_id, t.memberships.c.member.is_(True)
                    )
                ).scalars()
            )
            for profile_id in sorted(members - current):
                self._change(session, batch, audience_id, profile_id, True, reason, ())
            for profile_id in sorted(current - members):
                self._change(session, batch, audience_id, profile_id, False, reason, ())

    def _change(
        self,
        session: Session,
        batch: _Batch,
        audience_id: str,
        profile_id: str,
        entered: bool,
        reason: str,
        changed: tuple[str, ...],
        truths: list[bool] | None = None,
        row: Any = _UNREAD,
    ) -> None:
        """Record a membership change and the event announcing it; `row`: the membership row (or None), when
        the caller read it already."""
        if row is _UNREAD:
            row = session.execute(
                select(t.memberships.c.changes).where(
                    t.memberships.c.audience_id == audience_id, t.memberships.c.profile_id == profile_id
                )
            ).first()
        number = (row.changes if row is not None else 0) + 1
        values = {"member": entered, "change_time": batch.now, "changes": number, "parts": truths or []}
        if row is None:
            session.execute(
                insert(t.memberships).values(audience_id=audience_id, profile_id=profile_id, **values)
            )
        else:
            session.execute(
                update(t.memberships)
                .where(t.memberships.c.audience_id == audience_id, t.memberships.c.profile_id == profile_id)
                .values(**values)
            )
        audience = self.definitions.audiences.get(audience_id)
        delta = 1 if entered else -1
        session.execute(
            update(t.audiences)
            .where(t.audiences.c.audience_id == audience_id)
            .values(size=t.audiences.c.size + delta)
        )
        event = MembershipChanged(
            audience_id=audience_id,
            profile_id=profile_id,
            entered=entered,
            computed_at=moment(batch.now),
            reason=reason,
            changed=changed,
            audience_version=audience.version if audience is not None else 0,
            change_number=number,
        )
        metadata = (
            EventMetadata.caused_by(batch.cause, ACTOR)
            if batch.cause is not None
            else EventMetadata(actor=ACTOR)
        )
        new = event.to_new_event(metadata, id=derived_id("membership", audience_id, profile_id, str(number)))
        batch.appends.append(StreamAppend(streams.membership_stream(profile_id), [new]))

    def _refresh_sizes(self, session: Session) -> None:
        counts: dict[str, int] = dict(
            session.execute(
                select(t.memberships.c.audience_id, func.count())
                .where(t.memberships.c.member.is_(True))
                .group_by(t.memberships.c.audience_id)
            ).all()
        )
        for audience_id in self.definitions.audiences:
            session.execute(
                update(t.audiences)
                .where(t.audiences.c.audience_id == audience_id)
                .values(size=counts.get(audience_id, 0))
            )

    # -- helpers --------------------------------------------------------------------------------------

    def _dependents(self, audience_id: str) -> set[str]:
        """Audiences whose condition refers to this one, directly or through others."""
        found: set[str] = set()
        frontier = {audience_id}
        while frontier:
            nxt = set()
            for other in self.definitions.audiences.values():
                if audiences_named(other.condition) & frontier and other.audience_id not in found:
                    found.add(other.audience_id)
                    nxt.add(other.audience_id)
            frontier = nxt
        found.discard(audience_id)
        return found

    @staticmethod
    def _memberships_of(session: Session, profile_id: str) -> list[str]:
        return list(
            session.execute(
                select(t.memberships.c.audience_id).where(
                    t.memberships.c.profile_id == profile_id, t.memberships.c.member.is_(True)
                )
            ).scalars()
        )

    @staticmethod
    def _subject_profiles(session: Session, subject_ids: set[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for part in chunks(sorted(subject_ids)):
            for subject_id, profile_id in session.execute(
                select(t.subjects.c.subject_id, t.subjects.c.profile_id).where(
                    t.subjects.c.subject_id.in_(part)
                )
            ):
                found[subject_id] = profile_id
        return found

    @staticmethod
    def _put_subject(
        session: Session, subject_id: str, profile_id: str, identifier_type: str | None, *, exists: bool
    ) -> None:
        if exists:
            values: dict[str, Any] = {"profile_id": profile_id}
            if identifier_type:
                values["identifier_type"] = identifier_type
            session.execute(update(t.subjects).where(t.subjects.c.subject_id == subject_id).values(**values))
        else:
            session.execute(
                insert(t.subjects).values(
                    subject_id=subject_id, profile_id=profile_id, identifier_type=identifier_type
                )
            )


def _same(one: Doc, other: Doc) -> bool:
    return one.values == other.values and one.items == other.items
