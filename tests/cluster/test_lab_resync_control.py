"""A resync an operator watches and steers, and one whose link breaks, on two real nodes.

Both start from `test_lab_resync.throttled_zone_resync`: the pair mirrored a tree of a few
thousand files, node2 stopped cleanly, 40 MiB changed on node1, node2 came back and resyncs the
zones at a throttled rate, so the resync lasts long enough to be paused, watched and cut. An
application rewrites the tree's files through node1's mount all along; the copies end identical
byte by byte (`trees.differences`) and by `mirrorctl verify`.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any

import pytest
from test_lab_resync import (
    DIR,
    churn,
    progress,
    rejoined_under_churn,
    stop_churn,
    throttled_zone_resync,
    verified,
    wait_progress,
)
from trees import wait_identical

from mirrorcore.demoset import DemoCluster
from mirrorcore.lab import Lab

pytestmark = [pytest.mark.cluster, pytest.mark.root]

#: node1's address on the default LAN, where its HTTP API listens (port 9010).
NODE1_API = "http://10.201.0.1:9010/api/state"
PROGRESS_LINE = f"Resync of {DIR} under way: "
PROGRESS_FIELDS = re.compile(
    r"zones \(content, \w+\), files \d+/\d+, [\d.]+ of [\d.]+ MiB compared, [\d.]+ MiB sent, "
    r"[\d.]+ MiB/s, ETA (\d+ s|\?)$"
)


def api_state(cluster: DemoCluster) -> dict[str, Any]:
    """node1's `/api/state`, asked from the client namespace as a console or a monitor would."""
    got = cluster.lab.exec("client", [sys.executable, "-m", "mirrorcore.demoapp", "get", NODE1_API])
    code, _, body = got.stdout.strip().split(" ", 2)
    assert code == "200", got.stdout
    state: dict[str, Any] = json.loads(body)
    return state


def wait_log(cluster: DemoCluster, node: str, text: str, timeout: float = 60) -> str:
    """Waits until `node`'s module log holds `text`; returns that line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in cluster.module_log(node).splitlines():
            if text in line:
                return line
        time.sleep(0.2)
    raise AssertionError(f"{node}'s module log never said {text!r}; it ends:\n{cluster.module_log(node)[-2000:]}")


def settled_bytes(cluster: DemoCluster) -> int:
    """node1's `bytes_done` once two readings 1 s apart agree (a chunk compared as the pause came may end)."""
    last = progress(cluster)["bytes_done"]
    for _ in range(10):
        time.sleep(1.0)
        now = progress(cluster)["bytes_done"]
        if now == last:
            return int(now)
        last = now
    raise AssertionError(f"bytes_done kept growing while paused (last {last})")


def test_an_operator_pauses_resumes_and_boosts_a_throttled_resync_and_watches_its_progress(lab: Lab) -> None:
    # 1 MiB/s: the resync outlasts the 10 s before its first progress line even if the application
    # truncates some of the changed files; the boost then ends it.
    cluster = throttled_zone_resync(lab, throttle="1M/s")
    app = churn(lab, seed=31)
    try:
        refused = cluster.ctl("node2", "resync", "pause")
        assert refused.returncode != 0
        assert "runs on the primary" in refused.stderr
        assert "run it on node1" in refused.stderr

        cluster.ctl("node1", "resync", "pause", check=True)
        wait_log(cluster, "node1", f"Resync of {DIR}: pause now paused")  # the worker's throttle took it
        held = settled_bytes(cluster)
        time.sleep(1.0)
        still = progress(cluster)
        assert (still["bytes_done"], still["phase"], still["state"]) == (held, "content", "paused")
        assert held < still["bytes_total"]
        # A console sees the same on the HTTP API.
        api = api_state(cluster)["rfs"]["resync"][DIR]
        assert (api["mode"], api["phase"], api["bytes_done"], api["state"]) == ("zones", "content", held, "paused")
        assert api["files_total"] == still["files_total"] > 0

        cluster.ctl("node1", "resync", "resume", check=True)
        resumed = wait_progress(cluster, "bytes done after resume", lambda p: p["bytes_done"] > held)
        assert resumed["state"] == "throttled"
        line = wait_log(cluster, "node1", PROGRESS_LINE)
        print(f"\nPROGRESS LINE: {line}")
        assert PROGRESS_FIELDS.search(line), line

        cluster.ctl("node1", "resync", "boost", check=True)
        wait_progress(cluster, "the boosted state", lambda p: p["state"] == "boosted")
    except BaseException:
        stop_churn(lab, app)
        raise
    during, done = rejoined_under_churn(lab, cluster, app)
    print(f"RESYNC: {done}")
    assert done["mode"] == "zones", done["reason"]
    assert done["state"] == "boosted"
    assert done["files_done"] == done["files_total"]
    assert during > 0  # the application wrote while the resync ran
    log = cluster.module_log("node1")
    for command, state in (("pause", "paused"), ("resume", "throttled"), ("boost", "boosted")):
        assert f"Resync {command} asked" in log
        assert f"Resync of {DIR}: {command} now {state}" in log
    assert wait_identical(lab, timeout=60) == []
    verified(cluster)


def test_a_link_broken_mid_resync_resumes_by_timestamp_when_it_returns(lab: Lab) -> None:
    """The flow LAN is cut during the content phase (heartbeats go on on the default LAN), then healed.

    The secondary never got the interrupted resync's mark: it still announces the copy id it shares
    with node1, whose record says that resync did not complete and whose tracking map (cleared when
    the resync began) was distrusted when the link dropped; so `choose_mode` says timestamp, not full.
    """
    cluster = throttled_zone_resync(lab)
    app = churn(lab, seed=32)
    try:
        cut = progress(cluster)
        lab.partition("private")
        broken = wait_progress(cluster, "the interruption", lambda p: p["phase"] == "interrupted", timeout=60)
        assert broken["bytes_done"] < broken["bytes_total"]
        wait_log(cluster, "node1", "the link dropped during the resync")
        away = cluster.state("node2")
        print(f"\nWHILE CUT: node2 {away['state']} {away['color']} uptodate={away['uptodate']}: {away['reason']}")
        assert away["uptodate"] is False  # a copy without its mark never serves the application
        assert cluster.state("node1")["rfs"]["mirroring"] is False
        lab.heal()
        resumed = wait_progress(cluster, "a new resync", lambda p: p["mode"] == "timestamp", timeout=60)
        assert "did not complete" in resumed["reason"]
    except BaseException:
        stop_churn(lab, app)
        raise
    during, done = rejoined_under_churn(lab, cluster, app)
    print(f"CUT AT: {cut}\nRESUMED: {done}")
    assert done["mode"] == "timestamp", done["reason"]
    assert done["files_done"] == done["files_total"]
    assert during > 0
    assert wait_identical(lab, timeout=60) == []
    verified(cluster)
