"""Identity's policy on the shared reactor: the single writer of identity decisions and of the profile stream.

For each batch of collected messages (and rules changes, and erasures) in global order, it decides every message
against the in-memory graph, appends the decisions (ids derived from the message, so a re-run after a crash
appends nothing twice) and one `MessagesAttributed` naming where each message landed, and writes the changed
rows in the reactor's transaction, which commits them with the checkpoint. Operator splits go through the same
reactor (`Reactor.exclusive`), so decisions reach the log in exactly the order they were applied: replaying the
decision events alone rebuilds the same graph.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session

from cdp.eventlog.port import (
    EventStore,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    append_all,
)
from cdp.events import DomainEvent, EventMetadata, from_recorded
from cdp.events.governance import SubjectErased
from cdp.events.identity import IdentityRulesSet, MessagesAttributed
from cdp.events.ingest import MessageCollected
from cdp.events.streams import attribution_stream
from cdp.keyring import Keyring
from cdp.reactor import Policy, derived_id, write_checkpoint
from cdp.reactor.purge import Purges
from services.identity import codec
from services.identity.domain.decider import Observation, decide
from services.identity.domain.identifiers import Hasher, e164
from services.identity.observer import Observer
from services.identity.prepare import IdentitiesCache, Opened, OpenerProcess, message_subjects, page_task
from services.identity.readmodel import (
    State,
    load_histories,
    load_state,
    metadata,
    save_state,
    schema,
    schema_outdated,
    stamp_schema,
)
from services.identity.replay import LIVE, replay
from services.identity.splitting import Splitter

log = structlog.get_logger(__name__)

CHECKPOINT = "identity-resolver"
SERVICE = "identity"
PIPELINE_BATCH = 500
"""Pages at least this large are opened a page ahead in a worker process (smaller ones are not worth it)."""
ATTRIBUTION = attribution_stream()


@dataclass(frozen=True)
class Prepared:
    """A page made ready before its turn: its messages being opened by the worker, or every event decoded here."""

    generation: int
    """The rules and erasures the worker opened under: a page opened before they changed is not used."""
    opening: concurrent.futures.Future[list[Opened | None]] | None = None
    decoded: list[tuple[RecordedEvent, DomainEvent]] | None = None


class Resolution(Policy):
    """Decides each batch; owns the identity read model, its in-memory state and the worker that opens pages."""

    name = CHECKPOINT
    filter = LIVE
    metadata = None  # identity's tables carry a layout fingerprint and are rebuilt from the log (`load`)

    def __init__(self, store: EventStore, keyring: Keyring, hasher: Hasher, engine: Engine) -> None:
        self.store, self.keyring, self.hasher = store, keyring, hasher
        self.engine = engine.execution_options(sqlite_immediate=True)
        self.purges = Purges(SERVICE, CHECKPOINT, store, engine, metadata.sorted_tables)
        """Erasures purged in a batch, confirmed (`ReadModelPurged`) once it committed."""
        self.hashes: dict[tuple[str, str], str] = {}
        self.identities = IdentitiesCache()
        self.state: State | None = None
        self.generation = 0
        """Changes with the rules or an erasure: pages opened by the worker before then are not used."""
        self.splitter = Splitter(self)
        self._opener: OpenerProcess | None = None
        self._attributed_through = -1
        self._attribution_version: int | None = None

    def observer(self, state: State) -> Observer:
        """An observer sharing the live caches."""
        return Observer(state, self.keyring, self.hasher, self.hashes, self.identities)

    # -- the reactor's hooks ----------------------------------------------------------------------------------

    async def load(self, position: int) -> None:
        """Load the state the read model holds (rebuilt from the log when its layout is another code's), and
        confirm purges a crash left unconfirmed."""
        if self.state is not None:
            await self.purges.confirm()
            return
        if await asyncio.to_thread(self._schema_outdated):
            log.warning("identity_read_model_outdated", action="rebuilding it from the log")
            await self.rebuild(position)
        else:
            state = await asyncio.to_thread(self._load)
            await self.splitter.recover(state, position)
            self.state = state
            self.generation += 1
        last = await self.store.read_stream(ATTRIBUTION, backwards=True, limit=1)
        attributed = from_recorded(last[0]) if last else None
        if isinstance(attributed, MessagesAttributed):
            self._attributed_through, self._attribution_version = (
                attributed.through_position,
                last[0].stream_position,
            )
        else:
            self._attributed_through, self._attribution_version = position, None
        await self.purges.confirm()

    async def committed(self) -> None:
        """After a committed batch: scrub the files and confirm the purges it recorded (cheap when none)."""
        await self.purges.confirm()

    def reset(self) -> None:
        """The batch's transaction rolled back: the in-memory state ran ahead of the database."""
        self.state = None

    async def close(self) -> None:
        """Stop the worker process."""
        self._stop_opener()

    async def prepare(self, events: Sequence[RecordedEvent], *, backlog: bool) -> Prepared:
        """With a backlog, the page's keys prefetched and its messages opened by the worker process while the
        page before is decided; otherwise every event decoded here and its keys prefetched."""
        if backlog and len(events) >= PIPELINE_BATCH:
            self._start_opener()
        else:
            self._stop_opener()
        opener, state, generation = self._opener, self.state, self.generation
        if opener is not None and state is not None:
            # The generation and rules are taken before the keys, so a later erasure shows.
            rules = state.rules
            keys = await self.keyring.prefetch(message_subjects(events))
            try:
                return Prepared(
                    generation, opening=opener.open_page(page_task(events, generation, rules, keys))
                )
            except RuntimeError as error:  # the worker is gone (broken or shut down): decode here instead
                log.warning("identity_opener_failed", error=f"{type(error).__name__}: {error}")
        decoded = await asyncio.to_thread(lambda: [(r, from_recorded(r)) for r in events])
        await self.keyring.prefetch(e.subject_id for _, e in decoded if isinstance(e, MessageCollected))
        return Prepared(generation, decoded=decoded)

    def decide(
        self, session: Session, events: Sequence[RecordedEvent], prepared: Prepared
    ) -> list[StreamAppend]:
        """Observe and decide each event; record histories; the decisions and the batch's attribution to append."""
        state = self.state
        assert state is not None, "the reactor loads the policy before every batch"
        decoded = (
            prepared.decoded if prepared.decoded is not None else _decode(events, self._opened(prepared))
        )
        observer = self.observer(state)
        runs, observed, erasures = self._decide(state, observer, decoded)
        # Histories are recorded after deciding, once the batch's missing ones are read in one go.
        load_histories(session, state, [o.attribution for o in observed if o.attribution])
        for obs in observed:
            observer.record(obs)
        deleted = save_state(session, state)
        for index, (recorded, erasure) in enumerate(erasures):
            # The batch's deletions are counted once, on its first erasure (`load` created the table).
            self.purges.record(session, recorded, erasure, deleted if index == 0 else 0)
        appends = [StreamAppend(stream, events) for stream, events in runs]
        attribution = self._attribution(state, events[-1].global_position, observed)
        return appends if attribution is None else [*appends, attribution]

    # -- deciding ---------------------------------------------------------------------------------------------

    def _decide(
        self, state: State, observer: Observer, decoded: Sequence[tuple[RecordedEvent, DomainEvent | Opened]]
    ) -> tuple[
        list[tuple[str, list[NewEvent]]], list[Observation], list[tuple[RecordedEvent, SubjectErased]]
    ]:
        """Observe and decide each event; decisions grouped in runs of one stream, what was observed, and the
        erasures applied."""
        runs: list[tuple[str, list[NewEvent]]] = []
        observed: list[Observation] = []
        erasures: list[tuple[RecordedEvent, SubjectErased]] = []
        generation = self.generation
        for recorded, event in decoded:
            if isinstance(event, Opened) and generation != self.generation:
                event = from_recorded(recorded)  # opened before this page changed the rules or erased someone
            if isinstance(event, Opened | MessageCollected):
                obs = (
                    observer.opened(recorded, event)
                    if isinstance(event, Opened)
                    else observer.observe(recorded, event)
                )
                if obs is not None:
                    observed.append(obs)
                    decided = decide(state.graph, state.rules, obs)
                    if decided:
                        runs += codec.runs(decided, codec.caused_by(recorded))
                    for decision in decided:
                        state.record_decision(decision)
            elif isinstance(event, IdentityRulesSet):
                observer.set_rules(event, recorded.stream_position + 1)
                self.generation += 1
            elif isinstance(event, SubjectErased):
                self._erase(state, event.subject_id)
                erasures.append((recorded, event))
        return runs, observed, erasures

    def _erase(self, state: State, subject: str) -> None:
        state.erase(subject)
        self.keyring.evict(subject)
        self.generation += 1  # after the eviction: a page opened from now on fetches keys afresh
        self.hashes.clear()  # these map clear values: keep none of an erased person's in memory
        self.identities.clear()
        e164.cache_clear()
        if self._opener is not None:
            self._opener.clear()

    def _attribution(
        self, state: State, through: int, observed: Sequence[Observation]
    ) -> StreamAppend | None:
        """The profile stream's part for the batch: where each message landed once the batch's decisions applied.

        Messages a previous run attributed already (a re-run after a crash between its append and its commit)
        are left out, and the exact expected version refuses a second writer.
        """
        after, graph = self._attributed_through, state.graph
        positions: list[int] = []
        event_ids: list[str] = []
        subjects: list[str] = []
        profiles: list[str] = []
        for obs in observed:
            subject = obs.attribution
            if obs.position is None or obs.position <= after or subject is None or subject in graph.erased:
                continue
            positions.append(obs.position)
            event_ids.append(obs.event_id)
            subjects.append(subject)
            profiles.append(graph.profile_of(subject) or "")
        if not positions:
            return None
        event = MessagesAttributed(
            after_position=after,
            through_position=through,
            positions=tuple(positions),
            event_ids=tuple(event_ids),
            subject_ids=tuple(subjects),
            profile_ids=tuple(profiles),
        )
        version = self._attribution_version
        expected: ExpectedVersion | int = ExpectedVersion.NO_STREAM if version is None else version
        new = event.to_new_event(
            EventMetadata(actor=codec.ACTOR), id=derived_id(f"{CHECKPOINT}:{after}", str(through))
        )
        # Taken as appended: if the append or the commit fails, `reset` and `load` read the stream again.
        self._attributed_through, self._attribution_version = through, 0 if version is None else version + 1
        return StreamAppend(ATTRIBUTION, [new], expected)

    def _opened(self, prepared: Prepared) -> list[Opened | None] | None:
        """The worker's result for a page (None without one, if stale, or if the worker failed)."""
        if prepared.opening is None or prepared.generation != self.generation:
            return None
        try:
            return prepared.opening.result()
        except concurrent.futures.CancelledError:
            return None
        except Exception as error:  # the worker failed (e.g. it died): the page is opened here instead
            log.warning("identity_opener_failed", error=f"{type(error).__name__}: {error}")
            return None

    def _start_opener(self) -> None:
        if self._opener is None and OpenerProcess.can_take(self.hasher):
            self._opener = OpenerProcess(self.hasher)

    def _stop_opener(self) -> None:
        if self._opener is not None:
            self._opener.close()
            self._opener = None

    # -- appending and saving outside the reactor's batches (splits, rebuilds) ------------------------------

    async def append(self, runs: list[tuple[str, list[NewEvent]]]) -> None:
        """Decisions in one group commit, in decision order (an operator's split and what follows it)."""
        if runs:
            await append_all(self.store, [StreamAppend(stream, events) for stream, events in runs])

    def save(self, state: State) -> None:
        """Write what changed in `state` (the checkpoint does not move)."""
        with Session(self.engine) as session, session.begin():
            save_state(session, state)

    async def rebuild(self, frontier: int) -> None:
        """Drop the read model and replay it from the log (decisions for the graph, messages for histories) up
        to `frontier`, the position the reactor has reached; the reactor must hold its batches off."""
        await asyncio.to_thread(self._reset_tables)
        state = State()
        self.state = state
        self.generation += 1
        await replay(self.store, Observer(state, self.keyring, self.hasher), frontier=frontier)
        await asyncio.to_thread(self._save_replayed, state, frontier)
        state.persisted = True

    def _save_replayed(self, state: State, frontier: int) -> None:
        with Session(self.engine) as session, session.begin():
            save_state(session, state)
            write_checkpoint(session, CHECKPOINT, frontier)

    def _schema_outdated(self) -> bool:
        with self.engine.connect() as connection:
            return schema_outdated(connection)

    def create_tables(self) -> None:
        """Create the read model's tables unless they are another code's layout (`load` rebuilds those): so
        queries find tables from the start, before the state has loaded."""
        if self._schema_outdated():
            return
        metadata.create_all(self.engine)
        with self.engine.begin() as connection:
            if connection.scalar(select(schema.c.fingerprint)) is None:
                stamp_schema(connection)  # a fresh database

    def _load(self) -> State:
        self.create_tables()
        with Session(self.engine) as session:
            return load_state(session)

    def _reset_tables(self) -> None:
        with self.engine.begin() as connection:
            # Every identity table, this code's and any an older layout left (their names share the prefix).
            for name in inspect(connection).get_table_names():
                if name.startswith("identity_"):
                    connection.execute(
                        text(f"DROP TABLE {connection.dialect.identifier_preparer.quote(name)}")
                    )
        metadata.create_all(self.engine)
        with self.engine.begin() as connection:
            stamp_schema(connection)


def _decode(
    page: Sequence[RecordedEvent], opened: Sequence[Opened | None] | None
) -> list[tuple[RecordedEvent, DomainEvent | Opened]]:
    """Each event decoded, or as the worker opened it (`opened`: one entry per message of the page)."""
    if opened is None:
        return [(recorded, from_recorded(recorded)) for recorded in page]
    messages = iter(opened)
    decoded: list[tuple[RecordedEvent, DomainEvent | Opened]] = []
    for recorded in page:
        found = next(messages) if recorded.type == MessageCollected.type_name else None
        decoded.append((recorded, from_recorded(recorded) if found is None else found))
    return decoded
