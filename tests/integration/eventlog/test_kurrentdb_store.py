"""The KurrentDB adapter against the event store contract; runs only when CDP_TEST_KURRENTDB names a server."""

from __future__ import annotations

import pytest

from cdp.eventlog import EventStore, open_event_store
from cdp.eventlog.kurrentdb import KurrentDBEventStore

from .contract import EventStoreContract

pytestmark = pytest.mark.kurrentdb


class TestKurrentDBEventStore(EventStoreContract):
    """Every contract test against a live KurrentDB node (tests isolate by stream category)."""

    log_is_fresh_per_test = False
    refuses_partial_overlap = False
    edits_single_events = False
    reclaims = False

    @pytest.fixture(autouse=True)
    def _server(self, kurrentdb_url: str) -> None:
        """The server named by CDP_TEST_KURRENTDB (the class is skipped without one)."""
        self.url = kurrentdb_url

    async def open_store(self) -> EventStore:
        """A new client on the server."""
        return open_event_store(self.url)


def test_the_adapter_is_chosen_by_url_without_connecting() -> None:
    store = open_event_store("kurrentdb://localhost:2113?tls=false")
    assert isinstance(store, KurrentDBEventStore)
