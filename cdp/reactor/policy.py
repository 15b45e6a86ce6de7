"""What a service plugs into a reactor: the events it follows and how it reacts to a batch of them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import MetaData
from sqlalchemy.orm import Session

from cdp.eventlog.port import ALL, EventFilter, RecordedEvent, StreamAppend

REACTION_NAMESPACE = uuid.UUID("0d6f1a52-3c8e-4f0b-9b7a-5e2c4d8a1f03")


def derived_id(source: uuid.UUID | str, *parts: str) -> uuid.UUID:
    """A deterministic event id for a reaction to `source` (an event id): the same inputs, the same id.

    Reacting twice to one event (a re-run after a crash between the append and the checkpoint) then appends
    nothing twice: the log refuses a stored id and answers the original position.
    """
    return uuid.uuid5(REACTION_NAMESPACE, ":".join((str(source), *parts)))


class Policy:
    """A reactor's decisions: subclass, name it, choose its events, and implement `decide`.

    The reactor calls, for every batch of events matching `filter` in global order: `prepare` (I/O allowed, may
    run a page ahead of the batch being decided), then `decide` in a worker thread inside the read-model
    transaction, appends what `decide` returned, and commits the transaction with the new position. `decide`
    must be deterministic given the committed read model and the batch: after a crash it runs again on the
    same events and must return the same events with the same ids (`derived_id`). It may read and write the
    read model through `session` but must not commit, nor do any other I/O.
    """

    name: str
    """Unique per read-model database: names the checkpoint row and the `parked-<name>` stream."""
    filter: EventFilter = ALL
    """The events the reactor reads; the others are never fetched."""
    metadata: MetaData | None = None
    """Tables the reactor creates before the first batch and drops on `Reactor.rebuild` (None: the policy
    manages its own tables in `load`)."""

    async def load(self, position: int) -> None:
        """Before the first batch, and again after a failed one: (re)load in-memory state from the read model,
        which is committed up to `position`."""

    async def prepare(self, events: Sequence[RecordedEvent], *, backlog: bool) -> Any:
        """Work worth doing before the batch's turn, off the event loop if heavy (decoding, key fetches); passed
        to `decide`. `backlog`: the reactor is catching up by full pages. It must not depend on what the
        batches before it decide, or must detect that it is stale (in `decide`)."""
        return None

    def decide(
        self, session: Session, events: Sequence[RecordedEvent], prepared: Any
    ) -> Sequence[StreamAppend]:
        """React to a batch: write the read model through `session` and return the events to append."""
        raise NotImplementedError

    async def committed(self) -> None:
        """After each batch the reactor committed (the checkpoint moved with it): finish what may only follow a
        commit, such as confirming a purge (`cdp.reactor.purge`). Called often: keep it cheap when idle."""

    def reset(self) -> None:
        """A batch failed and its transaction rolled back: forget whatever `decide` changed in memory."""

    async def close(self) -> None:
        """The reactor stopped: release helpers (worker processes, caches)."""


class Projection(Protocol):
    """A read model with nothing to append: its tables, the events it needs, and how a batch changes the tables."""

    @property
    def name(self) -> str:
        """Unique within the database; names the checkpoint row."""

    @property
    def metadata(self) -> MetaData:
        """The read model's tables (dropped and recreated by `rebuild`)."""

    @property
    def filter(self) -> EventFilter:
        """Which events to read; the others are never fetched."""

    def apply(self, session: Session, events: Sequence[RecordedEvent]) -> None:
        """Update the tables for these events, in the caller's transaction; must not commit."""


@runtime_checkable
class Committing(Protocol):
    """A projection that also finishes work after each commit (and at start-up, what a crash left)."""

    async def committed(self) -> None:
        """After each committed batch, and when the reactor (re)loads."""


class Projecting(Policy):
    """A projection run as a policy that appends nothing (its optional `committed` hook passed on)."""

    def __init__(self, projection: Projection) -> None:
        self.projection = projection
        self.name = projection.name
        self.filter = projection.filter
        self.metadata = projection.metadata

    def decide(
        self, session: Session, events: Sequence[RecordedEvent], prepared: Any
    ) -> Sequence[StreamAppend]:
        """Apply the batch to the tables."""
        self.projection.apply(session, events)
        return ()

    async def load(self, position: int) -> None:
        """Finish what the projection left unfinished after its last commit (a crash before `committed`)."""
        await self.committed()

    async def committed(self) -> None:
        """The projection's `committed` hook, if it has one."""
        if isinstance(self.projection, Committing):
            await self.projection.committed()


def as_policy(reactor_of: Policy | Projection) -> Policy:
    """A policy as it is, a projection wrapped as one."""
    return reactor_of if isinstance(reactor_of, Policy) else Projecting(reactor_of)
