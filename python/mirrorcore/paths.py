"""Where mirrorcore keeps its files on a node (SPEC §1).

Every root can be moved with an environment variable, for tests and for
nodes that keep their files elsewhere; the two-node lab instead bind-mounts
per-node directories over the default paths, so daemons there use defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The roots of one node's mirrorcore files."""

    etc: Path = Path("/etc/mirrorcore")
    lib: Path = Path("/var/lib/mirrorcore")
    log: Path = Path("/var/log/mirrorcore")
    run: Path = Path("/run/mirrorcore")

    @classmethod
    def from_env(cls) -> Paths:
        """Default roots, each overridable by MIRRORCORE_ETC, _LIB, _LOG and _RUN."""
        default = cls()
        return cls(
            etc=Path(os.environ.get("MIRRORCORE_ETC", default.etc)),
            lib=Path(os.environ.get("MIRRORCORE_LIB", default.lib)),
            log=Path(os.environ.get("MIRRORCORE_LOG", default.log)),
            run=Path(os.environ.get("MIRRORCORE_RUN", default.run)),
        )

    @property
    def cluster_xml(self) -> Path:
        return self.etc / "cluster.xml"

    @property
    def cluster_key(self) -> Path:
        return self.etc / "cluster.key"

    @property
    def modules(self) -> Path:
        return self.etc / "modules"

    def module_dir(self, module: str) -> Path:
        return self.modules / module

    def userconfig(self, module: str) -> Path:
        return self.module_dir(module) / "conf" / "userconfig.xml"

    def bin_dir(self, module: str) -> Path:
        return self.module_dir(module) / "bin"

    def state_dir(self, module: str) -> Path:
        return self.lib / module

    def log_dir(self, module: str) -> Path:
        return self.log / module

    def socket(self, module: str) -> Path:
        """The Unix socket on which the module's daemon takes commands."""
        return self.run / f"{module}.sock"

    def pidfile(self, module: str) -> Path:
        return self.run / f"{module}.pid"
