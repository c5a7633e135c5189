"""`mirrorctl boot on|off|status`: start a module when the node boots.

The choice is kept in the module's state directory (it overrides `boot=` of
userconfig.xml). Where systemd runs, a template unit `mirrorcore@.service`
runs `mirrorctl daemon -m NAME --start`, and boot on/off enables/disables it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from mirrorcore.paths import Paths

UNIT_PATH = Path("/etc/systemd/system/mirrorcore@.service")
UNIT = """[Unit]
Description=mirrorcore module %i
After=network-online.target
Wants=network-online.target

[Service]
ExecStart={python} -m mirrorcore.cli daemon -m %i --start
ExecStop={python} -m mirrorcore.cli stop -m %i
KillMode=mixed
TimeoutStopSec=900

[Install]
WantedBy=multi-user.target
"""


def _flag(paths: Paths, module: str) -> Path:
    return paths.state_dir(module) / "boot"


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def configured(paths: Paths, module: str) -> bool | None:
    """The boot choice made with `mirrorctl boot`, or None when only userconfig.xml decides."""
    try:
        return _flag(paths, module).read_text().strip() == "on"
    except FileNotFoundError:
        return None


def set_boot(paths: Paths, module: str, on: bool) -> str:
    """Records the choice and applies it to systemd when present; returns what was done."""
    flag = _flag(paths, module)
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.write_text("on\n" if on else "off\n")
    if not _systemd_running():
        return f"boot {'on' if on else 'off'} recorded for {module} (systemd is not running here: nothing enabled)"
    if on and not UNIT_PATH.exists():
        UNIT_PATH.write_text(UNIT.format(python=sys.executable))
        subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "enable" if on else "disable", f"mirrorcore@{module}.service"], check=True)
    return f"boot {'on' if on else 'off'}: mirrorcore@{module}.service {'enabled' if on else 'disabled'}"


def status(paths: Paths, module: str) -> str:
    """A sentence saying whether the module starts at boot and why."""
    choice = configured(paths, module)
    if choice is not None:
        return f"boot {'on' if choice else 'off'} (set with `mirrorctl boot`)"
    from mirrorcore.config import load_module

    config = load_module(paths, module)
    return f"boot {'on' if config.boot else 'off'} (from userconfig.xml)"
