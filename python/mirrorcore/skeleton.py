"""`mirrorctl module new`: a working module skeleton from the packaged templates.

The templates live in `mirrorcore/templates/module/` (shipped in the wheel; read through
importlib.resources so they work from a zip or an editable install alike).
"""

from __future__ import annotations

import os
import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from mirrorcore.paths import Paths

__all__ = ["SCRIPTS", "write_module_skeleton"]

SCRIPTS = ("prestart", "start_prim", "stop_prim", "poststop")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _template(*parts: str) -> Traversable:
    node = resources.files("mirrorcore").joinpath("templates", "module")
    for part in parts:
        node = node.joinpath(part)
    return node


def _write(path: Path, text: str, mode: int) -> None:
    # write beside and rename, so that a crash never leaves a half-written script
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    os.replace(tmp, path)


def write_module_skeleton(paths: Paths, module: str, *, force: bool = False) -> Path:
    """Writes `conf/userconfig.xml` and the `bin/` scripts of a new mirror module.

    The userconfig has a `SERVICES` macro (systemd units, empty to start with), a heartbeat
    on the LAN "default", and commented examples of `<vip>` and `<rfs>`. The scripts start
    the units of `$SERVICES` in order and stop them in reverse.

    Args:
        paths: where the node keeps its files.
        module: the module name.
        force: overwrite an existing module's userconfig and scripts.

    Returns:
        The module's directory.

    Raises:
        ValueError: the module name is not valid.
        FileExistsError: the module already exists and `force` is false.
    """
    if not _MODULE_NAME.fullmatch(module):
        raise ValueError(f"{module!r} is not a valid module name: use letters, digits, . _ - (max 64)")
    directory = paths.module_dir(module)
    conf = paths.userconfig(module)
    bin_dir = paths.bin_dir(module)
    if not force and (conf.exists() or any((bin_dir / s).exists() for s in SCRIPTS)):
        raise FileExistsError(f"module {module} already exists in {directory}")
    conf.parent.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    text = _template("conf", "userconfig.xml").read_text(encoding="utf-8").replace("@MODULE@", module)
    _write(conf, text, 0o644)
    for script in SCRIPTS:
        _write(bin_dir / script, _template("bin", script).read_text(encoding="utf-8"), 0o755)
    return directory
