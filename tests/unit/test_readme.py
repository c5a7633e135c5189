"""The README's configuration reference is a configuration that loads."""

from __future__ import annotations

import re
from pathlib import Path

from mirrorcore.config import load_module
from mirrorcore.paths import Paths

README = Path(__file__).resolve().parents[2] / "README.md"


def _xml_blocks() -> list[str]:
    return re.findall(r"```xml\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_configuration_examples_load(tmp_path: Path) -> None:
    cluster, userconfig = _xml_blocks()[:2]
    paths = Paths(etc=tmp_path / "etc", lib=tmp_path / "lib", log=tmp_path / "log", run=tmp_path / "run")
    paths.userconfig("AM").parent.mkdir(parents=True)
    paths.cluster_xml.write_text(cluster)
    paths.userconfig("AM").write_text(userconfig)
    config = load_module(paths, "AM", node="node1")
    assert (config.node, config.peer, config.port) == ("node1", "node2", 9010)
    assert config.heart.flow_lan == "private"
    assert config.rfs is not None
    assert config.rfs.async_mode == "second"
    assert [rule.label for rule in config.failover_rules] == ["db_down"]
