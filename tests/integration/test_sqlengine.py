"""Several connections opening a new SQLite file at once all end up in WAL mode, none fails."""

import sqlite3
import threading
from pathlib import Path

from cdp.sqlengine import enable_wal


def open_at_once(path: Path, connections: int) -> list[BaseException]:
    barrier = threading.Barrier(connections)
    failures: list[BaseException] = []

    def open_one() -> None:
        connection = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        try:
            barrier.wait()
            enable_wal(connection, timeout=5)
            connection.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
        except BaseException as error:
            failures.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=open_one) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def test_concurrent_first_opens_all_switch_to_wal(tmp_path: Path) -> None:
    for attempt in range(30):
        path = tmp_path / f"new-{attempt}.db"
        assert open_at_once(path, connections=6) == []
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
