"""The end of a service's log, as a person wants to read it on the terminal that ran `make up`.

A service's log holds structlog's JSON lines and, when it dies before or outside structlog, whatever reached
stderr: a Python traceback, a line from gRPC's C core. What says why is the `event` with its `error` or
`exception`, and the last line of a traceback; the frames and timestamps in between are noise here (the log file
keeps them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TAIL_BYTES = 64 * 1024

_CORE_PREFIX = re.compile(
    r"^([EWIF])\d{4} [\d:.]+\s+\d+ [\w./-]+:\d+\] "
)  # gRPC core: E1202 17:06:29.2 14941 x.cc:83]
_CHAINING = ("The above exception was the direct cause", "During handling of the above exception")
_ERROR_LEVELS = {"error", "critical", "exception", "fatal"}


@dataclass(frozen=True)
class LogLine:
    """One log line made readable, and whether it reports an error."""

    text: str
    error: bool


def last_lines(path: Path, since: int = 0, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The lines of `path` written after byte `since`, at most the last `max_bytes` of them (a log grows)."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, 2)
            start = max(since, size - max_bytes)
            log.seek(start)
            data = log.read()
    except OSError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[1:] if start > since else lines  # the first line was cut in the middle


def readable(lines: Iterable[str]) -> list[LogLine]:
    """JSON lines as `level event: error`, a traceback as its exception line, gRPC core lines unprefixed."""
    shown: list[LogLine] = []
    in_traceback = False
    for raw in lines:
        line = raw.rstrip()
        record = _json(line)
        if record is not None:
            shown.append(_from_record(record))
            in_traceback = False
        elif line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif not line or line[0].isspace() or line.startswith(_CHAINING):
            continue  # frames, source lines and carets of a traceback
        else:
            shown.append(_from_text(line, ends_traceback=in_traceback))
            in_traceback = False
    return shown


def reason(lines: list[LogLine]) -> str:
    """The line that says why a service ended: its last error, else its last line (killed without a word)."""
    errors = [line for line in lines if line.error]
    if errors:
        return errors[-1].text
    if lines:
        return f"no error logged (killed?); last: {lines[-1].text}"
    return "nothing logged"


def _json(line: str) -> dict[str, object] | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _from_record(record: dict[str, object]) -> LogLine:
    level = str(record.get("level", ""))
    text = f"{level} {record.get('event', '')}".strip()
    if record.get("error"):
        text += f": {record['error']}"
    exception = str(record.get("exception") or "").strip()
    if exception:
        text += f": {exception.splitlines()[-1].strip()}"
    return LogLine(text, level in _ERROR_LEVELS or bool(exception))


def _from_text(line: str, *, ends_traceback: bool) -> LogLine:
    core = _CORE_PREFIX.match(line)
    if core:
        return LogLine(line[core.end() :], core.group(1) in "EF")
    return LogLine(line, ends_traceback)
