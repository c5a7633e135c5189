"""Two nodes and a client on one machine, each in its own network and mount namespace.

Layout of a lab called ``NAME``:

- network namespaces ``NAME-node1``, ``NAME-node2``, ``NAME-client`` (one per node) and ``NAME-lan``,
  which holds the bridges ``brdef`` (LAN "default", 10.201.0.0/24) and ``brpriv`` (LAN "private",
  10.202.0.0/24). Veth pairs are created inside namespaces, so the host's network never sees them.
- one *holder* process per node (``sleep infinity``) that lives in the node's network namespace and in
  a private mount namespace of its own, where ``/sys`` shows the node's interfaces and per-node host
  directories ``BASE/NODE/{etc,lib,log,run,srv}`` are bind-mounted over the mirrorcore roots and /srv.
  Commands enter a node with ``nsenter -t HOLDER -n -m``.
- a state file ``/run/mirrorcore-lab/NAME.json`` so that another process can attach (`Lab.existing`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

STATE_DIR = Path("/run/mirrorcore-lab")
BASE_ROOT = Path("/var/lib/mirrorcore-lab")
VIP = "10.201.0.100"

# Node-private roots: path inside the node -> directory under BASE/NODE on the host.
_ROOTS = {
    "/etc/mirrorcore": "etc",
    "/var/lib/mirrorcore": "lib",
    "/var/log/mirrorcore": "log",
    "/run/mirrorcore": "run",
    "/srv": "srv",
}
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,11}")
_KILL_DEADLINE = 10.0
_MARKER = ".mirrorcore-lab"


class LabError(RuntimeError):
    """A lab operation failed; the message names the command and what it printed."""


@dataclass(frozen=True)
class _LanSpec:
    name: str
    bridge: str
    dev: str  # interface name inside each node
    net: str  # first three octets
    hosts: tuple[tuple[str, int], ...]


_LANS = (
    _LanSpec("default", "brdef", "eth0", "10.201.0", (("node1", 1), ("node2", 2), ("client", 10))),
    _LanSpec("private", "brpriv", "eth1", "10.202.0", (("node1", 1), ("node2", 2))),
)


def _run(argv: Sequence[str], *, input: str | None = None, timeout: float = 30) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        batch = f"\ninput:\n{input}" if input else ""
        raise LabError(f"`{shlex.join(argv)}` failed (exit {proc.returncode}): {detail}{batch}")
    return proc.stdout


def _ns_id(path: str) -> tuple[int, int] | None:
    """Identity (device, inode) of a namespace file, or None if it is gone (or the process is a zombie)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _members(nets: set[tuple[int, int]], mnts: set[tuple[int, int]], exclude: Iterable[int] = ()) -> list[int]:
    """Live processes in any of the given network or mount namespaces (zombies have no namespaces)."""
    skip = {os.getpid(), *exclude}
    found = []
    for pid in _pids():
        if pid in skip:
            continue
        if _ns_id(f"/proc/{pid}/ns/net") in nets or _ns_id(f"/proc/{pid}/ns/mnt") in mnts:
            found.append(pid)
    return found


def _kill_all(nets: set[tuple[int, int]], mnts: set[tuple[int, int]], exclude: Iterable[int] = ()) -> None:
    """SIGKILL every member until none is left; processes may fork while we look, hence the loop."""
    if not nets and not mnts:
        return
    # Frozen first, as a power loss leaves them: none may react to another's death (a worker whose
    # daemon died would stop cleanly, which a crash never does).
    for pid in _members(nets, mnts, exclude):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + _KILL_DEADLINE
    while victims := _members(nets, mnts, exclude):
        if time.monotonic() > deadline:
            raise LabError(f"processes {victims} survive SIGKILL (stuck in uninterruptible sleep?)")
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):  # it died between the scan and now
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _fuse_mounts(mountinfo: Path, under: str = "/") -> list[str]:
    """FUSE mount points listed in a mountinfo file, deepest first so nested ones go first."""
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0].startswith("fuse"):
            point = left.split(" ")[4].encode().decode("unicode_escape")  # mountinfo escapes spaces as \040
            if point == under or point.startswith(under.rstrip("/") + "/"):
                points.append(point)
    return sorted(points, key=len, reverse=True)


class Lab:
    """Two nodes and a client on one machine, each its own network AND mount namespace.

    LAN "default" is 10.201.0.0/24 (node1 .1, node2 .2, client .10; the VIP is 10.201.0.100) on eth0;
    LAN "private" is 10.202.0.0/24 (node1 .1, node2 .2; the client is not on it) on eth1.
    """

    NODES = ("node1", "node2")
    CLIENT = "client"
    ALL = (*NODES, CLIENT)
    LANS = tuple(lan.name for lan in _LANS)

    def __init__(self, name: str = "mcdemo", base: Path | None = None) -> None:
        """Describes a lab; nothing is created before `up`.

        Args:
            name: prefix of the namespaces (at most 12 characters: lowercase letters, digits, ``_``).
            base: host directory for the nodes' private files; default /var/lib/mirrorcore-lab/NAME.

        Raises:
            LabError: the name is not short and simple.
        """
        if not _NAME_RE.fullmatch(name):
            raise LabError(f"lab name {name!r} must be 1-12 characters of a-z, 0-9, _ (starting with a letter)")
        self.name = name
        self.base = base if base is not None else BASE_ROOT / name
        self._holders: dict[str, int] = {}

    @classmethod
    def existing(cls, name: str = "mcdemo") -> Lab:
        """Attaches to a lab brought up by another process.

        Raises:
            LabError: no such lab is up (state file missing) or it is broken; `mirrorctl demo up` fixes it.
        """
        state = cls._read_state(name)
        if state is None:
            raise LabError(f"no lab {name!r} is up ({STATE_DIR / (name + '.json')} missing)")
        lab = cls(name, Path(state["base"]))
        if not lab._adopt(state):
            raise LabError(f"lab {name!r} is broken (a node holder died); bring it up again")
        return lab

    # -- names ---------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        """Where this lab records its holders so other processes can attach."""
        return STATE_DIR / f"{self.name}.json"

    def netns(self, node: str) -> str:
        """Name of a node's network namespace (usable with ``ip -n``), or of the LAN namespace for "lan"."""
        if node != "lan":
            self._check_node(node)
        return f"{self.name}-{node}"

    def addr(self, node: str, lan: str = "default") -> str:
        """A node's IPv4 address on a LAN.

        Raises:
            LabError: unknown LAN, or the node is not on it (the client is only on "default").
        """
        spec = self._lan(lan)
        for host, last in spec.hosts:
            if host == node:
                return f"{spec.net}.{last}"
        raise LabError(f"{node!r} is not on LAN {lan!r}")

    def holder(self, node: str) -> int:
        """Pid of the process that keeps the node's namespaces alive."""
        self._check_node(node)
        if node not in self._holders:
            raise LabError(f"lab {self.name!r} is not up; call up() first")
        return self._holders[node]

    def host_path(self, node: str, path: str) -> Path:
        """Where a node-private path (e.g. /srv/demo/data/x) lives on the host.

        Raises:
            LabError: the path is not under one of the node-private roots.
        """
        self._check_node(node)
        p = PurePosixPath(path)
        for root, sub in _ROOTS.items():
            if p.is_relative_to(root):
                return self.base / node / sub / p.relative_to(root)
        raise LabError(f"{path} is not node-private; node-private roots are {', '.join(_ROOTS)}")

    # -- lifecycle -----------------------------------------------------------------------------

    def up(self) -> None:
        """Creates the lab; does nothing if it is already up and healthy, rebuilds it if half-made.

        Raises:
            LabError: a command failed (the lab is torn down again before raising).
        """
        state = self._read_state(self.name)
        if state is not None and Path(state["base"]) == self.base and self._adopt(state):
            return
        self.down()
        try:
            self._build()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Kills every process of the lab, unmounts, deletes namespaces, base dir and state file. Idempotent."""
        state = self._read_state(self.name)
        bases = {self.base, *([Path(state["base"])] if state else [])}
        holders = {**(state["holders"] if state else {}), **self._holders}
        names = [self.netns(n) for n in (*self.ALL, "lan")]
        nets = {i for n in names if (i := _ns_id(f"/run/netns/{n}")) is not None}
        # A holder counts only while it still sits in the lab's network namespace (its pid may be reused).
        live = [pid for pid in holders.values() if _ns_id(f"/proc/{pid}/ns/net") in nets]
        mnts = {i for pid in live if (i := _ns_id(f"/proc/{pid}/ns/mnt")) is not None}
        _kill_all(nets, mnts, exclude=live)
        for pid in live:
            for point in _fuse_mounts(Path(f"/proc/{pid}/mountinfo")):
                subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "umount", "-l", point], check=False)
        _kill_all(nets, mnts)
        for n in names:
            if os.path.lexists(f"/run/netns/{n}"):
                _run(["ip", "netns", "del", n])
        for base in bases:
            # Only a FUSE mount made on the host itself would be visible here; the nodes' ones died with them.
            for point in _fuse_mounts(Path("/proc/self/mountinfo"), str(base)):
                subprocess.run(["umount", "-l", point], check=False)
            if (base / _MARKER).exists():  # never wipe a directory this lab did not make
                shutil.rmtree(base, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        self._holders = {}

    # -- running things in nodes ---------------------------------------------------------------

    def command(self, node: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside a node, keeping the caller's working directory."""
        cwd = os.getcwd()
        return ["nsenter", "-t", str(self.holder(node)), "-n", "-m", f"--wd={cwd}", "--", *argv]

    def exec(
        self,
        node: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command inside a node and waits for it.

        Args:
            node: "node1", "node2" or "client".
            argv: the command.
            check: raise LabError when it exits non-zero.
            timeout: seconds before it is killed and subprocess.TimeoutExpired raised.
            env: added to the caller's environment.
            input: text for its stdin.

        Returns:
            The finished process, with stdout and stderr as text.

        Raises:
            LabError: `check` is set and the command failed; the message holds its stderr.
        """
        proc = subprocess.run(
            self.command(node, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            check=False,
        )
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip()
            raise LabError(f"{node}: `{shlex.join(argv)}` failed (exit {proc.returncode}): {detail}")
        return proc

    def popen(
        self,
        node: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        **kw: Any,  # noqa: ANN401 - forwarded verbatim to subprocess.Popen
    ) -> subprocess.Popen[str]:
        """Starts a command inside a node; `kw` goes to subprocess.Popen (text mode), `env` adds to os.environ."""
        return subprocess.Popen(self.command(node, argv), text=True, env={**os.environ, **(env or {})}, **kw)

    # -- faults --------------------------------------------------------------------------------

    def crash(self, node: str, *, unmount: bool = True) -> None:
        """SIGKILLs every process of a node (not its namespace holder), as if the machine lost power.

        Addresses added at run time (a VIP) go too: a dead machine answers no ARP, and one that
        reboots comes back with its configured addresses only.

        Args:
            node: the node to crash.
            unmount: also drop the node's FUSE mounts, as a reboot would; the namespace stays usable.
        """
        pid = self.holder(node)
        net, mnt = _ns_id(f"/proc/{pid}/ns/net"), _ns_id(f"/proc/{pid}/ns/mnt")
        if net is None or mnt is None:
            raise LabError(f"holder {pid} of {node} is gone; bring the lab up again")
        _kill_all({net}, {mnt}, exclude=[pid])
        cmds = [f"addr flush dev {lan.dev} secondary" for lan in _LANS if any(h == node for h, _ in lan.hosts)]
        _run(["ip", "-n", self.netns(node), "-batch", "-"], input="\n".join(cmds) + "\n")
        if unmount:
            for point in _fuse_mounts(Path(f"/proc/{pid}/mountinfo")):
                _run(["nsenter", "-t", str(pid), "-m", "--", "umount", "-l", point])

    def partition(self, lan: str | None = None) -> None:
        """Cuts node1 <-> node2 on a LAN (every LAN if None); the client still reaches both nodes.

        Both nodes' bridge ports are marked *isolated*: the bridge forwards nothing between two isolated
        ports, but still between an isolated port and a normal one (the client's).
        """
        self._isolate([self._lan(lan)] if lan is not None else list(_LANS), on=True)

    def heal(self) -> None:
        """Undoes every partition.

        The nodes' neighbour caches are flushed too: an ARP lookup begun during the partition stays
        INCOMPLETE for up to 3 s and only re-probes every second, which would delay the first packets.
        """
        self._isolate(list(_LANS), on=False)
        for node in self.NODES:
            cmds = [f"neigh flush dev {lan.dev}" for lan in _LANS]
            _run(["ip", "-n", self.netns(node), "-batch", "-"], input="\n".join(cmds) + "\n")

    # -- internals -----------------------------------------------------------------------------

    def _isolate(self, lans: list[_LanSpec], *, on: bool) -> None:
        flag = "on" if on else "off"
        cmds = [
            f"link set dev {self._port(n, lan)} type bridge_slave isolated {flag}" for lan in lans for n in self.NODES
        ]
        _run(["ip", "-n", self.netns("lan"), "-batch", "-"], input="\n".join(cmds) + "\n")

    def _port(self, node: str, lan: _LanSpec) -> str:
        return f"{node}-{lan.dev}"  # the LAN-side end of a node's veth; at most 11 characters

    def _build(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        (self.base / _MARKER).touch()
        for node in self.ALL:
            for sub in _ROOTS.values():
                (self.base / node / sub).mkdir(parents=True, exist_ok=True)
        for root in _ROOTS:
            Path(root).mkdir(parents=True, exist_ok=True)  # mount points; the mounts themselves stay in the nodes
        lan_ns = self.netns("lan")
        for ns in (lan_ns, *(self.netns(n) for n in self.ALL)):
            _run(["ip", "netns", "add", ns])
        # No STP and no forward delay: ports forward as soon as they are up.
        cmds = ["link set lo up"]
        for lan in _LANS:
            cmds += [f"link add {lan.bridge} type bridge stp_state 0 forward_delay 0", f"link set {lan.bridge} up"]
            for node, _ in lan.hosts:
                port = self._port(node, lan)
                cmds += [
                    f"link add {port} type veth peer name {lan.dev} netns {self.netns(node)}",
                    f"link set {port} master {lan.bridge} up",
                ]
        _run(["ip", "-n", lan_ns, "-batch", "-"], input="\n".join(cmds) + "\n")
        for node in self.ALL:
            cmds = ["link set lo up"]
            for lan in _LANS:
                for host, last in lan.hosts:
                    if host == node:
                        cmds += [f"addr add {lan.net}.{last}/24 dev {lan.dev}", f"link set {lan.dev} up"]
            _run(["ip", "-n", self.netns(node), "-batch", "-"], input="\n".join(cmds) + "\n")
        self._holders = {node: self._start_holder(node) for node in self.ALL}
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"name": self.name, "base": str(self.base), "holders": self._holders}))
        tmp.replace(self.state_file)

    def _start_holder(self, node: str) -> int:
        # The mounts are made inside the new mount namespace (private propagation), so the host never
        # sees them. The shell backgrounds the holder and exits: the holder is then no child of ours
        # (no Popen to reap, works across processes) and init reaps it once killed.
        # The copied /run/netns mounts would pin every lab's network namespaces (this one's and any other
        # lab's) for as long as this node lives; nothing in a node needs them.
        script = ["set -e", "mount -t sysfs sysfs /sys", "umount -R -l /run/netns 2>/dev/null || true"]
        script += [f"mount --bind {shlex.quote(str(self.base / node / sub))} {root}" for root, sub in _ROOTS.items()]
        script += ["sleep infinity </dev/null >/dev/null 2>&1 &", "echo $!"]
        argv = ["nsenter", f"--net=/run/netns/{self.netns(node)}", "unshare", "--mount", "--propagation", "private"]
        argv += ["sh", "-c", "\n".join(script)]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, cwd="/", start_new_session=True, check=False
        )
        if proc.returncode != 0 or not proc.stdout.strip().isdigit():
            raise LabError(f"starting the holder of {node} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return int(proc.stdout)

    def _adopt(self, state: dict[str, Any]) -> bool:
        """Takes the holders of a recorded lab if every namespace and holder is still in place."""
        holders = {str(k): int(v) for k, v in state.get("holders", {}).items()}
        if set(holders) != set(self.ALL) or not os.path.lexists(f"/run/netns/{self.netns('lan')}"):
            return False
        for node, pid in holders.items():
            net = _ns_id(f"/run/netns/{self.netns(node)}")
            if net is None or _ns_id(f"/proc/{pid}/ns/net") != net:
                return False
            if _ns_id(f"/proc/{pid}/ns/mnt") in (None, _ns_id("/proc/self/ns/mnt")):
                return False
        self._holders = holders
        return True

    @staticmethod
    def _read_state(name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((STATE_DIR / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _lan(self, lan: str) -> _LanSpec:
        for spec in _LANS:
            if spec.name == lan:
                return spec
        raise LabError(f"unknown LAN {lan!r}; the lab has {', '.join(self.LANS)}")

    def _check_node(self, node: str) -> None:
        if node not in self.ALL:
            raise LabError(f"unknown node {node!r}; the lab has {', '.join(self.ALL)}")


# -- a bare pair of namespaces, for tests of one network feature (VIP, ARP checks) ----------------------


@dataclass(frozen=True)
class VethPair:
    """Two bare network namespaces `a` and `b` joined by one veth, `eth0` in each (hosts .1 and .2)."""

    a: str
    b: str

    def python(self, ns: str, code: str) -> subprocess.CompletedProcess[str]:
        """Runs Python code (dedented) inside namespace `ns` with this interpreter; never raises on failure."""
        argv = ["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    def mac(self, ns: str) -> str:
        """The MAC address of `eth0` in namespace `ns`."""
        return str(json.loads(_run(["ip", "-n", ns, "-j", "link", "show", "dev", "eth0"]))[0]["address"])


@contextlib.contextmanager
def veth_pair(prefix: str, net: str, *, net6: str | None = None, arp_accept: bool = False) -> Iterator[VethPair]:
    """Namespaces `<prefix>a` and `<prefix>b` on `net`.0/24 (and `net6`/64), removed on exit whatever happened.

    The veth is created inside A with its peer inside B: neither end ever exists in the host's namespace.
    `arp_accept`: B learns neighbours from gratuitous ARP even without having asked.
    """
    pair = VethPair(f"{prefix}a", f"{prefix}b")
    try:
        _run(["ip", "netns", "add", pair.a])
        _run(["ip", "netns", "add", pair.b])
        _run(["ip", "-n", pair.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", pair.b])
        for ns, host in ((pair.a, 1), (pair.b, 2)):
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{net}.{host}/24", "dev", "eth0"])
            if net6 is not None:
                _run(["ip", "-n", ns, "addr", "add", f"{net6}{host}/64", "dev", "eth0", "nodad"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        if arp_accept:
            for conf in ("all", "eth0"):
                _run(["ip", "netns", "exec", pair.b, "sysctl", "-qw", f"net.ipv4.conf.{conf}.arp_accept=1"])
        yield pair
    finally:
        for ns in (pair.a, pair.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
