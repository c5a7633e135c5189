"""The resync benchmark's table: each way of catching up, with time and bytes, beside rsync.

Rows are collected by bench/test_bench_resync.py; conftest.py prints the table at the end of the
session and, after a timed run (`make bench`), writes it to bench/RESYNC.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from report import machine


@dataclass(frozen=True)
class ResyncRow:
    """One way of bringing a copy up to date, measured once."""

    key: str  # "full-empty", "rsync-full", ...
    title: str
    seconds: float
    data_bytes: int  # file data sent (for rsync: its "Total bytes sent")
    wire_bytes: int | None  # everything that crossed the replication link (None for rsync: same as data)
    mode: str  # the mode the mirror chose (or "rsync")


@dataclass
class ResyncResults:
    """What the session measured: the rows, and what the tree and the change were."""

    rows: list[ResyncRow] = field(default_factory=list)
    tree: str = "?"
    change: str = "?"


def _mib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / (1 << 20):,.1f} MiB"


def render(results: ResyncResults, *, timed: bool) -> str:
    """The Markdown table of one session."""
    rows, tree, change = results.rows, results.tree, results.change
    lines = [
        "## Resync benchmark",
        "",
        f"Measured on: {machine()}.",
        f"Tree: {tree}. Change: {change}.",
        "The mirror's figures run from the command on node2 to node2 SECOND green (every byte on its disk,",
        "copies identical); rsync copies between two directories of node1's disk (no network, no FUSE).",
        "",
    ]
    if not timed:
        lines += ["**Short mode (`--benchmark-disable`): tiny sizes, these figures mean nothing.**", ""]
    lines += [
        "| catching up | mode chosen | time | data sent | on the wire |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.title} | {r.mode} | {r.seconds:.2f} s | {_mib(r.data_bytes)} | {_mib(r.wire_bytes)} |")
    return "\n".join(lines) + "\n"
