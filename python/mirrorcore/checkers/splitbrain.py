"""The split-brain witness (SPEC §5): asked only when every heartbeat is lost.

The node that reaches a witness goes (or stays) ALONE; the other waits. `exec="ping"` pings the
addresses of `arg` from this process (no binary needed); any other `exec` is a program whose exit
status 0 means "the witness is reachable".
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio

from mirrorcore._config_check import SplitBrainCheck
from mirrorcore.checkers.ping import reachable

__all__ = ["WITNESS_TIMEOUT", "witness_reachable"]


#: Seconds allowed to reach the witness; a program still running then counts as a failure.
WITNESS_TIMEOUT = 5.0


async def witness_reachable(
    check: SplitBrainCheck, *, bin_dir: Path | None = None, within: float = WITNESS_TIMEOUT
) -> bool:
    """Whether this node reaches the witness within `within` seconds.

    Args:
        check: the `<splitbrain>` element.
        bin_dir: where a relative `exec` other than "ping" is looked up.
        within: seconds allowed (the daemon shortens it when heartbeats are fast: the node that
            misses the witness keeps the application that long while the other takes over).

    Returns:
        True when a witness address answers (or the program exits with status 0). The daemon sets
        `splitbrain.<ident>` up or down from it and tells the state machine.
    """
    if check.exec == "ping":
        return await reachable(check.args, within)
    exe = Path(check.exec)
    if not exe.is_absolute() and bin_dir is not None:
        exe = bin_dir / exe
    with trio.move_on_after(within):
        try:
            result = await trio.run_process(
                [str(exe), *check.args],
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            return False
        return result.returncode == 0
    return False
