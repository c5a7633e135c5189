"""`mirrorctl demo`: a two-node cluster on this machine, and a narrated tour of it.

``mirrorctl demo`` runs the tour: bring the lab up, use the application through the
virtual IP, kill the application (errd restarts it), crash the primary, watch the
secondary take over, bring the node back (its resync's mode, progress and figures are
shown), swap back, split the network and let the witness decide, tear everything down.
Each step prints what it verified; the command exits non-zero if any check failed. The
subcommands drive the same lab by hand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console

from mirrorcore.demoset import VIP, WITNESS, DemoCluster, DemoSettings
from mirrorcore.lab import Lab

LAB_NAME = "mcdemo"
out = Console(highlight=False, soft_wrap=True)


def _lab() -> Lab:
    return Lab(LAB_NAME)


def _attached() -> Lab:
    try:
        return Lab.existing(LAB_NAME)
    except Exception as exc:
        raise click.ClickException(f"the demo lab is not up ({exc}); run `mirrorctl demo up` first") from None


@click.group(invoke_without_command=True)
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the narrated tour (no subcommand), or drive the demo lab by hand."""
    if ctx.invoked_subcommand is None:
        sys.exit(Tour().run())


@demo.command()
@click.option("--async", "async_mode", type=click.Choice(["none", "second"]), default="second", show_default=True)
def up(async_mode: str) -> None:
    """Create the lab and start the demo module: node1 PRIM, node2 SECOND."""
    lab = _lab()
    lab.up()
    cluster = DemoCluster(lab)
    cluster.install(DemoSettings(async_mode=async_mode))
    cluster.start_pair()
    out.print(f"demo up (async={async_mode}): node1 PRIM, node2 SECOND, app on http://{VIP}:8080 from `client`")


@demo.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("node", type=click.Choice(["node1", "node2", "client"]))
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(node: str, argv: tuple[str, ...]) -> None:
    """Run a command on a node: `mirrorctl demo exec node1 -- mirrorctl state`."""
    args = list(argv)
    if args and args[0] == "mirrorctl":
        args = [sys.executable, "-m", "mirrorcore.cli", *args[1:]]
    result = _attached().exec(node, args, check=False, timeout=3600)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    sys.exit(result.returncode)


@demo.command()
@click.argument("node", type=click.Choice(["node1", "node2", "client"]))
def crash(node: str) -> None:
    """SIGKILL every process of a node."""
    _attached().crash(node)
    out.print(f"{node} crashed (every process killed)")


@demo.command()
@click.argument("lan", required=False, type=click.Choice(["default", "private"]))
def partition(lan: str | None) -> None:
    """Cut node1 from node2 on one LAN (all LANs when none is named)."""
    _attached().partition(lan)
    out.print(f"partitioned {lan or 'all LANs'}")


@demo.command()
def heal() -> None:
    """Undo every partition."""
    _attached().heal()
    out.print("healed")


@demo.command()
def down() -> None:
    """Stop everything and remove the lab (idempotent)."""
    _lab().down()
    out.print("demo lab removed")


class Tour:
    """The narrated tour; each check prints ✓ or ✗ and the tour goes on."""

    def __init__(self, lab: Lab | None = None) -> None:
        self.lab = lab if lab is not None else _lab()
        self.cluster = DemoCluster(self.lab)
        self.failures = 0
        self._seen: list[str] = []  # what `_rejoined` saw of a resync, printed under its check

    def check(self, what: str, test: Callable[[], str]) -> None:
        try:
            detail = test()
        except Exception as exc:
            self.failures += 1
            out.print(f"  [red]✗[/] {what}: {exc}")
        else:
            out.print(f"  [green]✓[/] {what}{': ' + detail if detail else ''}")
        for line in self._seen:
            out.print(f"    {line}", markup=False)
        self._seen = []

    def show(self, node: str, command: str) -> None:
        """Prints what an operator would see running `command` on `node`."""
        out.print(f"  [dim]{node}$ {command}[/]")
        result = self.cluster.ctl(node, *command.split()[1:])
        for line in (result.stdout + result.stderr).splitlines():
            out.print(f"    {line}", markup=False)

    def step(self, title: str) -> None:
        out.print(f"\n[bold]{title}[/]")

    def run(self) -> int:
        try:
            self._tour()
        finally:
            self.step("Tear down")
            self.lab.down()
            out.print("  lab removed")
        verdict = "[green]all checks passed[/]" if self.failures == 0 else f"[red]{self.failures} check(s) failed[/]"
        out.print(f"\n{verdict}")
        return 0 if self.failures == 0 else 1

    def _tour(self) -> None:
        c = self.cluster
        self.step("1. Two nodes and a client in namespaces; module `demo` on both")
        self.lab.down()
        self.lab.up()
        c.install(DemoSettings())
        out.print(f"  heartbeats every 200 ms on LANs default and private, timeout 2 s; VIP {VIP}")
        out.print("  /srv/demo is replicated in real time (semi-synchronous: async=second) on LAN private")
        self.check("node1 started with `prim`, node2 with `second`", lambda: _ok(c.start_pair))
        self.check("node1 is PRIM green", lambda: _reason(c.wait_for("node1", "PRIM")))
        self.check("node2 is SECOND green", lambda: _reason(c.wait_for("node2", "SECOND")))
        self.show("node1", "mirrorctl state")

        self.step("2. A client uses the application through the virtual IP")
        self.check("PUT greeting=hello via the VIP is served by node1", lambda: _served(c, "put", "node1", "hello"))
        self.check("GET greeting returns it", lambda: _served(c, "get", "node1"))

        self.step("2b. The application dies (SIGKILL): errd (its process) or tcp (its port) restarts it")
        self.check("the app is restarted on node1", lambda: _killed_and_restarted(c))
        self.check("node1 is PRIM green again", lambda: _reason(c.wait_for("node1", "PRIM")))
        self.show("node1", "mirrorctl state")

        self.step("3. node1 crashes (SIGKILL of all its processes)")
        crashed_at = time.monotonic()
        self.lab.crash("node1")
        self.check("node2 takes over: ALONE green", lambda: _failover(c, crashed_at))
        self.check(
            "the client reaches the app on the VIP again, now on node2, and greeting=hello survived (replicated)",
            lambda: _served(c, "get", "node2", expect="hello"),
        )
        self.check("node2 takes new writes alone", lambda: _served(c, "put", "node2", "hello again"))

        self.step("4. node1 comes back with `mirrorctl start`")
        self.check("node1 restarts", lambda: _ok(lambda: c.ctl("node1", "start", check=True)))
        self.check(
            "node2 resyncs node1 online, and node1 becomes SECOND green", lambda: self._rejoined("node2", "node1")
        )
        self.check("node2 becomes PRIM green", lambda: _reason(c.wait_for("node2", "PRIM")))
        self.show("node2", "mirrorctl log -n 6")

        self.step("5. Swap back: `mirrorctl swap` on node2")
        self.check("swap accepted", lambda: _ok(lambda: c.ctl("node2", "swap", check=True)))
        self.check("node1 is primary again", lambda: _reason(c.wait_for("node1", "PRIM", timeout=40)))
        self.check("node2 is SECOND green", lambda: _reason(c.wait_for("node2", "SECOND", timeout=40)))
        self.check(
            "the client is served by node1, with the write made while node1 was down",
            lambda: _served(c, "get", "node1", expect="hello again"),
        )

        self.step(f"6. The network splits; the witness {WITNESS} (the client) decides who runs the application")
        out.print("  node1 is also cut from the witness; node2 still reaches it")
        self._witness_route("add")
        self.lab.partition()
        self.check("node2 reaches the witness: ALONE green", lambda: _reason(c.wait_for("node2", "ALONE", timeout=30)))
        self.check(
            "node1 does not: it stops the application and waits (WAIT red)",
            lambda: _reason(c.wait_for("node1", "WAIT", "red", timeout=30)),
        )
        self.check("the client is served by node2 alone", lambda: _served(c, "get", "node2", expect="hello again"))
        self._witness_route("del")
        before = _last_resync(c.state("node2"))
        self.lab.heal()
        self.check(
            "healed: node1 resyncs and becomes SECOND green", lambda: self._rejoined("node2", "node1", before=before)
        )
        self.show("node1", "mirrorctl log -n 8")

    def _rejoined(self, primary: str, secondary: str, *, before: dict[str, Any] | None = None) -> str:
        """Waits for `secondary` to be SECOND green; notes the resync `primary` ran (mode, progress, result).

        Reads the primary's `state --json` (`rfs.resync`, `rfs.last_resync`) as an operator would;
        `check` prints the notes under its line. The demo's data is small: the resync may end between
        two looks, so what was seen is shown (running snapshots when caught, always the final one).
        A resync other than `before` must have ended.
        """
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        done: dict[str, Any] | None = None
        while True:
            status = self.cluster.state(primary)
            for snapshot in ((status.get("rfs") or {}).get("resync") or {}).values():
                if snapshot.get("phase") != "done" and snapshot not in seen:
                    seen.append(snapshot)
            last = _last_resync(status)
            if last is not None and last != before:
                done = last
            secondary_status = self.cluster.state(secondary)
            if done is not None and (secondary_status["state"], secondary_status["color"]) == ("SECOND", "green"):
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{secondary} is {secondary_status['state']} {secondary_status['color']} "
                    f"({secondary_status.get('reason')}); {primary}'s last resync: {done or 'none'}"
                )
            time.sleep(0.1)
        self._seen = [f"mode chosen by {primary}: {done.get('mode')} ({done.get('reason')})"]
        self._seen += [
            f"progress seen on {primary}: {p.get('phase')} ({p.get('state')}), {_progress(p)}, "
            f"{p.get('bytes_sent', 0)} bytes sent"
            for p in seen[-2:]
        ]
        self._seen.append(
            f"done: {done.get('mode')} resync, {_progress(done)}, {done.get('bytes_sent', 0)} bytes sent, "
            f"{done.get('seconds')} s"
        )
        return str(secondary_status.get("reason", ""))

    def _witness_route(self, verb: str) -> None:
        """Cuts (add) or restores (del) node1's route to the witness."""
        argv = ["ip", "-n", self.lab.netns("node1"), "route", verb, "blackhole", f"{WITNESS}/32"]
        subprocess.run(argv, check=True, capture_output=True)


def _last_resync(status: dict[str, Any]) -> dict[str, Any] | None:
    """The primary's last completed resync (`rfs.last_resync`), if any."""
    last = (status.get("rfs") or {}).get("last_resync")
    return dict(last) if isinstance(last, dict) and last.get("mode") else None


def _progress(p: dict[str, Any]) -> str:
    return (
        f"files {p.get('files_done', 0)}/{p.get('files_total', 0)}, "
        f"{p.get('bytes_done', 0)} of {p.get('bytes_total', 0)} bytes compared"
    )


def _ok(action: Callable[[], object]) -> str:
    action()
    return ""


def _reason(status: dict[str, object]) -> str:
    return str(status.get("reason", ""))


def _served(
    cluster: DemoCluster, method: str, node: str, value: str | None = None, *, expect: str | None = None
) -> str:
    deadline = time.monotonic() + 10
    while True:
        code, served_by, body = cluster.client(method, "/kv/greeting", value)
        if code in (200, 201) and served_by == node and (expect is None or body == expect):
            return f"{code} from {served_by}: {body}"
        if time.monotonic() > deadline:
            raise AssertionError(f"got {code} from {served_by or 'nobody'}: {body}")
        time.sleep(0.2)


def _killed_and_restarted(cluster: DemoCluster) -> str:
    pidfile = cluster.lab.host_path("node1", "/run/mirrorcore/demoapp.pid")
    old = int(pidfile.read_text())
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    deadline = killed_at + 30
    while time.monotonic() < deadline:
        try:
            new = int(pidfile.read_text())
        except (FileNotFoundError, ValueError):
            new = old
        if new != old:
            last = cluster.state("node1").get("last_rule") or {}
            return f"pid {old} -> {new} after {time.monotonic() - killed_at:.1f} s, by rule {last.get('rule')}"
        time.sleep(0.1)
    raise AssertionError(f"pid {old} was not replaced within 30 s")


def _failover(cluster: DemoCluster, crashed_at: float) -> str:
    status = cluster.wait_for("node2", "ALONE", timeout=30)
    return f"after {time.monotonic() - crashed_at:.1f} s: {status['reason']}"
