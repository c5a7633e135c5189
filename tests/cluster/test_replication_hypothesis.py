"""Random operation sequences through the mount on node1, from three processes at once.

Hypothesis draws three programs over a small shared namespace (so that processes race on
the same names) from every kind of mutation the mount intercepts; after they ran, the two
nodes' trees must be identical in content and metadata. Each example costs seconds with
real daemons, so the example count is small; the space is small too, so collisions are common.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trees import wait_identical

from mirrorcore.demoset import DemoCluster, DemoSettings

pytestmark = [pytest.mark.cluster, pytest.mark.root]

PROGRAM = Path(__file__).with_name("program.py")
ROOT = "/srv/demo/hyp"
FILES = ["a", "b", "c", "d/a", "d/b", "e/a", "d/f/a"]
DIRS = ["d", "e", "d/f"]
ANY = FILES + DIRS

name = st.sampled_from(FILES)
anything = st.sampled_from(ANY)
byte = st.integers(0, 255)
ops = st.one_of(
    st.tuples(st.just("write"), name, st.integers(0, 300_000), byte, st.integers(1, 20_000)),
    st.tuples(st.just("append"), name, byte, st.integers(1, 5_000)),
    st.tuples(st.just("truncate"), name, st.integers(0, 100_000)),
    st.tuples(st.just("mkdir"), st.sampled_from(DIRS)),
    st.tuples(st.just("rmdir"), st.sampled_from(DIRS)),
    st.tuples(st.just("unlink"), name),
    st.tuples(st.just("rename"), anything, anything),
    st.tuples(st.just("link"), name, name),
    st.tuples(st.just("symlink"), st.sampled_from(["a", "../b", "/etc/hostname", "nowhere"]), name),
    st.tuples(st.just("chmod"), anything, st.sampled_from([0o600, 0o644, 0o755, 0o4755, 0o700])),
    st.tuples(st.just("chown"), anything, st.sampled_from([0, 1000]), st.sampled_from([0, 1000])),
    st.tuples(st.just("utime"), anything, st.integers(0, 2**40), st.integers(0, 2**40)),
    st.tuples(st.just("setxattr"), anything, st.sampled_from(["k0", "k1"]), st.text("xyz", max_size=30)),
    st.tuples(st.just("removexattr"), anything, st.sampled_from(["k0", "k1"])),
    st.tuples(st.just("fsync"), anything),
    st.tuples(st.just("mmap"), name, st.integers(0, 10**6), byte),
    st.tuples(st.just("sync_write"), name, st.integers(0, 100_000), st.integers(1, 8192)),
    st.tuples(st.just("unlink_open"), name),
    # modes 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE, ZERO_RANGE|KEEP_SIZE
    st.tuples(
        st.just("fallocate"), name, st.sampled_from([0, 1, 3, 16, 17]), st.integers(0, 300_000), st.integers(1, 100_000)
    ),
)
programs = st.lists(st.lists(ops, max_size=30), min_size=3, max_size=3)


@pytest.mark.parametrize("mode", ["none", "second"])
def test_random_concurrent_operations_leave_identical_trees(lab, mode):
    cluster = DemoCluster(lab)
    cluster.install(DemoSettings(async_mode=mode))
    cluster.start_pair()

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(programs)
    def check(three_programs: list[list[tuple[object, ...]]]) -> None:
        lab.exec("node1", ["sh", "-c", f"rm -rf {ROOT} && mkdir -p {ROOT}/d/f {ROOT}/e"])
        runners = []
        ran: list[int] = []
        for program in three_programs:
            proc = lab.popen("node1", [sys.executable, str(PROGRAM), ROOT], stdin=-1, stdout=-1, stderr=-1)
            runners.append((proc, json.dumps(program)))
        for proc, text in runners:
            out, err = proc.communicate(text, timeout=120)
            assert proc.returncode == 0, err
            ran.append(json.loads(out)["failed"])
        assert wait_identical(lab) == []
        executed.append(sum(len(p) for p in three_programs) - sum(ran))

    executed: list[int] = []
    check()
    assert sum(executed) > 0, "no operation succeeded: the test exercised nothing"
    receiver = cluster.state("node2")["rfs"]["receivers"][0]
    assert (receiver["frames_rejected"], receiver["apply_errors"]) == (0, 0)
