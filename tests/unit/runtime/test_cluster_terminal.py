"""What the terminal that ran `cdp up` / `cdp status` shows: readable log reasons, warnings, the status table."""

import json

import pytest

from cdp.cli import print_states, unknown_settings
from cdp.runtime.cluster import ServiceState
from cdp.runtime.logtail import LogLine, readable, reason
from cdp.runtime.settings import Settings

BIND_FAILURE = """\
{"variables": ["CDP_TYPO"], "event": "unknown_settings_ignored", "level": "warning", "timestamp": "2026-12-02T17:10:17Z"}
E1202 17:06:29.204554   14941 add_port.cc:83] Failed to add port to server: Address already in use
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/work/cdp/runtime/server.py", line 98, in start
    self.port = self.server.add_insecure_port(f"{self.settings.host}:{self._requested_port}")
                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
RuntimeError: Failed to bind to address 127.0.0.1:59207
"""

CHAINED = """\
Traceback (most recent call last):
  File "x.py", line 1, in connect
sqlite3.OperationalError: unable to open database file

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "y.py", line 2, in build
sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) unable to open database file
(Background on this error at: https://sqlalche.me/e/21/e3q8)
"""


def record(**fields: object) -> str:
    return json.dumps({"timestamp": "2026-12-02T17:10:17Z", **fields})


def test_json_lines_show_their_event_and_error_or_exception_not_the_json() -> None:
    lines = [
        record(event="server_started", level="info", address="127.0.0.1:1", services=["a"]),
        record(event="resolver_failed", level="error", error="the log is gone"),
        record(
            event="background_task_failed",
            level="error",
            exception='Traceback (most recent call last):\n  File "a.py"\nOSError: [Errno 98] address already in use\n',
        ),
    ]
    assert readable(lines) == [
        LogLine("info server_started", error=False),
        LogLine("error resolver_failed: the log is gone", error=True),
        LogLine("error background_task_failed: OSError: [Errno 98] address already in use", error=True),
    ]


def test_a_traceback_shows_only_its_exception_line_and_grpc_core_lines_lose_their_prefix() -> None:
    assert readable(BIND_FAILURE.splitlines()) == [
        LogLine("warning unknown_settings_ignored", error=False),
        LogLine("Failed to add port to server: Address already in use", error=True),
        LogLine("RuntimeError: Failed to bind to address 127.0.0.1:59207", error=True),
    ]


def test_the_reason_of_a_chained_failure_is_its_last_exception_not_the_footnote() -> None:
    shown = readable(CHAINED.splitlines())
    assert [line.text for line in shown] == [
        "sqlite3.OperationalError: unable to open database file",
        "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) unable to open database file",
        "(Background on this error at: https://sqlalche.me/e/21/e3q8)",
    ]
    assert reason(shown) == shown[1].text


def test_a_service_killed_without_a_word_says_so_with_its_last_line() -> None:
    shown = readable(
        [record(event="server_started", level="info"), record(event="ingest_counts", level="info")]
    )
    assert reason(shown) == "no error logged (killed?); last: info ingest_counts"
    assert reason([]) == "nothing logged"


def test_an_unknown_variable_is_a_warning_that_suggests_the_setting_it_resembles() -> None:
    settings = Settings.from_env(
        {"CDP_SEGMENT_PORT": "1", "CDP_DATADIR": "x", "CDP_FROBNICATE": "1", "CDP_TEST_POSTGRES": "p"}
    )
    assert unknown_settings(settings) == [
        "CDP_DATADIR is not a setting and is ignored (did you mean CDP_DATA_DIR?)",
        "CDP_FROBNICATE is not a setting and is ignored",
        "CDP_SEGMENT_PORT is not a setting and is ignored (did you mean CDP_SEGMENTS_PORT?)",
    ]
    assert unknown_settings(Settings.from_env({"CDP_HOST": "127.0.0.1"})) == []


def test_the_status_table_has_one_row_per_server_and_the_reason_beside_a_dead_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_states(
        [
            ServiceState("ingest", 41, "127.0.0.1:50051", "SERVING"),
            ServiceState("segments", 42, "127.0.0.1:50053", "DEAD", "no error logged (killed?)"),
            ServiceState("governance", None, "127.0.0.1:50055", "STOPPED"),
        ]
    )
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["service", "pid", "address", "health", "detail"]
    assert rows[1].split() == ["ingest", "41", "127.0.0.1:50051", "SERVING"]
    assert rows[2].split(maxsplit=4) == [
        "segments",
        "42",
        "127.0.0.1:50053",
        "DEAD",
        "no error logged (killed?)",
    ]
    assert rows[3].split() == ["governance", "-", "127.0.0.1:50055", "STOPPED"]
