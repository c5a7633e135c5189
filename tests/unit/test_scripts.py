"""Module scripts: arguments, environment, logs, failures and the nice/force stop timeouts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from mirrorcore.scripts import ScriptRunner


def write_script(bin_dir: Path, name: str, body: str) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def process_state(pid: int) -> str:
    """The kernel's one-letter state of a process ("Z": zombie), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except FileNotFoundError:
        return "gone"


@pytest.fixture
def runner(tmp_path: Path) -> ScriptRunner:
    return ScriptRunner("am", tmp_path / "bin", tmp_path / "log", {"SERVICES": "postgresql"}, 0.3, 0.3, node="node1")


def log_text(runner: ScriptRunner) -> str:
    return (runner.log_dir / "script.log").read_text()


async def test_a_script_gets_its_arguments_and_the_module_environment(runner: ScriptRunner):
    write_script(
        runner.bin_dir,
        "start_prim",
        'echo "args=$1 $2 $3 services=$SERVICES module=$MODULE/$MIRRORCORE_MODULE node=$NODE"\n'
        'command -v "$(basename "$0")" >/dev/null; echo "path=$PATH"\n',
    )
    result = await runner.run("start_prim", "WAIT", "ALONE", "start")
    assert result.ok
    assert result.returncode == 0
    log = log_text(runner)
    assert "args=WAIT ALONE start services=postgresql module=am/am node=node1" in log
    assert f"path={os.path.dirname(sys.executable)}{os.pathsep}" in log
    assert "start_prim WAIT ALONE start" in log.splitlines()[0]  # the header says which run it was


async def test_output_is_appended_to_the_script_log(runner: ScriptRunner):
    write_script(runner.bin_dir, "prestart", "echo out; echo err >&2\n")
    await runner.run("prestart", "STOP", "WAIT", "start")
    await runner.run("prestart", "STOP", "WAIT", "start")
    log = log_text(runner)
    assert log.count("out\n") == 2
    assert log.count("err\n") == 2


async def test_a_failing_script_reports_its_exit_code_and_last_line(runner: ScriptRunner):
    write_script(runner.bin_dir, "start_prim", "echo starting\necho 'postgres: cannot bind port' >&2\nexit 3\n")
    result = await runner.run("start_prim", "WAIT", "ALONE", "start")
    assert not result.ok
    assert result.returncode == 3
    assert "exit code 3" in result.detail
    assert "postgres: cannot bind port" in result.detail


async def test_a_missing_optional_script_is_skipped(runner: ScriptRunner):
    result = await runner.run("start_second", "WAIT", "SECOND", "start")
    assert result.ok
    assert result.skipped


async def test_a_missing_mandatory_script_is_an_error_naming_it(runner: ScriptRunner):
    result = await runner.run("start_prim", "WAIT", "ALONE", "start")
    assert not result.ok
    assert not result.skipped
    assert str(runner.bin_dir / "start_prim") in result.detail


async def test_a_script_that_is_not_executable_is_an_error_with_the_fix(runner: ScriptRunner):
    write_script(runner.bin_dir, "prestart", "true\n").chmod(0o644)
    result = await runner.run("prestart", "STOP", "WAIT", "start")
    assert not result.ok
    assert "chmod +x" in result.detail


async def test_a_slow_stop_script_is_rerun_with_force(runner: ScriptRunner):
    write_script(runner.bin_dir, "stop_prim", 'echo "run $3"\nif [ "$3" != force ]; then sleep 30; fi\n')
    with trio.fail_after(5):
        result = await runner.run("stop_prim", "PRIM", "STOP", "stop")
    assert result.ok
    assert "force" in result.detail
    log = log_text(runner)
    assert "run stop" in log
    assert "run force" in log
    assert log.index("run stop") < log.index("run force")


async def test_a_stuck_forced_stop_is_killed_with_its_children(runner: ScriptRunner, tmp_path: Path):
    pidfile = tmp_path / "child.pid"
    write_script(runner.bin_dir, "stop_prim", f'sleep 30 &\necho $! > {pidfile}\necho "run $3"\nwait\n')
    with trio.fail_after(5):
        result = await runner.run("stop_prim", "PRIM", "STOP", "stop")
    assert not result.ok
    assert "killed" in result.detail
    assert log_text(runner).count("run ") == 2
    child = int(pidfile.read_text())
    await trio.sleep(0.1)
    # The background child of the forced run died with it (it may linger only as a zombie of init).
    assert process_state(child) in ("gone", "Z")


async def test_start_scripts_have_no_nice_timeout(runner: ScriptRunner):
    write_script(runner.bin_dir, "start_prim", "sleep 0.8\necho started\n")
    result = await runner.run("start_prim", "WAIT", "ALONE", "start")
    assert result.ok
    assert "force" not in log_text(runner)
    assert "started" in log_text(runner)


async def test_a_start_script_may_leave_a_daemon_running(runner: ScriptRunner, tmp_path: Path):
    pidfile = tmp_path / "daemon.pid"
    write_script(runner.bin_dir, "start_prim", f"sleep 30 &\necho $! > {pidfile}\necho launched\n")
    try:
        with trio.fail_after(5):
            result = await runner.run("start_prim", "WAIT", "ALONE", "start")
        assert result.ok
        os.kill(int(pidfile.read_text()), 0)  # still running: normal exit does not kill the app
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 9)


# ---- run_program: an errd handler, run as the scripts are --------------------------------


async def test_a_program_gets_its_arguments_the_module_environment_and_extra_variables(
    runner: ScriptRunner, tmp_path: Path
) -> None:
    handler = write_script(
        tmp_path / "handlers",
        "on_down",
        'echo "args=$* module=$MODULE node=$NODE services=$SERVICES resource=$RESOURCE count=$COUNT"\n'
        'echo "cwd=$(pwd)"\nexit 4\n',
    )
    runner.bin_dir.mkdir()
    result = await runner.run_program(
        handler, ("postgres", "ALONE"), limit=5, env={"RESOURCE": "proc.pg", "COUNT": "0"}
    )
    assert (result.ok, result.returncode, result.script) == (False, 4, str(handler))
    assert result.detail.startswith(f"{handler} exited with code 4: ")
    log = log_text(runner)
    assert "args=postgres ALONE module=am node=node1 services=postgresql resource=proc.pg count=0" in log
    assert f"cwd={runner.bin_dir}" in log
    assert "on_down postgres ALONE" in log.splitlines()[0]  # the header names the run
    ok = await runner.run_program(write_script(tmp_path / "handlers", "fine", "true\n"), (), limit=5)
    assert (ok.ok, ok.returncode, ok.detail) == (True, 0, f"{tmp_path / 'handlers/fine'} exited with code 0")


async def test_a_program_past_its_time_limit_is_killed_with_its_children(runner: ScriptRunner, tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    runner.bin_dir.mkdir()
    handler = write_script(tmp_path / "h", "slow", f"sleep 30 &\necho $! > {pidfile}\necho waiting\nwait\n")
    with trio.fail_after(5):
        result = await runner.run_program(handler, ("app", "PRIM"), limit=0.3)
    assert not result.ok
    assert result.returncode == -9
    assert result.detail == f"{handler} killed after its time limit of 0.3s: waiting"
    assert "=== slow: killed after 0.3s" in log_text(runner)
    await trio.sleep(0.1)
    assert process_state(int(pidfile.read_text())) in ("gone", "Z")


async def test_a_missing_or_non_executable_program_is_reported_with_the_fix(
    runner: ScriptRunner, tmp_path: Path
) -> None:
    missing = await runner.run_program(tmp_path / "nope", ("app", "PRIM"), limit=5)
    assert (missing.ok, missing.returncode) == (False, None)
    assert missing.detail == f"{tmp_path / 'nope'} is missing. Fix: create it and chmod +x it."
    plain = write_script(tmp_path / "h", "plain", "true\n")
    plain.chmod(0o644)
    result = await runner.run_program(plain, ("app", "PRIM"), limit=5)
    assert result.detail == f"{plain} is not executable. Fix: chmod +x {plain}."
