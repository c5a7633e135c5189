"""mirrorctl without a running daemon: config, skeletons, keys, logs, state and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mirrorcore.cli import main
from mirrorcore.keys import load_key

CLUSTER = """<cluster><lans>
  <lan name="default"><node name="n1" addr="10.9.0.1"/><node name="n2" addr="10.9.0.2"/></lan>
</lans></cluster>
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for root in ("etc", "lib", "log", "run"):
        monkeypatch.setenv(f"MIRRORCORE_{root.upper()}", str(tmp_path / root))
    monkeypatch.setenv("MIRRORCORE_NODE", "n1")
    monkeypatch.delenv("MIRRORCORE_MODULE", raising=False)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "cluster.xml").write_text(CLUSTER)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_module_new_then_config_check_passes(env: Path) -> None:
    assert run("module", "new", "web").exit_code == 0
    checked = run("config", "check", "-m", "web")
    assert checked.exit_code == 0, checked.output
    assert "module web on node n1 (peer n2)" in checked.output
    again = run("module", "new", "web")
    assert again.exit_code != 0
    assert "--force" in again.output


def test_config_check_names_file_line_and_fix(env: Path) -> None:
    run("module", "new", "web")
    conf = env / "etc" / "modules" / "web" / "conf" / "userconfig.xml"
    conf.write_text(conf.read_text().replace('<heartbeat name="default"/>', '<heartbeat name="privat"/>'))
    checked = run("config", "check", "-m", "web")
    assert checked.exit_code != 0
    assert f"{conf}:" in checked.output
    assert "privat" in checked.output
    assert "Fix:" in checked.output


def test_the_only_module_is_the_default_and_several_need_m(env: Path) -> None:
    run("module", "new", "web")
    assert run("config", "check").exit_code == 0
    run("module", "new", "db")
    ambiguous = run("config", "check")
    assert ambiguous.exit_code != 0
    assert "-m MODULE" in ambiguous.output
    assert "db, web" in ambiguous.output


def test_genkey_writes_a_private_key_once(env: Path) -> None:
    assert run("cluster", "genkey").exit_code == 0
    key_path = env / "etc" / "cluster.key"
    assert len(load_key(key_path)) == 32
    assert key_path.stat().st_mode & 0o777 == 0o600
    before = key_path.read_bytes()
    assert run("cluster", "genkey").exit_code != 0
    assert key_path.read_bytes() == before
    assert run("cluster", "genkey", "--force").exit_code == 0
    assert key_path.read_bytes() != before


def test_printi_and_printe_reach_the_module_log_with_the_initiator(env: Path) -> None:
    run("module", "new", "web")
    assert run("printi", "-m", "web", "all", "good").exit_code == 0
    assert run("printe", "-m", "web", "-i", "start_prim", "it broke").exit_code == 0
    shown = run("log", "-m", "web")
    lines = shown.output.splitlines()
    assert lines[-2].endswith("I n1 [admin] all good")
    assert lines[-1].endswith("E n1 [start_prim] it broke")


def test_state_of_a_stopped_module(env: Path) -> None:
    run("module", "new", "web")
    assert run("state", "-m", "web", "-lq").exit_code == 0  # STOP
    shown = run("state", "-m", "web")
    assert "STOP" in shown.output
    assert "mirrorctl start -m web" in shown.output


def test_commands_for_a_stopped_module_say_how_to_start_it(env: Path) -> None:
    run("module", "new", "web")
    refused = run("stop", "-m", "web")
    assert refused.exit_code != 0
    assert "not running on this node" in refused.output
    assert "mirrorctl start -m web" in refused.output


@pytest.mark.parametrize(
    "args", [("get", "-r", "tcp.db"), ("set", "-r", "custom.app", "-v", "down"), ("checker", "off"), ("errd", "on")]
)
def test_resource_and_checker_commands_need_the_daemon_and_say_how_to_start_it(env: Path, args: tuple[str]) -> None:
    run("module", "new", "web")
    refused = run(*args, "-m", "web")
    assert refused.exit_code == 1
    assert "mirrorctl start -m web" in refused.output


def test_set_takes_only_up_or_down(env: Path) -> None:
    refused = run("set", "-r", "custom.app", "-v", "maybe")
    assert refused.exit_code == 2
    assert "'up', 'down'" in refused.output


def test_unknown_command_is_refused(env: Path) -> None:
    result = run("frobnicate")
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_start_on_a_broken_config_starts_nothing(env: Path) -> None:
    run("module", "new", "web")
    conf = env / "etc" / "modules" / "web" / "conf" / "userconfig.xml"
    conf.write_text(conf.read_text().replace('maxloop="3"', 'maxloop="three"'))
    result = run("start", "-m", "web")
    assert result.exit_code != 0
    assert "maxloop" in result.output
    assert not (env / "run" / "web.sock").exists()


def test_boot_on_off_status(env: Path) -> None:
    run("module", "new", "web")
    assert "boot off (from userconfig.xml)" in run("boot", "-m", "web", "status").output
    assert run("boot", "-m", "web", "on").exit_code == 0
    assert "boot on (set with `mirrorctl boot`)" in run("boot", "-m", "web", "status").output
