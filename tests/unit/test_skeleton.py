"""skeleton.py: `mirrorctl module new` writes a module that loads and whose scripts work."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from mirrorcore.config import load_module
from mirrorcore.paths import Paths
from mirrorcore.skeleton import SCRIPTS, write_module_skeleton

CLUSTER = """<cluster><lans>
  <lan name="default"><node name="n1" addr="10.9.0.1"/><node name="n2" addr="10.9.0.2"/></lan>
</lans></cluster>
"""


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths(etc=tmp_path / "etc", lib=tmp_path / "lib", log=tmp_path / "log", run=tmp_path / "run")
    p.etc.mkdir()
    p.cluster_xml.write_text(CLUSTER)
    return p


def test_skeleton_is_a_valid_module(paths: Paths) -> None:
    where = write_module_skeleton(paths, "web")

    assert where == paths.module_dir("web")
    cfg = load_module(paths, "web", node="n1")
    assert (cfg.mode, cfg.node, cfg.peer, cfg.failover) == ("mirror", "n1", "n2", True)
    assert [hb.lan for hb in cfg.heart.heartbeats] == ["default"]
    assert dict(cfg.user.vars) == {"SERVICES": ""}
    assert (cfg.rfs, cfg.vips) == (None, ())  # the examples are commented out
    text = paths.userconfig("web").read_text()
    assert "<vip>" in text
    assert "<rfs" in text


def test_scripts_are_executable_posix_sh(paths: Paths) -> None:
    write_module_skeleton(paths, "web")
    for script in SCRIPTS:
        path = paths.bin_dir("web") / script
        assert path.stat().st_mode & stat.S_IXUSR, script
        assert path.read_text().startswith("#!/bin/sh\n")
        subprocess.run(["sh", "-n", str(path)], check=True)


def test_refuses_to_overwrite_unless_forced(paths: Paths) -> None:
    write_module_skeleton(paths, "web")
    paths.userconfig("web").write_text("<safe>edited</safe>")

    with pytest.raises(FileExistsError, match="module web already exists"):
        write_module_skeleton(paths, "web")
    assert paths.userconfig("web").read_text() == "<safe>edited</safe>"

    write_module_skeleton(paths, "web", force=True)
    assert "<service" in paths.userconfig("web").read_text()


def test_rejects_bad_module_name(paths: Paths) -> None:
    with pytest.raises(ValueError, match="not a valid module name"):
        write_module_skeleton(paths, "../evil")


def run_script(paths: Paths, tmp_path: Path, script: str, args: list[str], fail: str = "") -> list[str]:
    """Runs a skeleton script with fake systemctl and mirrorctl; returns the calls they saw."""
    fake = tmp_path / "fakebin"
    fake.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    for tool in ("systemctl", "mirrorctl"):
        (fake / tool).write_text(
            f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n'
            f'[ "{tool} $*" = "systemctl start {fail}" ] && exit 1\n'
            f'case "$*" in is-*) exit 1;; esac\nexit 0\n'
        )
        (fake / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "MODULE": "web", "NODE": "n1", "SERVICES": "a b c"}
    proc = subprocess.run(
        [str(paths.bin_dir("web") / script), *args], env=env, capture_output=True, text=True, check=False
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return [f"rc={proc.returncode}", *lines]


def test_start_prim_starts_services_in_order_and_stops_module_on_failure(paths: Paths, tmp_path: Path) -> None:
    write_module_skeleton(paths, "web")

    ok = run_script(paths, tmp_path, "start_prim", ["WAIT", "ALONE", "start"])
    assert ok == ["rc=0", "systemctl start a", "systemctl start b", "systemctl start c"]

    failed = run_script(paths, tmp_path, "start_prim", ["WAIT", "ALONE", "start"], fail="b")
    assert failed[0] == "rc=1"
    assert failed[1:3] == ["systemctl start a", "systemctl start b"]
    assert "mirrorctl printe start_prim: systemctl start b failed" in failed
    assert "mirrorctl stop -m web -i start_prim" in failed
    assert "systemctl start c" not in failed


def test_stop_prim_stops_in_reverse_and_kills_when_forced(paths: Paths, tmp_path: Path) -> None:
    write_module_skeleton(paths, "web")

    nice = run_script(paths, tmp_path, "stop_prim", ["PRIM", "STOP", "stop"])
    assert nice == ["rc=0", "systemctl stop c", "systemctl stop b", "systemctl stop a"]

    forced = run_script(paths, tmp_path, "stop_prim", ["PRIM", "STOP", "force"])
    assert forced[0] == "rc=0"
    assert forced[1::2] == [
        "systemctl kill --signal=KILL c",
        "systemctl kill --signal=KILL b",
        "systemctl kill --signal=KILL a",
    ]
