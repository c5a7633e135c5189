"""mirrorctl commands about replicated data (SPEC §7, §8): resync, verify, splitbrain list.

`cli.py` registers them with its `-m/-i` options and its way of reaching the daemon (this module
must not import it: it may run as `python -m mirrorcore.cli`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from mirrorcore import control
from mirrorcore.cli_watch import ModuleOptions
from mirrorcore.rfsctl import VERIFY_TIMEOUT
from mirrorcore.salvage import list_salvages

#: `send(module, cmd, initiator, args, timeout)`: the daemon's reply (raises a ClickException when unreachable).
Send = Callable[[str | None, str, str | None, dict[str, Any], float], control.Reply]

#: `state_dir(module)`: (the module named with -m or the only one configured, its state directory).
StateDir = Callable[[str | None], tuple[str, Path]]

#: Differences printed per directory (the daemon's log and `--json` have them all).
SHOWN = 50

out = Console(highlight=False)


def register(main: click.Group, module_options: ModuleOptions, send: Send, state_dir: StateDir) -> None:
    """Adds `resync`, `verify` and `splitbrain` to `main`."""

    @main.command("resync")
    @module_options
    @click.argument("action", type=click.Choice(["pause", "resume", "boost", "unboost"]))
    def resync(module: str | None, initiator: str | None, action: str) -> None:
        """Pause, resume or boost (ignore reiallowedbw) the resync under way; run on the primary."""
        reply = send(module, "resync", initiator, {"action": action}, 30.0)
        if not reply.ok:
            raise click.ClickException(reply.message)
        out.print(reply.message)

    @main.command("verify")
    @module_options
    @click.option("--repair", is_flag=True, help="Resync exactly what differs.")
    @click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
    def verify(module: str | None, initiator: str | None, repair: bool, as_json: bool) -> None:
        """Compare both copies online by block checksums; exit 0 when they match (after --repair: now match)."""
        reply = send(module, "verify", initiator, {"repair": repair}, VERIFY_TIMEOUT + 60)
        results = reply.status.get("verify")
        if results is None:  # refused before verifying (not the primary, no replication…)
            raise click.ClickException(reply.message)
        if as_json:
            out.print_json(data=results)
        else:
            for result in results:
                _print_result(result)
        sys.exit(0 if reply.ok else 1)

    @main.group("splitbrain")
    def splitbrain() -> None:
        """What split brains left behind."""

    @splitbrain.command("list")
    @module_options
    def splitbrain_list(module: str | None, initiator: str | None) -> None:
        """List the salvages: files a node wrote alone during a split brain, saved before its resync."""
        name, dir = state_dir(module)
        base = dir / "salvage"
        found = list_salvages(base)
        if not found:
            out.print(f"no split-brain salvage for module {name} on this node ({base})")
            return
        for s in found:
            out.print(f"{s.at}  {s.files} files, {s.bytes} bytes saved, {s.removed} removed  {s.path}", markup=False)
            out.print(f"    {s.reason}", style="dim", markup=False)


def _print_result(result: dict[str, Any]) -> None:
    dir = result.get("dir", "?")
    if result.get("error"):
        out.print(f"[red]{dir}: not verified[/]: {result['error']}")
        return
    checked = f"{result.get('files_checked', 0)} files, {result.get('bytes_checked', 0)} bytes checked"
    if result.get("matched"):
        out.print(f"[green]{dir}: copies match[/] ({checked}, {result.get('seconds', '?')} s)")
        return
    diffs = result.get("differences") or []
    total = result.get("total", len(diffs))
    out.print(f"[red]{dir}: {total} differences[/] ({checked})")
    for d in diffs[:SHOWN]:
        ranges = ", ".join(f"{off}+{length}" for off, length in d.get("ranges") or [])
        where = f"  bytes {ranges}" if ranges else ""
        out.print(f"  {d.get('what', '?'):<8} {d.get('path', '?')}{where}", markup=False)
    if total > min(len(diffs), SHOWN):
        out.print(f"  … {total - min(len(diffs), SHOWN)} more (see `mirrorctl verify --json` or the module log)")
    if result.get("repaired"):
        left = result.get("remaining")
        out.print("[green]  repaired[/]" if not left else f"[red]  repaired, but {left} still differ[/]")
