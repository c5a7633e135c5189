"""mirrorctl: the command line of mirrorcore (SPEC §8).

Commands for a module talk to its daemon over the control socket; `start`,
`prim`, `second` and `primforce` launch the daemon in the background when it
is not running. Commands that need no daemon (config check, log, printi/e,
boot, module new, cluster genkey, demo) work directly on the files.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console

from mirrorcore import control
from mirrorcore.modlog import ModuleLog
from mirrorcore.paths import Paths

if TYPE_CHECKING:
    from mirrorcore.config import ModuleConfig

F = TypeVar("F", bound=Callable[..., Any])

#: `state -lq` exit codes, as the product's.
STATE_EXIT_CODES = {"STOP": 0, "WAIT": 1, "ALONE": 2, "PRIM": 3, "SECOND": 4}
COLOR_STYLES = {"green": "bold green", "orange": "bold dark_orange", "red": "bold red"}
DAEMON_START_SECONDS = 15.0

# soft_wrap: a reason is one sentence a user may grep or copy; never break it mid-command.
out = Console(highlight=False, soft_wrap=True)


class CliError(click.ClickException):
    """An error the user can fix; printed without a traceback."""


def _paths() -> Paths:
    return Paths.from_env()


def _default_module(paths: Paths) -> str:
    env = os.environ.get("MIRRORCORE_MODULE")
    if env:
        return env
    modules = sorted(p.name for p in paths.modules.iterdir()) if paths.modules.is_dir() else []
    if len(modules) == 1:
        return modules[0]
    where = f"in {paths.modules}: {', '.join(modules)}" if modules else f"(none in {paths.modules})"
    raise CliError(f"name the module with -m MODULE {where}")


def module_options(func: F) -> F:
    """Adds `-m MODULE` and `-i INITIATOR` to a command."""
    func = click.option("-i", "initiator", default=None, help="Who calls (a script or checker); counts for maxloop.")(
        func
    )
    return click.option("-m", "module", default=None, help="The module (default: the only one).")(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mirrorcore")
def main() -> None:
    """mirrorcore: two-node high availability with real-time replication and failover."""


# ---- commands carried out by the daemon ---------------------------------------------------


def _send(
    module: str | None, cmd: str, initiator: str | None, args: dict[str, Any] | None = None, timeout: float = 30.0
) -> control.Reply:
    paths = _paths()
    name = module or _default_module(paths)
    try:
        request = control.Request(cmd=cmd, args=args or {}, initiator=initiator)
        return control.call(paths.socket(name), request, timeout=timeout)
    except control.DaemonNotRunning:
        raise CliError(
            f"module {name} is not running on this node (no daemon at {paths.socket(name)}); "
            f"start it with `mirrorctl start -m {name}`"
        ) from None
    except (TimeoutError, ConnectionError) as exc:
        raise CliError(str(exc)) from None


def _ensure_daemon(name: str) -> None:
    """Starts the module's daemon in the background unless it already runs."""
    paths = _paths()
    if control.is_running(paths.socket(name)):
        return
    _check_config(paths, name)
    log_dir = paths.log_dir(name)
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "daemon.log").open("ab") as daemon_log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mirrorcore.cli", "daemon", "-m", name, "--exit-on-stop"],
            stdin=subprocess.DEVNULL,
            stdout=daemon_log,
            stderr=daemon_log,
            start_new_session=True,
        )
    deadline = time.monotonic() + DAEMON_START_SECONDS
    while not control.is_running(paths.socket(name)):
        if proc.poll() is not None:
            last = _last_line(log_dir / "daemon.log")
            raise CliError(
                f"the daemon of {name} exited with code {proc.returncode}: {last} (see {log_dir / 'daemon.log'})"
            )
        if time.monotonic() > deadline:
            raise CliError(f"the daemon of {name} did not start within {DAEMON_START_SECONDS:.0f}s")
        time.sleep(0.05)


def _last_line(path: Path) -> str:
    """The last non-empty line of a log, where a dying daemon says why."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _report(reply: control.Reply) -> None:
    if not reply.ok:
        raise CliError(reply.message)
    out.print(reply.message)


def _starting_command(cmd: str) -> Callable[..., None]:
    @module_options
    @click.argument("fullsync", required=False, type=click.Choice(["fullsync"]))
    def command(module: str | None, initiator: str | None, fullsync: str | None) -> None:
        name = module or _default_module(_paths())
        _ensure_daemon(name)
        _report(_send(name, cmd, initiator, {"fullsync": fullsync is not None}))

    return command


for _cmd, _help in (
    ("start", "Start the module: primary or secondary as the peer's state and the data decide."),
    ("prim", "Start as primary (first start: on the node with the good data)."),
    ("second", "Start as secondary; FULLSYNC forces a full resynchronization."),
    ("primforce", "Start as primary even though this node's data is not uptodate."),
):
    main.command(_cmd, help=_help)(_starting_command(_cmd))


def _running_command(cmd: str) -> Callable[..., None]:
    @module_options
    def command(module: str | None, initiator: str | None) -> None:
        _report(_send(module, cmd, initiator))

    return command


for _cmd, _help in (
    ("stop", "Stop the module on this node (the peer takes over if it was secondary)."),
    ("restart", "Restart the application here (stop_prim, start_prim), without failover."),
    ("stopstart", "Stop and start again; on the primary the secondary takes over."),
    ("swap", "On the primary: hand the application to the secondary and become secondary."),
    ("resetloop", "Forget the restarts counted against maxloop."),
):
    main.command(_cmd, help=_help)(_running_command(_cmd))


@main.command()
@module_options
@click.argument("onoff", type=click.Choice(["on", "off"]))
def failover(module: str | None, initiator: str | None, onoff: str) -> None:
    """Turn automatic failover on or off at run time."""
    _report(_send(module, "failover", initiator, {"on": onoff == "on"}))


# ---- state -------------------------------------------------------------------------------


def _local_status(paths: Paths, name: str) -> dict[str, Any]:
    try:
        return control.call(paths.socket(name), control.Request(cmd="status"), timeout=5).status
    except control.DaemonNotRunning:
        return _stopped_status(paths, name)


def _stopped_status(paths: Paths, name: str) -> dict[str, Any]:
    """STOP, with the reason the daemon gave when it last exited (a maxloop stop, a refused start…)."""
    from mirrorcore.state import DurableStore

    store = DurableStore(paths.state_dir(name))
    durable = store.load()
    last = store.load_last_status() or {}
    start_hint = f"start it with `mirrorctl start -m {name}`"
    if last.get("state") == "STOP" and last.get("reason"):
        reason = f"{last['reason']} ({start_hint})"
    elif last.get("state"):
        was = f"{last['state']} {last.get('color', '')}"
        reason = f"the daemon is not running (it was {was} when it ended); {start_hint}"
    else:
        reason = f"the module is not running on this node; {start_hint}"
    return {
        "module": name,
        "node": _node_name(paths, name),
        "state": "STOP",
        "color": "red",
        "reason": reason,
        "uptodate": durable.uptodate,
        "generation": durable.generation,
        "peer": {"node": "?", "state": "UNKNOWN", "color": "red", "reason": "this node's daemon is not running"},
    }


@main.command()
@module_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("-l", "local_only", is_flag=True, help="This node only.")
@click.option("-q", "quiet", is_flag=True, help="Print nothing; exit STOP 0, WAIT 1, ALONE 2, PRIM 3, SECOND 4.")
def state(module: str | None, initiator: str | None, as_json: bool, local_only: bool, quiet: bool) -> None:
    """Show the module's state on both nodes, with the reason."""
    paths = _paths()
    name = module or _default_module(paths)
    status = _local_status(paths, name)
    if quiet:
        sys.exit(STATE_EXIT_CODES.get(status["state"], 1))
    if as_json:
        out.print_json(json.dumps(status))
        return
    _print_node(status)
    if not local_only:
        _print_node(status["peer"], peer=True)


def _print_node(status: dict[str, Any], *, peer: bool = False) -> None:
    style = COLOR_STYLES.get(status.get("color", "red"), "bold")
    label = f"{status.get('node', '?'):<8}"
    line = f"{label} [{style}]{status.get('state', '?'):<7} {status.get('color', '')}[/]"
    if not peer and "uptodate" in status:
        line += "  uptodate" if status["uptodate"] else "  [red]not uptodate[/]"
    out.print(line)
    if status.get("reason"):
        out.print(f"         {status['reason']}", style="dim" if peer else None)
    if not peer:
        from mirrorcore.cli_watch import status_lines
        from mirrorcore.rfsctl import status_lines as rfs_lines

        for extra in [*status_lines(status), *rfs_lines(status)]:
            out.print(f"         {extra}", markup=False)


# ---- logs ---------------------------------------------------------------------------------


def _node_name(paths: Paths, module: str) -> str:
    """This node's name in the cluster: MIRRORCORE_NODE, NODE (set for scripts), the config, else the host name."""
    named = os.environ.get("MIRRORCORE_NODE") or os.environ.get("NODE")
    if named:
        return named
    from mirrorcore.config import ConfigError, load_module

    try:
        return load_module(paths, module).node
    except (ConfigError, OSError):
        return os.uname().nodename


def _module_log(name: str) -> ModuleLog:
    paths = _paths()
    return ModuleLog(paths.log_dir(name), _node_name(paths, name))


@main.command()
@module_options
@click.option("-n", "lines", default=50, show_default=True, help="How many lines (0: all).")
def log(module: str | None, initiator: str | None, lines: int) -> None:
    """Print the module log."""
    name = module or _default_module(_paths())
    for line in _module_log(name).tail(lines):
        style = "red" if " E " in line[:30] else None
        out.print(line, style=style, markup=False)


def _print_to_log(level: str) -> Callable[..., None]:
    @module_options
    @click.argument("message", nargs=-1, required=True)
    def command(module: str | None, initiator: str | None, message: tuple[str, ...]) -> None:
        name = module or _default_module(_paths())
        _module_log(name).write(" ".join(message), level=level, initiator=initiator or os.environ.get("MODULE_SCRIPT"))

    return command


main.command("printi", help="Write an information message to the module log.")(_print_to_log("I"))
main.command("printe", help="Write an error message to the module log.")(_print_to_log("E"))


# ---- the daemon -----------------------------------------------------------------------------


def _check_config(paths: Paths, name: str) -> ModuleConfig:
    from mirrorcore.config import ConfigError, load_module

    try:
        return load_module(paths, name)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    except FileNotFoundError as exc:
        raise CliError(f"{exc.filename}: missing. Fix: create it (see `mirrorctl module new {name}`)") from None


@main.command()
@module_options
@click.option("--exit-on-stop", is_flag=True, help="Exit once the module is stopped (used by start/prim/second).")
@click.option("--start", "start_now", is_flag=True, help="Start the module once running (the boot unit uses it).")
def daemon(module: str | None, initiator: str | None, exit_on_stop: bool, start_now: bool) -> None:
    """Run the module's daemon in the foreground (for systemd)."""
    import trio

    from mirrorcore.daemon import Daemon
    from mirrorcore.keys import KeyFileError as ClusterKeyError
    from mirrorcore.keys import load_key

    paths = _paths()
    name = module or _default_module(paths)
    config = _check_config(paths, name)
    try:
        key = load_key(paths.cluster_key)
    except ClusterKeyError as exc:
        raise CliError(str(exc)) from None
    try:
        trio.run(Daemon(paths, config, key, exit_on_stop=exit_on_stop).run, "start" if start_now else None)
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
    except BaseExceptionGroup as group:
        in_use = group.subgroup(lambda e: isinstance(e, OSError) and e.errno == errno.EADDRINUSE)
        if in_use is None:
            raise
        leaf: BaseException = in_use
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        raise CliError(
            f"a port of module {name} is already in use on this node ({leaf}): it uses TCP "
            f"{config.port} (HTTP), UDP {config.port} (heartbeats) and TCP {config.port + 1}+ (replication); "
            f"stop what holds it, or choose another <service port> in {paths.userconfig(name)}"
        ) from None


# ---- configuration --------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Check configuration files."""


@config.command("check")
@module_options
def config_check(module: str | None, initiator: str | None) -> None:
    """Parse and validate cluster.xml and the module's userconfig.xml."""
    paths = _paths()
    name = module or _default_module(paths)
    cfg = _check_config(paths, name)
    out.print(f"[green]ok[/]: module {name} on node {cfg.node} (peer {cfg.peer}); {paths.userconfig(name)}")


@main.group()
def module() -> None:
    """Create modules."""


@module.command("new")
@click.argument("name")
@click.option("--force", is_flag=True, help="Overwrite an existing module.")
def module_new(name: str, force: bool) -> None:
    """Write a working module skeleton (conf/userconfig.xml and bin/ scripts)."""
    from mirrorcore.skeleton import write_module_skeleton

    try:
        where = write_module_skeleton(_paths(), name, force=force)
    except FileExistsError as exc:
        raise CliError(f"{exc}; pass --force to overwrite it") from None
    out.print(f"module {name} written to {where}; edit conf/userconfig.xml, then `mirrorctl config check -m {name}`")


@main.group()
def cluster() -> None:
    """Cluster-wide files."""


@cluster.command("genkey")
@click.option("--force", is_flag=True, help="Replace an existing key.")
def cluster_genkey(force: bool) -> None:
    """Write a new cluster key; copy the same file to the other node."""
    from mirrorcore.keys import KeyFileError as ClusterKeyError
    from mirrorcore.keys import generate_key

    path = _paths().cluster_key
    try:
        generate_key(path, force=force)
    except ClusterKeyError as exc:
        raise CliError(str(exc)) from None
    out.print(f"cluster key written to {path}; copy it to the other node with the same path and mode 0600")


# ---- boot -----------------------------------------------------------------------------------


@main.command()
@module_options
@click.argument("what", type=click.Choice(["on", "off", "status"]))
def boot(module: str | None, initiator: str | None, what: str) -> None:
    """Start the module when the node boots (on/off), or show whether it will (status)."""
    from mirrorcore import bootctl

    paths = _paths()
    name = module or _default_module(paths)
    if what == "status":
        out.print(bootctl.status(paths, name))
        return
    out.print(bootctl.set_boot(paths, name, what == "on"))
    _module_log(name).write(f"Boot set {what}", initiator=initiator)


def _register_demo() -> None:
    from mirrorcore.demo import demo

    main.add_command(demo)


def _register_watch() -> None:
    from mirrorcore.cli_watch import register

    register(main, module_options, lambda module, cmd, initiator, args: _report(_send(module, cmd, initiator, args)))


def _register_rfs() -> None:
    from mirrorcore.cli_rfs import register

    def state_dir(module: str | None) -> tuple[str, Path]:
        paths = _paths()
        name = module or _default_module(paths)
        return name, paths.state_dir(name)

    register(main, module_options, _send, state_dir)


_register_demo()
_register_watch()
_register_rfs()

if __name__ == "__main__":
    main()
