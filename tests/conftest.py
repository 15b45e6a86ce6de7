"""Hooks for the whole test run."""

from __future__ import annotations

from _pytest.terminal import TerminalReporter

from tests.fuzzing import summary


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """Print what the fuzz tests tried, so `make fuzz` (and `make test`) output carries the counts."""
    lines = summary()
    if lines:
        terminalreporter.section("fuzz cases tried")
        for line in lines:
            terminalreporter.write_line(line)
