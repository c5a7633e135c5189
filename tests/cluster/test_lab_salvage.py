"""Split brain with writes on both sides: the loser's writes are saved before its copy is replaced."""

from __future__ import annotations

import json
import sys

import pytest
from trees import wait_identical

from mirrorcore.demoset import DemoCluster, DemoSettings
from mirrorcore.lab import Lab

pytestmark = [pytest.mark.cluster, pytest.mark.root]

DIR = "/srv/demo"


def write(lab: Lab, node: str, name: str, text: str) -> None:
    """Writes DIR/name through the node's mount (the application's view), durably."""
    code = f"import os\nwith open({DIR + '/' + name!r}, 'w') as f:\n f.write({text!r}); f.flush(); os.fsync(f.fileno())"
    lab.exec(node, [sys.executable, "-c", code], check=True)


def remove(lab: Lab, node: str, name: str) -> None:
    lab.exec(node, ["rm", f"{DIR}/{name}"], check=True)


def test_split_brain_loser_saves_what_it_wrote_alone_then_resyncs_to_the_winner(lab: Lab) -> None:
    cluster = DemoCluster(lab)
    cluster.install(DemoSettings())
    cluster.start_pair()
    write(lab, "node1", "shared.txt", "before the split")
    write(lab, "node1", "doomed.txt", "deleted on node2 during the split")
    assert not wait_identical(lab)

    lab.partition()
    cluster.wait_for("node2", "ALONE", timeout=20)
    assert cluster.state("node1")["state"] == "ALONE"
    write(lab, "node1", "winner.txt", "node1 alone")
    write(lab, "node2", "loser.txt", "node2 alone")
    write(lab, "node2", "shared.txt", "node2's version")
    remove(lab, "node2", "doomed.txt")

    lab.heal()
    # node1 ran the application longer: it keeps it; node2 saves its own writes, then resyncs.
    cluster.wait_for("node2", "SECOND", timeout=60)
    cluster.wait_for("node1", "PRIM", timeout=30)
    assert not wait_identical(lab), "node2's copy is not node1's after the resync"
    node2 = lab.host_path("node2", DIR)
    assert (node2 / "shared.txt").read_text() == "before the split"
    assert not (node2 / "loser.txt").exists()

    # Nothing node2 wrote is lost without a trace.
    base = lab.host_path("node2", "/var/lib/mirrorcore/demo/salvage")
    (folder,) = [p for p in base.iterdir() if p.is_dir()]
    saved = folder / DIR.lstrip("/")
    assert (saved / "loser.txt").read_text() == "node2 alone"
    assert (saved / "shared.txt").read_text() == "node2's version"
    report = json.loads((folder / "report.json").read_text())
    assert "split brain" in report["reason"]
    assert "node1" in report["reason"]
    (d,) = report["dirs"]
    print(f"\nSALVAGE source: {d['source']}; saved {d['saved']}; removed {d['removed']}")
    # node2 tracked every change from its first write as primary: its deletion is listed too.
    assert "tracking map" in d["source"]
    assert "doomed.txt" in d["removed"]
    text = (folder / "REPORT.txt").read_text()
    assert "loser.txt" in text
    listed = cluster.ctl("node2", "splitbrain", "list", check=True).stdout
    assert str(folder.name) in listed
    assert "files" in listed
    assert "salvage" in cluster.module_log("node2")
    # The winner salvaged nothing.
    assert "no split-brain salvage" in cluster.ctl("node1", "splitbrain", "list", check=True).stdout
