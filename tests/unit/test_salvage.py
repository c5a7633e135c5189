"""Split-brain salvage: the loser's changes are saved with a report before its copy is replaced."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mirrorcore import _native
from mirrorcore.salvage import Changes, changes_from_map, changes_since, list_salvages, salvage


def _tree(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    (root / "d" / "kept.txt").write_text("written during the split")
    (root / "old.txt").write_text("written before the split")
    (root / "link").symlink_to("d/kept.txt")


def test_changes_from_a_tracking_map_name_writes_removals_and_renames() -> None:
    m = _native.DirtyMap(4096)
    m.mark_write(b"d/kept.txt", 0, 10, 1)
    m.mark_namespace("unlink", b"gone.txt", None, 2)
    m.mark_namespace("rename", b"a.txt", b"d/b.txt", 3)
    m.mark_namespace("create", b"new.txt", None, 4)
    m.mark_namespace("exchange", b"x.txt", b"d/y.txt", 5)
    c = changes_from_map(m)
    assert set(c.changed) == {b"d/kept.txt", b"d/b.txt", b"new.txt", b"x.txt", b"d/y.txt"}
    assert c.removed == (b"gone.txt",)
    assert c.renamed == ((b"a.txt", b"d/b.txt"),)
    assert "tracking map" in c.source


def test_changes_since_finds_only_entries_modified_after_the_time(tmp_path: Path) -> None:
    _tree(tmp_path)
    os.utime(tmp_path / "old.txt", (1_000_000, 1_000_000))
    since = 2_000_000.0
    c = changes_since(tmp_path, since)
    # ctime cannot be set back, so anything touched by this test counts as changed; an old mtime alone does not hide
    # a file whose inode changed after `since`. What matters: every recent file is there, and nothing outside the root.
    assert {b"d/kept.txt", b"link"} <= set(c.changed)
    assert all(not p.startswith(b"/") for p in c.changed)
    assert "deletions are not known" in c.source


def test_salvage_saves_files_with_their_data_and_writes_a_report(tmp_path: Path) -> None:
    root = tmp_path / "srv" / "app"
    _tree(root)
    changes = Changes(
        "test",
        changed=(b"d/kept.txt", b"link", b"vanished.txt", b"d"),
        removed=(b"deleted.txt",),
        renamed=((b"x", b"d/kept.txt"),),
    )
    folder = salvage(tmp_path / "salvage", [(root, changes)], "split brain: node1 won", now=1_800_000_000)
    assert folder is not None
    saved = folder / str(root).lstrip("/")
    assert (saved / "d" / "kept.txt").read_text() == "written during the split"
    assert os.readlink(saved / "link") == "d/kept.txt"
    report = json.loads((folder / "report.json").read_text())
    (d,) = report["dirs"]
    assert d["saved"] == ["d/kept.txt", "link"]
    assert d["gone"] == ["vanished.txt"]
    assert d["removed"] == ["deleted.txt"]
    text = (folder / "REPORT.txt").read_text()
    assert "split brain: node1 won" in text
    assert "removed  deleted.txt" in text
    assert "renamed  x -> d/kept.txt" in text

    (listed,) = list_salvages(tmp_path / "salvage")
    assert listed.path == folder
    assert (listed.files, listed.removed) == (2, 1)
    assert listed.bytes == len("written during the split")


def test_nothing_changed_makes_no_folder(tmp_path: Path) -> None:
    assert salvage(tmp_path / "salvage", [(tmp_path, Changes("test"))], "why") is None
    assert list_salvages(tmp_path / "salvage") == []


def test_two_salvages_in_the_same_second_get_two_folders(tmp_path: Path) -> None:
    _tree(tmp_path / "r")
    changes = Changes("test", changed=(b"old.txt",))
    a = salvage(tmp_path / "s", [(tmp_path / "r", changes)], "one", now=1_800_000_000)
    b = salvage(tmp_path / "s", [(tmp_path / "r", changes)], "two", now=1_800_000_000)
    assert a is not None
    assert b is not None
    assert a != b
    assert [s.reason for s in list_salvages(tmp_path / "s")] == ["one", "two"]


def test_an_unwritable_salvage_folder_raises_so_the_resync_does_not_run(tmp_path: Path) -> None:
    _tree(tmp_path / "r")
    blocker = tmp_path / "s"
    blocker.write_text("a file where the salvage folder should be")
    with pytest.raises(NotADirectoryError):
        salvage(blocker, [(tmp_path / "r", Changes("test", changed=(b"old.txt",)))], "why")


def test_a_name_that_is_not_utf8_is_saved_and_reported(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / os.fsdecode(b"caf\xe9.txt")).write_text("bytes in the name")
    folder = salvage(tmp_path / "s", [(root, Changes("test", changed=(b"caf\xe9.txt",)))], "why")
    assert folder is not None
    saved = folder / str(root).lstrip("/") / os.fsdecode(b"caf\xe9.txt")
    assert saved.read_text() == "bytes in the name"
    assert b"caf\xe9.txt" in (folder / "REPORT.txt").read_bytes()


def test_a_path_under_a_parent_replaced_by_a_symlink_is_listed_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "r", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("not replicated")
    (root / "a").symlink_to(outside)
    folder = salvage(tmp_path / "s", [(root, Changes("test", changed=(b"a", b"a/secret")))], "why")
    assert folder is not None
    saved = folder / str(root).lstrip("/")
    assert os.readlink(saved / "a") == str(outside)  # the symlink itself is kept
    report = json.loads((folder / "report.json").read_text())
    assert report["dirs"][0]["saved"] == ["a"]
    assert any(g.startswith("a/secret") for g in report["dirs"][0]["gone"])
