"""Benchmarks run with `make bench` (timed) and, in CI, once each without timing (`--benchmark-disable`).

The replication benchmark (test_bench_replication.py) adds rows to the session's table; at the end of
the session the table is printed, and after a timed run covering every target it is written to
bench/RESULTS.md for the README (only when every benchmark passed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from report import Row, complete, render
from resync_report import ResyncResults
from resync_report import render as render_resync

RESULTS_MD = Path(__file__).with_name("RESULTS.md")
RESYNC_MD = Path(__file__).with_name("RESYNC.md")
_ROWS = pytest.StashKey[list[Row]]()
_RESYNC = pytest.StashKey[ResyncResults]()


@pytest.fixture(scope="session")
def bench_rows(request) -> list[Row]:
    """The session's replication measurements, rendered by pytest_terminal_summary."""
    return request.config.stash.setdefault(_ROWS, [])


@pytest.fixture(scope="session")
def resync_results(request) -> ResyncResults:
    """The session's resync measurements, rendered by pytest_terminal_summary."""
    return request.config.stash.setdefault(_RESYNC, ResyncResults())


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    _resync_summary(terminalreporter, exitstatus, config)
    rows = config.stash.get(_ROWS, [])
    if not rows:
        return
    timed = not config.getoption("benchmark_disable")
    text = render(rows, timed=timed)
    terminalreporter.section("replication benchmark")
    terminalreporter.write(text)
    if not timed:
        return
    if exitstatus == 0 and complete(rows):
        RESULTS_MD.write_text(text)
        terminalreporter.write_line(f"written to {RESULTS_MD}")
    else:
        terminalreporter.write_line(f"a benchmark failed or a target is missing: {RESULTS_MD} left as it was")


def _resync_summary(terminalreporter, exitstatus, config) -> None:
    results = config.stash.get(_RESYNC, None)
    if results is None or not results.rows:
        return
    timed = not config.getoption("benchmark_disable")
    text = render_resync(results, timed=timed)
    terminalreporter.section("resync benchmark")
    terminalreporter.write(text)
    if timed and exitstatus == 0 and len(results.rows) == 6:
        RESYNC_MD.write_text(text)
        terminalreporter.write_line(f"written to {RESYNC_MD}")
