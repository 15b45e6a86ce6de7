"""The resolver: the single writer of identity decisions, and the replay that rebuilds from them.

Live, it reads collected messages in global order from its checkpoint, decides each against the in-memory
graph, appends the decisions (deterministic ids, so a re-run after a crash appends nothing twice), then
saves the changed rows with the checkpoint in one read-model transaction. Operator splits go through the
same lock, so decisions reach the log in exactly the order they were applied: replaying the decision events
alone rebuilds the same graph.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Engine, delete, insert, inspect, select, text
from sqlalchemy.orm import Session

from cdp.eventlog.port import (
    START,
    EventFilter,
    EventStore,
    EventStoreError,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    StreamDeleted,
)
from cdp.reactor import checkpoint_metadata, checkpoints
from cdp.reactor.faults import is_transient
from cdp.events import DomainEvent, EventMetadata, from_recorded
from cdp.events.governance import SubjectErased
from cdp.events.identity import IdentityRulesSet
from cdp.events.ingest import MessageCollected
from cdp.events.streams import subject_stream
from cdp.keyring import DecryptionFailed, Keyring
from cdp.keyring import SubjectErased as KeyErased
from services.identity import codec
from services.identity.domain.decider import Observation, decide
from services.identity.domain.decisions import Decision, Linked, Merged, Rejected, Split
from services.identity.domain.graph import Graph
from services.identity.domain.history import History
from services.identity.domain.identifiers import ANONYMOUS_ID, USER_ID, Hasher, e164
from services.identity.domain.rebuild import Component, component, rebuild
from services.identity.domain.rules import rules_from_json
from services.identity.domain.splits import redecide, refusals_to_reconsider, undoes_merge
from services.identity.prepare import (
    HashCache,
    IdentitiesCache,
    Opened,
    OpenerProcess,
    message_subjects,
    opened_from,
    page_task,
)
from services.identity.readmodel import (
    State,
    dumps,
    load_histories,
    load_state,
    metadata,
    refusal_from_row,
    refusal_rows,
    save_state,
    saved_decision_ids,
    schema,
    schema_outdated,
    stamp_schema,
)

log = structlog.get_logger(__name__)

CHECKPOINT = "identity-resolver"
PIPELINE_BATCH = 500
"""Pages at least this large are opened a page ahead in a worker process (smaller ones are not worth it)."""
LIVE = EventFilter(event_types=("MessageCollected", "IdentityRulesSet", "SubjectErased"))
MESSAGES = EventFilter(event_types=("MessageCollected",))
DECISIONS = EventFilter(event_types=codec.DECISION_TYPES)
SPLITS = EventFilter(event_types=("ProfileSplit",))
STREAM_TYPES = (USER_ID, ANONYMOUS_ID)
"""The identifier types ingest files messages under (`subject-<subject id>`): every message names one."""
REBUILD_LIMIT = 20_000
"""Messages a split's rebuild may re-decide; beyond it only the refused messages are re-decided."""
REPLAY = EventFilter(event_types=(*LIVE.event_types, *codec.DECISION_TYPES))


class Observer:
    """Turns recorded events into state changes; shared by the live resolver, the rebuild and `as_of`."""

    def __init__(
        self,
        state: State,
        keyring: Keyring,
        hasher: Hasher,
        cache: dict[tuple[str, str], str] | None = None,
        identities: IdentitiesCache | None = None,
    ) -> None:
        self.state, self.keyring = state, keyring
        self._identities = IdentitiesCache() if identities is None else identities
        self.hasher: Hasher = HashCache(hasher, cache)

    def observe(self, recorded: RecordedEvent, event: MessageCollected) -> Observation | None:
        """Open the message and remember its identifier values (`record` adds it to history); None if shredded."""
        try:
            payload: Mapping[str, Any] | None = event.open_payload(self.keyring)
        except (KeyErased, DecryptionFailed):
            payload = None  # shredded: nothing of this person may reach the read model
        opened = opened_from(event, payload, self.state.rules, self._identities, self.hasher)
        return self._observation(recorded, opened)

    def opened(self, recorded: RecordedEvent, message: Opened) -> Observation | None:
        """`observe` of a message a worker opened (`prepare`); None if shredded."""
        return self._observation(recorded, message)

    def _observation(self, recorded: RecordedEvent, message: Opened) -> Observation | None:
        ids, previous = message.identities, message.previous
        if ids is None:
            return None
        for identity in (*ids, *(previous or ())):
            self.state.remember_value(identity.subject, identity.type, identity.value)
        return Observation(
            event_id=str(recorded.id),
            message_id=message.message_id,
            message_type=message.message_type,
            timestamp=message.timestamp,
            identities=ids,
            previous=previous,
            source_id=message.source_id,
            event_name=message.event_name,
            traits=message.traits,
            position=recorded.global_position,
        )

    def set_rules(self, event: IdentityRulesSet, version: int) -> None:
        """Rules in force from this point of the log."""
        self.state.rules = rules_from_json(event.rules, event.max_merges, version, event.priority)
        self.state.rules_changed = True

    def record(self, obs: Observation) -> None:
        """Add the message to the history of its attribution subject (histories must be loaded)."""
        subject = obs.attribution
        if subject is None or subject in self.state.graph.erased:
            return
        history = self.state.histories.get(subject)
        if history is None:
            history = self.state.histories[subject] = History()
            self.state.without_history.discard(subject)
        history.record(obs.message_type, obs.timestamp, obs.source_id, obs.event_name, obs.traits)
        self.state.dirty_histories.add(subject)


class Resolver:
    """Owns the identity read model: decides live, splits on request, rebuilds from the log."""

    def __init__(
        self,
        store: EventStore,
        keyring: Keyring,
        hasher: Hasher,
        engine: Engine,
        *,
        batch_size: int = 1000,
    ) -> None:
        self._store, self._keyring, self._hasher = store, keyring, hasher
        self._engine = engine.execution_options(sqlite_immediate=True)
        self._batch_size = batch_size
        self._lock = asyncio.Lock()
        self._hashes: dict[tuple[str, str], str] = {}
        self._identities = IdentitiesCache()
        self._state: State | None = None
        self._position = START
        self._scanned = START
        self._advanced = asyncio.Condition()
        self._opener: OpenerProcess | None = None
        self._generation = 0
        """Changes with the rules or an erasure: pages opened by the worker before then are not used."""

    @property
    def position(self) -> int:
        """The checkpoint: global position of the last event processed."""
        return self._position

    async def run(self) -> None:
        """Catch up, then follow new events until cancelled (transient faults are retried)."""
        while True:
            try:
                await self.catch_up()
                await self._follow()
            except Exception as error:  # the log or the read-model database is briefly unavailable or busy
                if not is_transient(error):
                    raise
                log.warning("identity_resolver_retrying", error=f"{type(error).__name__}: {error}")
                await asyncio.sleep(1.0)

    async def catch_up(self) -> int:
        """Process everything up to the head of the log; returns the checkpoint.

        With a backlog (full pages), the next page is read, its keys prefetched and its messages opened in a
        worker process (`prepare`) while this one is decided and saved.
        """
        await self._ensure_state()
        ahead: asyncio.Future[_Read] = asyncio.ensure_future(self._read(self._position))
        try:
            while True:
                read = await ahead
                if read.after != self._position:  # the checkpoint moved meanwhile (a rebuild): read again
                    read = await self._read(self._position)
                page = read.page
                full = len(page) >= self._batch_size
                if full:
                    self._start_opener()
                    ahead = asyncio.ensure_future(self._read(page[-1].global_position))
                if page:
                    await self._process(page, await self._opened(read))
                if not full:
                    # Nothing this resolver reads is left up to `head` (its own decisions included).
                    async with self._advanced:
                        self._scanned = max(self._scanned, read.head)
                        self._advanced.notify_all()
                    return self._position
        finally:
            if not ahead.done():
                ahead.cancel()
            elif not ahead.cancelled():
                ahead.exception()  # retrieved: a failed read-ahead nobody used is not worth a warning
            self._stop_opener()

    async def _read(self, after: int) -> _Read:
        """A page after `after`, with the head before it; handed to the worker to open when one runs."""
        head = await self._store.head_position()
        page = await self._store.read_all(after, limit=self._batch_size, filter=LIVE)
        opener, state, generation = self._opener, self._state, self._generation
        if opener is None or state is None or not page:
            return _Read(after, head, page, generation, None)
        rules = state.rules  # the generation and rules are taken before the keys, so a later erasure shows
        keys = await self._keyring.prefetch(message_subjects(page))
        try:
            opening = opener.open_page(page_task(page, generation, rules, keys))
        except RuntimeError as error:  # the worker is gone (broken or shut down): open the page here
            log.warning("identity_opener_failed", error=f"{type(error).__name__}: {error}")
            opening = None
        return _Read(after, head, page, generation, opening)

    async def _opened(self, read: _Read) -> _Opened | None:
        """The worker's result for a page (None without one, or if the worker failed: opened here then)."""
        if read.opening is None:
            return None
        try:
            opened = await asyncio.wrap_future(read.opening)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not read.opening.cancelled() or (task is not None and task.cancelling()):
                raise  # this task is being cancelled, not just the worker's page
            return None
        except Exception as error:  # the worker failed (e.g. it died): the page is opened here instead
            log.warning("identity_opener_failed", error=f"{type(error).__name__}: {error}")
            return None
        return _Opened(read.generation, opened)

    def _start_opener(self) -> None:
        if (
            self._opener is None
            and self._batch_size >= PIPELINE_BATCH
            and OpenerProcess.can_take(self._hasher)
        ):
            self._opener = OpenerProcess(self._hasher)

    def _stop_opener(self) -> None:
        if self._opener is not None:
            self._opener.close()
            self._opener = None

    async def wait_for(self, position: int, within: float = 10.0) -> None:
        """Return once the resolver has processed the log up to `position` (TimeoutError after `within` s)."""
        async with asyncio.timeout(within), self._advanced:
            await self._advanced.wait_for(lambda: max(self._position, self._scanned) >= position)

    async def state(self) -> State:
        """The live state (loaded on first use)."""
        return await self._ensure_state()

    async def split(self, build: Callable[[State], Split], actor: str) -> tuple[Split, list[Decision]]:
        """Apply an operator's split built against the current state, then rebuild the profiles it affects
        from their messages (`domain.rebuild`); append the split and the rebuild's decisions in one group
        commit, and save.

        Returns the split and the rebuild's decisions (identifiers moved or re-admitted, refusals that still
        stand), which follow the split in the log so that a replay reproduces them.
        """
        async with self._lock:
            state = await self._ensure_state()
            decision = build(state)
            try:
                made = await self._after_split(state, decision)
                for later in made:
                    state.record_decision(later)
                meta = EventMetadata(actor=actor)
                follow = EventMetadata(
                    actor=codec.ACTOR, correlation_id=meta.correlation_id, causation_id=decision.decision_id
                )
                await self._append(
                    [(codec.stream_of(decision), [codec.new_event(decision, meta)]), *_runs(made, follow)]
                )
                await asyncio.to_thread(self._save, self._position)
            except BaseException:
                self._state = None
                raise
            return decision, made

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
        observer = Observer(state, self._keyring, self._hasher, self._hashes, self._identities)
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
                        event = codec.decode(recorded)
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
        observer = Observer(state, self._keyring, self._hasher, self._hashes, self._identities)
        messages = await self._messages_at(positions)
        return [obs for recorded, event in messages if (obs := observer.observe(recorded, event)) is not None]

    def _refusals_around(self, state: State, profile: str) -> list[Rejected]:
        """Refusals made by the profile (or a profile merged into it) or refusing to join it."""
        live = state.graph.resolve(profile) or profile
        ids = [live, *state.graph.merged_into(live)]
        with Session(self._engine) as session:
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
                event = codec.decode(page[0])
                if isinstance(event, MessageCollected):
                    found.append((page[0], event))
        await self._keyring.prefetch(event.subject_id for _, event in found)
        return found

    async def rebuild(self) -> int:
        """Drop the read model and replay it from the log: decisions for the graph, messages for history."""
        async with self._lock:
            return await self._rebuild()

    async def _rebuild(self) -> int:
        frontier = await asyncio.to_thread(self._load_checkpoint)
        await asyncio.to_thread(self._reset)
        state = State()
        self._state = state
        self._generation += 1
        await replay(self._store, Observer(state, self._keyring, self._hasher), frontier=frontier)
        await asyncio.to_thread(self._save, frontier)
        state.persisted = True
        self._position = frontier
        return frontier

    async def snapshot(self) -> dict[str, list[str]]:
        """Every read-model row as sorted JSON, per table (to compare a rebuild with the live model)."""

        def read() -> dict[str, list[str]]:
            with self._engine.connect() as connection:
                return {
                    table.name: sorted(dumps(dict(row._mapping)) for row in connection.execute(select(table)))
                    for table in metadata.sorted_tables
                }

        async with self._lock:
            return await asyncio.to_thread(read)

    async def _follow(self) -> None:
        """Wake on each new event, then process whatever has arrived in batches."""
        async for recorded in self._store.subscribe(self._position, filter=LIVE):
            if recorded.global_position > self._position:
                await self.catch_up()

    async def _process(self, page: Sequence[RecordedEvent], opened: _Opened | None = None) -> None:
        """Decide a page, append its decisions in order, save the state and the checkpoint."""
        async with self._lock:
            state = await self._ensure_state()
            try:
                # Opened under other rules or before an erasure: open everything here instead.
                usable = (
                    opened.messages if opened is not None and opened.generation == self._generation else None
                )
                decoded = await asyncio.to_thread(_decode, page, usable)
                await self._keyring.prefetch(
                    e.subject_id for _, e in decoded if isinstance(e, MessageCollected)
                )
                runs = await asyncio.to_thread(self._decide, state, decoded)
                await self._append(runs)
                await asyncio.to_thread(self._save, page[-1].global_position)
            except BaseException:
                self._state = None  # the in-memory state ran ahead of the database: reload it
                raise
        async with self._advanced:
            self._position = page[-1].global_position
            self._advanced.notify_all()

    async def _append(self, runs: list[tuple[str, list[NewEvent]]]) -> None:
        """All of a batch's decisions in one group commit, in decision order."""
        if not runs:
            return
        results = await self._store.append_many([StreamAppend(stream, events) for stream, events in runs])
        failed = next((r for r in results if isinstance(r, EventStoreError)), None)
        if failed is not None:
            raise failed  # deterministic ids make a retry idempotent: a conflict here is a bug, not a race

    def _decide(
        self, state: State, decoded: Sequence[tuple[RecordedEvent, DomainEvent | Opened]]
    ) -> list[tuple[str, list[NewEvent]]]:
        """In a worker thread: observe and decide each event; decisions grouped in runs of one stream."""
        observer = Observer(state, self._keyring, self._hasher, self._hashes, self._identities)
        runs: list[tuple[str, list[NewEvent]]] = []
        observed: list[Observation] = []
        generation = self._generation
        for recorded, event in decoded:
            if isinstance(event, Opened) and generation != self._generation:
                event = codec.decode(recorded)  # opened before this page changed the rules or erased someone
            if isinstance(event, Opened | MessageCollected):
                if isinstance(event, Opened):
                    obs = observer.opened(recorded, event)
                else:
                    obs = observer.observe(recorded, event)
                if obs is not None:
                    observed.append(obs)
                    decided = decide(state.graph, state.rules, obs)
                    if decided:
                        runs += _runs(decided, codec.caused_by(recorded))
                    for decision in decided:
                        state.record_decision(decision)
            elif isinstance(event, IdentityRulesSet):
                observer.set_rules(event, recorded.stream_position + 1)
                self._generation += 1
            elif isinstance(event, SubjectErased):
                state.erase(event.subject_id)
                self._keyring.evict(event.subject_id)
                self._generation += 1  # after the eviction: a page opened from now on fetches keys afresh
                self._hashes.clear()  # these map clear values: keep none of an erased person's in memory
                self._identities.clear()
                e164.cache_clear()
                if self._opener is not None:
                    self._opener.clear()
        # Histories are recorded after deciding, once the batch's missing ones are read in one go.
        with Session(self._engine) as session:
            load_histories(session, state, [o.attribution for o in observed if o.attribution])
        for obs in observed:
            observer.record(obs)
        return runs

    async def _ensure_state(self) -> State:
        if self._state is not None:
            return self._state
        if await asyncio.to_thread(self._schema_outdated):
            log.warning("identity_read_model_outdated", action="rebuilding it from the log")
            await self._rebuild()
            assert self._state is not None
            return self._state
        loaded, self._position = await asyncio.to_thread(self._load)
        await self._recover_splits(loaded)
        self._state = loaded
        self._generation += 1
        return loaded

    async def _recover_splits(self, state: State) -> None:
        """Apply the operator splits the log holds but the read model missed (a fault between a split's
        append and its save), with the re-decisions that follow them.

        Under the lock nothing happens between a split's append and its save, so the state loaded from the
        last commit is the one the split was made against; message decisions are re-derived by re-deciding,
        but a split is not, so it is taken from the log. A split of a profile erased since is left alone.
        """
        # Nearly always there is no split after the checkpoint: look for splits alone first (cheap).
        after, splits = self._position, dict[str, tuple[int, Split]]()
        while page := await self._store.read_all(after, limit=self._batch_size, filter=SPLITS):
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
        while page := await self._store.read_all(after, limit=self._batch_size, filter=DECISIONS):
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
        await asyncio.to_thread(self._save_state, state, self._position)

    def _schema_outdated(self) -> bool:
        with self._engine.connect() as connection:
            return schema_outdated(connection)

    def _load(self) -> tuple[State, int]:
        metadata.create_all(self._engine)
        with self._engine.begin() as connection:
            if connection.scalar(select(schema.c.fingerprint)) is None:
                stamp_schema(connection)  # a fresh database
        position = self._load_checkpoint()
        with Session(self._engine) as session:
            return load_state(session), position

    def _load_checkpoint(self) -> int:
        checkpoint_metadata.create_all(self._engine)
        with Session(self._engine) as session:
            position = session.scalar(select(checkpoints.c.position).where(checkpoints.c.name == CHECKPOINT))
        return START if position is None else int(position)

    def _save(self, position: int) -> None:
        assert self._state is not None
        self._save_state(self._state, position)

    def _saved_decisions(self, ids: Sequence[str]) -> set[str]:
        with Session(self._engine) as session:
            return saved_decision_ids(session, ids)

    def _save_state(self, state: State, position: int) -> None:
        with Session(self._engine) as session, session.begin():
            save_state(session, state)
            session.execute(delete(checkpoints).where(checkpoints.c.name == CHECKPOINT))
            session.execute(insert(checkpoints).values(name=CHECKPOINT, position=position))

    def _reset(self) -> None:
        with self._engine.begin() as connection:
            # Every identity table, this code's and any an older layout left (their names share the prefix).
            for name in inspect(connection).get_table_names():
                if name.startswith("identity_"):
                    connection.execute(
                        text(f"DROP TABLE {connection.dialect.identifier_preparer.quote(name)}")
                    )
        metadata.create_all(self._engine)
        with self._engine.begin() as connection:
            stamp_schema(connection)
        checkpoint_metadata.create_all(self._engine)


def _type_of(graph: Graph, types: Mapping[str, str], subject: str) -> str | None:
    link = graph.links.get(subject)
    return link.type if link is not None else types.get(subject)


def _decode(
    page: Sequence[RecordedEvent], opened: Sequence[Opened | None] | None
) -> list[tuple[RecordedEvent, DomainEvent | Opened]]:
    """Each event decoded, or as the worker opened it (`opened`: one entry per message of the page)."""
    if opened is None:
        return [(recorded, codec.decode(recorded)) for recorded in page]
    messages = iter(opened)
    decoded: list[tuple[RecordedEvent, DomainEvent | Opened]] = []
    for recorded in page:
        found = next(messages) if recorded.type == MessageCollected.type_name else None
        decoded.append((recorded, codec.decode(recorded) if found is None else found))
    return decoded


@dataclass(frozen=True)
class _Read:
    """A page read after `after` (with the head before it), and the worker opening its messages."""

    after: int
    head: int
    page: Sequence[RecordedEvent]
    generation: int
    opening: Future[list[Opened | None]] | None


@dataclass(frozen=True)
class _Opened:
    """A page's messages as the worker opened them, under the resolver's `generation` of rules and keys."""

    generation: int
    messages: list[Opened | None]


def _runs(decided: Iterable[Decision], meta: EventMetadata) -> list[tuple[str, list[NewEvent]]]:
    """One message's decisions as appends: consecutive ones for one stream share a part.

    Parts never span two messages, so a re-run after a crash forms exactly the same parts whatever its batch
    boundaries, and each part is recognised as already stored (idempotency by event id).
    """
    runs: list[tuple[str, list[NewEvent]]] = []
    for stream, event in codec.new_events(decided, meta):
        if not runs or runs[-1][0] != stream:
            runs.append((stream, []))
        runs[-1][1].append(event)
    return runs


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
            event = from_recorded(recorded)
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
                event = codec.decode(recorded)
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
        elif frontier is None or recorded.global_position <= frontier:
            decoded.append((recorded, codec.decode(recorded)))
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
