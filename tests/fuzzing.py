"""What every fuzz test shares: how many cases it tries, and a tally of what it saw.

`make test` runs each fuzz test with a small, bounded number of cases; `make fuzz` sets `CDP_TEST_FUZZ_EXAMPLES`
to try many more. Whatever the count, the tally (cases tried per test, answers seen per status class) is printed
at the end of the run, so a note can quote what was tried.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES_VARIABLE = "CDP_TEST_FUZZ_EXAMPLES"

TALLY: defaultdict[str, Counter[str]] = defaultdict(Counter)
"""Per fuzz target (e.g. `http /v1/batch`, `grpc IdentityService`), how often each answer class was seen."""


def examples(default: int) -> int:
    """The number of cases a fuzz test tries: `default` in `make test`, `CDP_TEST_FUZZ_EXAMPLES` when set."""
    raw = os.environ.get(FUZZ_EXAMPLES_VARIABLE, "").strip()
    return int(raw) if raw else default


def fuzz_settings(default: int) -> settings:
    """Hypothesis settings for a fuzz test against real servers: bounded count, no deadline (servers vary)."""
    return settings(
        max_examples=examples(default),
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def record(target: str, answer: str) -> None:
    """Count one answer (`"200"`, `"4xx"`, `"INVALID_ARGUMENT"`…) seen by a fuzz case against `target`."""
    TALLY[target][answer] += 1


def summary() -> list[str]:
    """The tally as lines: one per target, its cases and answer classes."""
    lines = []
    for target in sorted(TALLY):
        seen = TALLY[target]
        classes = ", ".join(f"{answer} {count}" for answer, count in sorted(seen.items()))
        lines.append(f"{target}: {sum(seen.values())} cases ({classes})")
    return lines
