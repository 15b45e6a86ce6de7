"""The reactor contract on the embedded default: a SQLite log and a SQLite read model, each a real file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdp.eventlog import EventStore, open_event_store
from tests.integration.reactor.contract import ReactorContract


class TestSQLiteReactor(ReactorContract):
    @pytest.fixture(autouse=True)
    def _files(self, tmp_path: Path) -> None:
        self.directory = tmp_path

    async def open_store(self) -> EventStore:
        return open_event_store(self.store_url())

    def store_url(self) -> str:
        return f"sqlite:///{self.directory / 'events.db'}"

    def read_model_url(self) -> str:
        return f"sqlite:///{self.directory / 'readmodel' / 'receipts.db'}"
