"""The replication benchmark's table: each workload x target, with the ratio to the raw disk.

Rows are collected by bench/test_bench_replication.py during the session; conftest.py prints the
table at the end of the session and, after a timed run (`make bench`), writes it to bench/RESULTS.md.
"""

from __future__ import annotations

import datetime
import os
import platform
from dataclasses import dataclass

TARGETS = ("raw", "passthrough", "sync", "semisync")
TARGET_TITLES = {
    "raw": "raw disk",
    "passthrough": "FUSE passthrough",
    "sync": 'mirror sync (`async="none"`)',
    "semisync": 'mirror semi-sync (`async="second"`)',
}
# Issue 3's reference: fio, 4 KiB random writes with fsync after each, GlusterFS replica 2 over FUSE here.
GLUSTER_RANDSYNC_IOPS = 630


@dataclass(frozen=True)
class Row:
    """One workload measured on one target."""

    workload: str  # key, e.g. "randsync"
    title: str  # what the workload does, for the table
    target: str  # one of TARGETS
    value: float  # the figure, in `unit`
    unit: str  # "MiB/s", "IOPS" or "files/s"
    seconds: float  # the measured phase, as timed inside the workload
    rss_mib: dict[str, float]  # resident memory of the replication processes after the workload


def _fmt(value: float, unit: str) -> str:
    if value >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:,.1f} {unit}"


def _find(rows: list[Row], workload: str, target: str) -> Row | None:
    for row in rows:
        if row.workload == workload and row.target == target:
            return row
    return None


def complete(rows: list[Row]) -> bool:
    """Every workload seen was measured on every target."""
    return all(_find(rows, w, t) is not None for w in {r.workload for r in rows} for t in TARGETS)


def machine() -> str:
    """One line on the machine: CPU, cores, memory, kernel, file system under the lab."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    fs = "?"
    try:
        best = ""
        with open("/proc/mounts") as f:
            for line in f:
                _dev, point, kind, *_ = line.split()
                if "/var/lib/mirrorcore-lab".startswith(point.rstrip("/") + "/") and len(point) > len(best):
                    best, fs = point, kind
                elif point == "/" and not best:
                    fs = kind
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, Linux {platform.release()}, "
        f"{fs} on one virtual disk shared by both nodes, Python {platform.python_version()}"
    )


def render(rows: list[Row], *, timed: bool) -> str:
    """The Markdown table (figure and ratio to raw disk per cell), then the targets' ratios and memory."""
    workloads: dict[str, Row] = {}
    for row in rows:
        workloads.setdefault(row.workload, row)
    lines = [
        "## Replication benchmark",
        "",
        f"Measured {datetime.date.today().isoformat()} on: {machine()}.",
        "",
        "Each figure is timed inside the workload (Python, in lab node1); the ratio in brackets is to the raw disk.",
        "Both nodes share one disk here, so the two copies of a mirror can reach at best about half of the raw",
        "write bandwidth (0.50x): that is the physical limit to compare the mirrored columns with.",
    ]
    if not timed:
        lines += ["", "**Short mode (`--benchmark-disable`): tiny sizes, these figures mean nothing.**"]
    lines += ["", "| workload | " + " | ".join(TARGET_TITLES[t] for t in TARGETS) + " |"]
    lines.append("|---|" + "---:|" * len(TARGETS))
    for key, first in workloads.items():
        raw = _find(rows, key, "raw")
        cells = []
        for target in TARGETS:
            row = _find(rows, key, target)
            if row is None:
                cells.append("-")
                continue
            ratio = f" ({row.value / raw.value:.2f}x)" if raw is not None and raw.value > 0 else ""
            cells.append(_fmt(row.value, row.unit) + ratio)
        lines.append(f"| {first.title} | " + " | ".join(cells) + " |")
    checks = _checks(rows)
    if checks:
        lines += ["", "Against the targets of issue 3:", "", *checks]
    memory = _memory(rows)
    if memory:
        lines += ["", "Resident memory of the replication processes after each workload (MiB):", "", *memory]
    return "\n".join(lines) + "\n"


def _ratio(rows: list[Row], workload: str, target: str, base_workload: str, base_target: str) -> float | None:
    row, base = _find(rows, workload, target), _find(rows, base_workload, base_target)
    if row is None or base is None or base.value <= 0:
        return None
    return row.value / base.value


def _checks(rows: list[Row]) -> list[str]:
    out = []

    def add(text: str, ratio: float | None, goal: float, *, strict: bool = False) -> None:
        if ratio is not None:
            met = ratio > goal if strict else ratio >= goal
            out.append(
                f"- {text}: {ratio:.2f} (target {'>' if strict else '>='} {goal:.2f}: {'met' if met else 'NOT met'})"
            )

    seq = _ratio(rows, "seq", "sync", "seq", "raw")
    add("sequential 1 MiB, sync vs half the raw disk", None if seq is None else seq * 2, 0.85)
    add("random 4 KiB + fsync, sync vs passthrough", _ratio(rows, "randsync", "sync", "randsync", "passthrough"), 0.80)
    add(
        "random 4 KiB + fsync, semi-sync vs passthrough",
        _ratio(rows, "randsync", "semisync", "randsync", "passthrough"),
        0.90,
    )
    for target in ("sync", "semisync"):
        row = _find(rows, "randsync", target)
        add(
            f"random 4 KiB + fsync, {TARGET_TITLES[target].split(' (')[0]} vs 4x GlusterFS replica 2 "
            f"(4 x {GLUSTER_RANDSYNC_IOPS} IOPS)",
            None if row is None else row.value / (4 * GLUSTER_RANDSYNC_IOPS),
            1.0,
        )
    for target in ("sync", "semisync"):
        add(
            f"random 4 KiB buffered, 1 writer, {TARGET_TITLES[target].split(' (')[0]} vs passthrough",
            _ratio(rows, "randbuf1", target, "randbuf1", "passthrough"),
            0.90,
        )
    for target in ("sync", "semisync"):
        add(
            f"random 4 KiB buffered, 4 writers vs 1 writer, {TARGET_TITLES[target].split(' (')[0]}",
            _ratio(rows, "randbuf4", target, "randbuf1", target),
            1.0,
            strict=True,
        )
    return out


def _memory(rows: list[Row]) -> list[str]:
    names = sorted({name for row in rows for name in row.rss_mib})
    if not names:
        return []
    lines = ["| workload | target | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for row in rows:
        if row.rss_mib:
            cells = [f"{row.rss_mib[n]:.0f}" if n in row.rss_mib else "-" for n in names]
            lines.append(f"| {row.workload} | {row.target} | " + " | ".join(cells) + " |")
    return lines
