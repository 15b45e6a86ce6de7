"""The resolver: identity's resolution policy on the shared reactor, with the operator's splits and rebuilds.

The reactor (`cdp.reactor`) follows the log and runs `Resolution` over each batch; the operator's splits and a
rebuild of the read model hold the reactor's batches off while they work on the same state, so every decision
reaches the log in the order it was applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import Engine, select

from cdp.eventlog.port import EventStore
from cdp.keyring import Keyring
from cdp.reactor import Reactor
from cdp.sqlengine import read_only
from services.identity.domain.decisions import Decision, Split
from services.identity.domain.identifiers import Hasher
from services.identity.readmodel import State, dumps, metadata
from services.identity.resolution import Resolution


class Resolver:
    """Owns the identity read model: decides live (on its reactor), splits on request, rebuilds from the log."""

    def __init__(
        self,
        store: EventStore,
        keyring: Keyring,
        hasher: Hasher,
        engine: Engine,
        *,
        batch_size: int = 1000,
    ) -> None:
        self.resolution = Resolution(store, keyring, hasher, engine)
        self.reactor = Reactor(store, self.resolution, engine, batch_size=batch_size)
        self._reader = read_only(engine)

    @property
    def position(self) -> int:
        """The checkpoint: global position of the last event processed."""
        return self.reactor.position

    async def run(self) -> None:
        """Catch up, then follow new events until stopped (the reactor retries transient faults)."""
        await self.reactor.run()

    async def catch_up(self) -> int:
        """Process everything up to the head of the log; returns the checkpoint."""
        return await self.reactor.catch_up()

    async def wait_for(self, position: int, within: float = 10.0) -> None:
        """Return once the resolver has processed the log up to `position` (TimeoutError after `within` s)."""
        await self.reactor.wait_for(position, within)

    async def state(self) -> State:
        """The live state (loaded on first use)."""
        async with self.reactor.exclusive():
            return self._state()

    async def split(self, build: Callable[[State], Split], actor: str) -> tuple[Split, list[Decision]]:
        """Apply an operator's split built against the current state, then what follows it (`Splitter.split`).

        Returns the split and the rebuild's decisions, which follow the split in the log.
        """
        async with self.reactor.exclusive():
            state = self._state()
            decision = build(state)
            try:
                made = await self.resolution.splitter.split(state, decision, self.reactor.position, actor)
            except BaseException:
                self.reactor.invalidate()  # the state ran ahead of the read model: reload it
                raise
            return decision, made

    async def rebuild(self) -> int:
        """Drop the read model and replay it from the log: decisions for the graph, messages for history."""
        async with self.reactor.exclusive():
            frontier = self.reactor.position
            try:
                await self.resolution.rebuild(frontier)
            except BaseException:
                self.reactor.invalidate()
                raise
            return frontier

    async def snapshot(self) -> dict[str, list[str]]:
        """Every read-model row as sorted JSON, per table (to compare a rebuild with the live model)."""

        def read() -> dict[str, list[str]]:
            with self._reader.connect() as connection:
                return {
                    table.name: sorted(dumps(dict(row._mapping)) for row in connection.execute(select(table)))
                    for table in metadata.sorted_tables
                }

        async with self.reactor.exclusive():
            return await asyncio.to_thread(read)

    def _state(self) -> State:
        state = self.resolution.state
        assert state is not None, "the reactor loaded the resolution"
        return state
