"""Rebuilding identity's state from the log alone: the whole read model (`replay`), or one profile as it was at a
past moment (`replay_profile`, which opens only the messages that can concern it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime

import structlog

from cdp.eventlog.port import START, EventFilter, EventStore, RecordedEvent
from cdp.events import DomainEvent, EventCatalogError, from_recorded
from cdp.events.governance import SubjectErased
from cdp.events.identity import IdentityRulesSet
from cdp.events.ingest import MessageCollected
from services.identity import codec
from services.identity.domain.decisions import Decision, Linked, Merged, Rejected, Split
from services.identity.domain.graph import Graph
from services.identity.observer import Observer

LIVE = EventFilter(event_types=("MessageCollected", "IdentityRulesSet", "SubjectErased"))
"""What the resolver decides on."""
MESSAGES = EventFilter(event_types=("MessageCollected",))
REPLAY = EventFilter(event_types=(*LIVE.event_types, *codec.DECISION_TYPES))

log = structlog.get_logger(__name__)


def _decoded(recorded: RecordedEvent) -> DomainEvent | None:
    """The event, or None for one no code can read: the live resolver parked it (`EventParked`), so a replay
    leaves it out too, and one bad record never fails a rebuild or a read of the past."""
    try:
        return from_recorded(recorded)
    except (EventCatalogError, ValueError) as error:
        log.warning(
            "replay_skipped_undecodable_event",
            event_id=str(recorded.id),
            global_position=recorded.global_position,
            event_type=recorded.type,
            cause=str(error)[:200],
        )
        return None


async def replay(
    store: EventStore,
    observer: Observer,
    *,
    frontier: int | None = None,
    until: datetime | None = None,
    batch_size: int = 2000,
) -> None:
    """Rebuild `observer.state` from the log: decision events for the graph, messages for histories.

    Messages, rules and erasures count only up to `frontier` (what the resolver had processed); events
    recorded after `until` are ignored. Erasures apply last: nothing after them can concern the person.
    """
    state, erasures, after = observer.state, list[str](), START
    while page := await store.read_all(after, limit=batch_size, filter=REPLAY):
        after = page[-1].global_position
        if until is not None:
            page = [r for r in page if r.recorded_at <= until]
        decoded = await asyncio.to_thread(_decode_for_replay, page, frontier)
        await observer.keyring.prefetch(e.subject_id for _, e in decoded if isinstance(e, MessageCollected))
        await asyncio.to_thread(_replay_page, observer, decoded, erasures)
    for subject in erasures:
        state.erase(subject)


GRAPH = EventFilter(event_types=("IdentityRulesSet", "SubjectErased", *codec.DECISION_TYPES))


async def replay_profile(
    store: EventStore,
    observer: Observer,
    locate: Callable[[Graph], str | None],
    *,
    until: datetime,
    batch_size: int = 2000,
) -> tuple[str | None, dict[str, str]]:
    """`replay(until=…)` for one profile: the same graph, and the histories and clear values of the profile
    `locate` finds in it, opening only the messages that can concern it.

    First the decisions, rules and erasures alone rebuild the graph; meanwhile every subject is tied to the
    profiles it was ever linked to or refused by, and profiles to those merged or split from them (its
    *lineage*). A message's history belongs to its attribution subject, and the message's own envelope subject
    (its user or anonymous id) was joined with that subject or refused by its profile; so only messages whose
    envelope names a subject of the profile's lineage are opened, with those naming no subject the graph ever
    saw (e.g. a blocked anonymous id). Returns the profile and the clear values seen.
    """
    state, lineage, after = observer.state, _Lineage(), START
    rules_at: list[tuple[int, IdentityRulesSet, int]] = []
    erasures: list[str] = []
    while page := await store.read_all(after, limit=batch_size, filter=GRAPH):
        after = page[-1].global_position
        for recorded in (r for r in page if r.recorded_at <= until):
            decision = codec.decode_decision(recorded)
            if decision is not None:
                state.graph.apply(decision)
                lineage.add(decision)
                continue
            event = _decoded(recorded)
            if isinstance(event, IdentityRulesSet):
                rules_at.append((recorded.global_position, event, recorded.stream_position + 1))
            elif isinstance(event, SubjectErased):
                erasures.append(event.subject_id)
    profile = locate(state.graph)
    values: dict[str, str] = {}
    if profile is not None:
        related = lineage.of(profile)
        after, applied = START, 0
        while page := await store.read_all(after, limit=batch_size, filter=MESSAGES):
            after = page[-1].global_position
            chosen: list[tuple[RecordedEvent, MessageCollected]] = []
            for recorded in page:
                if recorded.recorded_at > until:
                    continue
                event = _decoded(recorded)
                if not isinstance(event, MessageCollected):
                    continue
                named = {event.subject_id, *event.identifiers.values()}
                if named & related or not any(subject in lineage for subject in named):
                    chosen.append((recorded, event))
            await observer.keyring.prefetch(e.subject_id for _, e in chosen)
            for recorded, event in chosen:
                while applied < len(rules_at) and rules_at[applied][0] < recorded.global_position:
                    _, rules_event, version = rules_at[applied]
                    observer.set_rules(rules_event, version)
                    applied += 1
                obs = observer.observe(recorded, event)
                if obs is not None:
                    observer.record(obs)
                    values.update((i.subject, i.value) for i in (*obs.identities, *(obs.previous or ())))
    for subject in erasures:
        state.erase(subject)
    return (profile if profile is not None and profile in state.graph.nodes else None), values


class _Lineage:
    """Subjects and profile ids tied together by every decision ever made (a union-find)."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def __contains__(self, member: object) -> bool:
        return member in self._parent

    def add(self, decision: Decision) -> None:
        if isinstance(decision, Linked | Rejected):
            self._union(decision.subject, decision.profile)
        elif isinstance(decision, Merged):
            self._union(decision.merged, decision.profile)
        else:
            self._union(decision.new_profile, decision.profile)

    def of(self, member: str) -> set[str]:
        root = self._find(member)
        return {m for m in self._parent if self._find(m) == root}

    def _find(self, member: str) -> str:
        parent = self._parent.setdefault(member, member)
        while parent != member:
            grand = self._parent[parent]
            self._parent[member] = grand
            member, parent = parent, grand
        return member

    def _union(self, a: str, b: str) -> None:
        root_a, root_b = self._find(a), self._find(b)
        if root_a != root_b:
            self._parent[root_a] = root_b


def _decode_for_replay(
    page: Sequence[RecordedEvent], frontier: int | None
) -> list[tuple[RecordedEvent, Decision | DomainEvent]]:
    """Each event once: a decision as such; messages, rules and erasures only up to the frontier."""
    decoded: list[tuple[RecordedEvent, Decision | DomainEvent]] = []
    for recorded in page:
        decision = codec.decode_decision(recorded)
        if decision is not None:
            decoded.append((recorded, decision))
        elif (frontier is None or recorded.global_position <= frontier) and (
            event := _decoded(recorded)
        ) is not None:
            decoded.append((recorded, event))
    return decoded


def _replay_page(
    observer: Observer, decoded: Sequence[tuple[RecordedEvent, Decision | DomainEvent]], erasures: list[str]
) -> None:
    state = observer.state
    for recorded, event in decoded:
        if isinstance(event, Linked | Merged | Rejected | Split):
            state.graph.apply(event)
            state.record_decision(event)
        elif isinstance(event, MessageCollected):
            obs = observer.observe(recorded, event)
            if obs is not None:
                observer.record(obs)
        elif isinstance(event, IdentityRulesSet):
            observer.set_rules(event, recorded.stream_position + 1)
        elif isinstance(event, SubjectErased):
            erasures.append(event.subject_id)
