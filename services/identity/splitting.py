"""An operator's split, and what follows it: the affected profiles rebuilt from their messages, in one append.

Runs while the reactor holds its batches off (`Reactor.exclusive`), against the resolution's live state; also
recovers, when the state loads, the splits a fault left appended but not saved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import structlog
from sqlalchemy.orm import Session

from cdp.eventlog.port import EventFilter, RecordedEvent, StreamDeleted
from cdp.events import EventMetadata, from_recorded
from cdp.events.ingest import MessageCollected
from cdp.events.streams import subject_stream
from services.identity import codec
from services.identity.domain.decider import Observation
from services.identity.domain.decisions import Decision, Rejected, Split
from services.identity.domain.graph import Graph
from services.identity.domain.identifiers import ANONYMOUS_ID, USER_ID
from services.identity.domain.rebuild import Component, component, rebuild
from services.identity.domain.splits import redecide, refusals_to_reconsider, undoes_merge
from services.identity.readmodel import State, refusal_from_row, refusal_rows, saved_decision_ids
from services.identity.replay import MESSAGES

if TYPE_CHECKING:
    from services.identity.resolution import Resolution

log = structlog.get_logger(__name__)

DECISIONS = EventFilter(event_types=codec.DECISION_TYPES)
SPLITS = EventFilter(event_types=("ProfileSplit",))
STREAM_TYPES = (USER_ID, ANONYMOUS_ID)
"""The identifier types ingest files messages under (`subject-<subject id>`): every message names one."""
REBUILD_LIMIT = 20_000
"""Messages a split's rebuild may re-decide; beyond it only the refused messages are re-decided."""
PAGE = 1000


class Splitter:
    """Applies operator splits to the resolution's state, appends them with their rebuild, and saves."""

    def __init__(self, resolution: Resolution) -> None:
        self._resolution = resolution
        self._store = resolution.store
        self._keyring = resolution.keyring
        self._position = -1

    async def split(self, state: State, decision: Split, position: int, actor: str) -> list[Decision]:
        """Apply an operator's split built against `state` (the resolver has reacted up to `position`), then
        rebuild the profiles it affects from their messages (`domain.rebuild`); append the split and the
        rebuild's decisions in one group commit, and save the state.

        Returns the rebuild's decisions (identifiers moved or re-admitted, refusals that still stand), which
        follow the split in the log so that a replay reproduces them.
        """
        self._position = position
        made = await self._after_split(state, decision)
        for later in made:
            state.record_decision(later)
        meta = EventMetadata(actor=actor)
        follow = EventMetadata(
            actor=codec.ACTOR, correlation_id=meta.correlation_id, causation_id=decision.decision_id
        )
        await self._resolution.append(
            [(codec.stream_of(decision), [codec.new_event(decision, meta)]), *codec.runs(made, follow)]
        )
        await asyncio.to_thread(self._resolution.save, state)
        return made

    async def _after_split(self, state: State, split: Split) -> list[Decision]:
        """Apply the split, then the decisions that follow it: the rebuild of what it affects; re-deciding the
        refused messages alone when that is too large; nothing after undoing a merge (`undoes_merge`)."""
        if undoes_merge(state.graph, split):
            state.graph.apply(split)
            state.record_decision(split)
            return []
        # Read what the split affects against the graph before it (refusals are judged there), then apply it.
        refusals = await asyncio.to_thread(self._refusals_around, state, split.profile)
        reconsidered = refusals_to_reconsider(state.graph, split, refusals)
        part = await self._component(state, split, reconsidered)
        refused = (
            []
            if part is not None
            else await self._observe_at(state, {r.cause_position for r in reconsidered})
        )
        state.graph.apply(split)
        state.record_decision(split)
        if part is not None:
            return rebuild(state.graph, state.rules, split, part)
        return redecide(state.graph, state.rules, split, refused)

    async def _component(
        self, state: State, split: Split, reconsidered: Sequence[Rejected]
    ) -> Component | None:
        """The profiles the split affects and their messages, read from the subject streams of their user and
        anonymous ids (every message names one) while the component grows; None when it grows beyond
        `REBUILD_LIMIT` messages. Messages the resolver has not reached yet are left to it."""
        graph, refused = state.graph, {r.subject for r in reconsidered}
        types = {r.subject: r.type for r in reconsidered}
        observer = self._resolution.observer(state)
        observed: dict[int, Observation] = {}
        read: set[str] = set()
        part = component(graph, split, refused, [])
        while True:
            wanted = [s for s in part.subjects if s not in read and _type_of(graph, types, s) in STREAM_TYPES]
            if not wanted:
                return part
            read.update(wanted)
            found: list[tuple[RecordedEvent, MessageCollected]] = []
            for subject in sorted(wanted):
                for recorded in await self._read_subject(subject):
                    if recorded.type == "MessageCollected" and recorded.global_position <= self._position:
                        event = from_recorded(recorded)
                        if isinstance(event, MessageCollected) and recorded.global_position not in observed:
                            found.append((recorded, event))
            if len(observed) + len(found) > REBUILD_LIMIT:
                log.warning("identity_split_rebuild_too_large", messages=len(observed) + len(found))
                return None
            await self._keyring.prefetch(event.subject_id for _, event in found)
            for recorded, event in found:
                obs = observer.observe(recorded, event)
                if obs is not None:
                    observed[recorded.global_position] = obs
                    for identity in (*obs.identities, *(obs.previous or ())):
                        types.setdefault(identity.subject, identity.type)
            part = component(graph, split, refused, [observed[p] for p in sorted(observed)])

    async def _read_subject(self, subject: str) -> list[RecordedEvent]:
        try:
            return await self._store.read_stream(subject_stream(subject))
        except StreamDeleted:  # erased meanwhile
            return []

    async def _observe_at(self, state: State, positions: Iterable[int | None]) -> list[Observation]:
        """The refused messages at these positions, observed (the fallback when a rebuild is too large)."""
        observer = self._resolution.observer(state)
        messages = await self._messages_at(positions)
        return [obs for recorded, event in messages if (obs := observer.observe(recorded, event)) is not None]

    def _refusals_around(self, state: State, profile: str) -> list[Rejected]:
        """Refusals made by the profile (or a profile merged into it) or refusing to join it."""
        live = state.graph.resolve(profile) or profile
        ids = [live, *state.graph.merged_into(live)]
        with Session(self._resolution.engine) as session:
            rows = refusal_rows(session, ids)
        rows += [r for r in state.new_decisions if r["kind"] == "refuse"]
        return [refusal_from_row(row) for row in rows]

    async def _messages_at(
        self, positions: Iterable[int | None]
    ) -> list[tuple[RecordedEvent, MessageCollected]]:
        """The collected messages at these log positions, in log order (erased ones are gone: skipped)."""
        found: list[tuple[RecordedEvent, MessageCollected]] = []
        for position in sorted(p for p in positions if p is not None):
            page = await self._store.read_all(position - 1, limit=1, filter=MESSAGES)
            if page and page[0].global_position == position:
                event = from_recorded(page[0])
                if isinstance(event, MessageCollected):
                    found.append((page[0], event))
        await self._keyring.prefetch(event.subject_id for _, event in found)
        return found

    async def recover(self, state: State, position: int) -> None:
        """Apply the operator splits the log holds but the read model missed (a fault between a split's
        append and its save), with the re-decisions that follow them.

        Under the lock nothing happens between a split's append and its save, so the state loaded from the
        last commit is the one the split was made against; message decisions are re-derived by re-deciding,
        but a split is not, so it is taken from the log. A split of a profile erased since is left alone.
        """
        # Nearly always there is no split after the checkpoint: look for splits alone first (cheap).
        after, splits = position, dict[str, tuple[int, Split]]()
        while page := await self._store.read_all(after, limit=PAGE, filter=SPLITS):
            after = page[-1].global_position
            for recorded in page:
                decision = codec.decode_decision(recorded)
                if isinstance(decision, Split) and not decision.automatic:
                    splits[decision.decision_id] = (recorded.global_position, decision)
        if not splits:
            return
        saved = await asyncio.to_thread(self._saved_decisions, list(splits))
        missed = {
            split_id: position
            for split_id, (position, split) in splits.items()
            if split_id not in saved and state.graph.resolve(split.profile) is not None
        }
        if not missed:
            return
        after, recovered = min(missed.values()) - 1, list[Decision]()
        while page := await self._store.read_all(after, limit=PAGE, filter=DECISIONS):
            after = page[-1].global_position
            for recorded in page:
                decision = codec.decode_decision(recorded)
                own = isinstance(decision, Split) and decision.decision_id in missed
                if decision is not None and (own or recorded.metadata.get("causation_id") in missed):
                    recovered.append(decision)
        if not recovered:
            return
        for decision in recovered:
            state.graph.apply(decision)
            state.record_decision(decision)
        log.warning("identity_splits_recovered", splits=len(missed), decisions=len(recovered))
        await asyncio.to_thread(self._resolution.save, state)

    def _saved_decisions(self, ids: Sequence[str]) -> set[str]:
        with Session(self._resolution.engine) as session:
            return saved_decision_ids(session, ids)


def _type_of(graph: Graph, types: Mapping[str, str], subject: str) -> str | None:
    link = graph.links.get(subject)
    return link.type if link is not None else types.get(subject)
