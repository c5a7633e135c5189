"""The demo module installed on the lab's two nodes, and helpers to drive it.

Used by `mirrorctl demo` and by the cluster tests, so both exercise one setup:
cluster.xml with LANs `default` and `private`, one cluster key, and module
`demo` whose application is `mirrorcore.demoapp` on port 8080 behind the VIP.
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirrorcore.lab import Lab

MODULE = "demo"
VIP = "10.201.0.100"
APP_PORT = 8080
NODES = ("node1", "node2")
WITNESS = "10.201.0.10"  # the lab's client: the split-brain witness

CLUSTER_XML = """<cluster>
  <lans>
    <lan name="default"><node name="node1" addr="10.201.0.1"/><node name="node2" addr="10.201.0.2"/></lan>
    <lan name="private"><node name="node1" addr="10.202.0.1"/><node name="node2" addr="10.202.0.2"/></lan>
  </lans>
</cluster>
"""

USERCONFIG_XML = """<safe>
  <macro name="APP_PORT" value="{app_port}"/>
  <macro name="LAB" value="{lab}"/>
  <service mode="mirror" failover="{failover}" defaultprim="{defaultprim}" maxloop="{maxloop}"
           loop_interval="{loop_interval}">
    <heart pulse="{pulse}" timeout="{timeout}">
      <heartbeat name="default"/>
      <heartbeat name="private" ident="flow"/>
    </heart>
    <vip>
      <interface_list>
        <interface check="on">
          <real_interface>
            <virtual_addr addr="{vip}" where="one_side_alias" check="on"/>
          </real_interface>
        </interface>
      </interface_list>
    </vip>
    <rfs async="{async_mode}" sendtimeout="{sendtimeout}">
      <replicated dir="/srv/demo" mode="read_only"/>
    </rfs>
    <user nicestoptimeout="5s" forcestoptimeout="5s">
      <var name="APP_PORT" value="%APP_PORT%"/>
      <var name="PYTHON" value="{python}"/>
      <var name="LAB" value="%LAB%"/>
    </user>
    <errd polltimer="1s">
      <!-- The app by its command line. The lab's nodes (and other labs) share one /proc: the lab's
           name in the command line keeps other labs' apps out of the count. -->
      <proc name="demoapp" argregex="mirrorcore[.]demoapp serve .*--lab %LAB%( |$)" atleast="1"
            action="{errd_action}" class="prim"/>
    </errd>
    <check>
      <tcp ident="app" when="prim"><to addr="127.0.0.1" port="%APP_PORT%" interval="1s" timeout="1s"/></tcp>
      <splitbrain ident="witness" exec="ping" arg="{witness}"/>
      {checks}
    </check>
    <failover handle_time="{handle_time}"><![CDATA[{rules}]]></failover>
  </service>
</safe>
"""

START_PRIM = """#!/bin/sh
# start_prim CURRENT NEXT ACTION: start the demo key-value service in the background.
echo "start_prim $*"
mkdir -p /srv/demo/data /run/mirrorcore
setsid "$PYTHON" -m mirrorcore.demoapp serve --port "$APP_PORT" --data /srv/demo/data --lab "$LAB" \\
    </dev/null >>/var/log/mirrorcore/demo/app.log 2>&1 &
echo $! > /run/mirrorcore/demoapp.pid
# Ready when it answers.
for _ in $(seq 50); do
    "$PYTHON" -m mirrorcore.demoapp get "http://127.0.0.1:$APP_PORT/" >/dev/null 2>&1 && exit 0
    sleep 0.1
done
"$PYTHON" -m mirrorcore.cli printe -m demo -i start_prim "demo app did not answer on port $APP_PORT"
exit 1
"""

STOP_PRIM = """#!/bin/sh
# stop_prim CURRENT NEXT ACTION: stop the demo service (ACTION "force": kill it).
echo "stop_prim $*"
pidfile=/run/mirrorcore/demoapp.pid
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if [ "$3" = force ]; then kill -KILL "$pid" 2>/dev/null; else kill -TERM "$pid" 2>/dev/null; fi
for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
rm -f "$pidfile"
"""

NOOP = """#!/bin/sh
echo "$(basename "$0") $*"
"""


@dataclass(frozen=True)
class DemoSettings:
    """What a test or the demo may vary in the demo module."""

    pulse: str = "200ms"
    timeout: str = "2s"
    failover: str = "on"
    defaultprim: str = "alone"
    maxloop: int = 3
    loop_interval: str = "24h"
    async_mode: str = "second"
    sendtimeout: str = "5s"
    handle_time: str = "0"
    rules: str = ""  # the <failover> rules, besides the default ones
    checks: str = ""  # more checkers inside <check>
    errd_action: str = "restart"  # the demoapp <proc>'s action: an action, or a handler's absolute path
    bin_files: tuple[tuple[str, str], ...] = ()  # (name, text): more executables in the module's bin dir


class DemoCluster:
    """The demo module on a lab: install it, run mirrorctl on a node, wait for states."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def install(self, settings: DemoSettings | None = None) -> None:
        """Writes cluster.xml, the cluster key, the module's config and scripts on both nodes."""
        settings = settings or DemoSettings()
        key = secrets.token_hex(32)
        userconfig = USERCONFIG_XML.format(
            app_port=APP_PORT,
            vip=VIP,
            python=sys.executable,
            pulse=settings.pulse,
            timeout=settings.timeout,
            failover=settings.failover,
            defaultprim=settings.defaultprim,
            maxloop=settings.maxloop,
            loop_interval=settings.loop_interval,
            async_mode=settings.async_mode,
            sendtimeout=settings.sendtimeout,
            handle_time=settings.handle_time,
            rules=settings.rules,
            checks=settings.checks,
            errd_action=settings.errd_action,
            lab=self.lab.name,
            witness=WITNESS,
        )
        for node in NODES:
            etc = self.lab.host_path(node, "/etc/mirrorcore")
            _write(etc / "cluster.xml", CLUSTER_XML)
            _write(etc / "cluster.key", key + "\n", mode=0o600)
            module = etc / "modules" / MODULE
            _write(module / "conf" / "userconfig.xml", userconfig)
            for name, text in (("start_prim", START_PRIM), ("stop_prim", STOP_PRIM)):
                _write(module / "bin" / name, text, mode=0o755)
            for name in ("prestart", "poststop"):
                _write(module / "bin" / name, NOOP, mode=0o755)
            for name, text in settings.bin_files:
                _write(module / "bin" / name, text, mode=0o755)

    def ctl(self, node: str, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Runs `mirrorctl ARGS -m demo` on a node."""
        argv = [sys.executable, "-m", "mirrorcore.cli", *args]
        if args and args[0] not in ("demo", "cluster", "module"):
            argv += ["-m", MODULE]
        return self.lab.exec(node, argv, check=check, timeout=timeout)

    def state(self, node: str) -> dict[str, Any]:
        """The node's `mirrorctl state --json`."""
        result = self.ctl(node, "state", "--json", check=True)
        status: dict[str, Any] = json.loads(result.stdout)
        return status

    def wait_for(self, node: str, state: str, color: str = "green", *, timeout: float = 30) -> dict[str, Any]:
        """Waits until `node` is in `state`/`color`; raises TimeoutError naming what it saw."""
        deadline = time.monotonic() + timeout
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline:
            seen = self.state(node)
            if seen["state"] == state and seen["color"] == color:
                return seen
            time.sleep(0.1)
        logs = "\n".join(f"--- {n} module.log\n" + "".join(self.module_log(n).splitlines(True)[-12:]) for n in NODES)
        raise TimeoutError(
            f"{node} ({seen.get('node')}) did not reach {state} {color} within {timeout:.0f}s; it is "
            f"{seen.get('state')} {seen.get('color')}: {seen.get('reason')}\n{logs}"
        )

    def client(self, method: str, path: str, value: str | None = None, *, timeout: float = 3.0) -> tuple[int, str, str]:
        """A request from the client namespace to the app on the VIP: (status, served by, body)."""
        argv = [sys.executable, "-m", "mirrorcore.demoapp", method, f"http://{VIP}:{APP_PORT}{path}"]
        if value is not None:
            argv.append(value)
        argv += ["--timeout", str(timeout)]
        result = self.lab.exec("client", argv, check=False, timeout=timeout + 15)
        if result.returncode == 2:
            return 0, "", result.stderr.strip()
        code, served_by, body = [*result.stdout.strip().split(" ", 2), "", ""][:3]
        return int(code), served_by, body

    def module_log(self, node: str) -> str:
        path = self.lab.host_path(node, f"/var/log/mirrorcore/{MODULE}/module.log")
        return path.read_text() if path.exists() else ""

    def start_pair(self) -> None:
        """First start: prim on node1, second on node2; waits for PRIM and SECOND green."""
        self.ctl("node1", "prim", check=True)
        self.ctl("node2", "second", check=True)
        self.wait_for("node2", "SECOND")
        self.wait_for("node1", "PRIM")


def _write(path: Path, text: str, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A one-line account of a command's outcome, for error messages."""
    return f"`{shlex.join(result.args)}` exited {result.returncode}: {(result.stderr or result.stdout).strip()}"
