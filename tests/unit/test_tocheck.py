"""<tocheck>: a primary refuses to start when the data it must replicate is not all there."""

from __future__ import annotations

from pathlib import Path

from mirrorcore.config import Replicated, Rfs
from mirrorcore.rfs.mirror import missing_tocheck


def rfs_for(tmp_path: Path, *tocheck: str) -> Rfs:
    replicated = Replicated(dir=str(tmp_path), read_only=False, exclusions=(), tocheck=tocheck)
    return Rfs(
        async_mode="second",
        ruzone_blocksize=131072,
        reiallowedbw=None,
        syncdelta=0.0,
        ackeach=False,
        sendtimeout=30.0,
        dirs=(replicated,),
    )


def test_present_paths_pass(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "PG_VERSION").write_text("16\n")
    assert missing_tocheck(rfs_for(tmp_path, "base/PG_VERSION")) == []


def test_missing_paths_are_named_absolute(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    assert missing_tocheck(rfs_for(tmp_path, "base/PG_VERSION", "base")) == [str(tmp_path / "base" / "PG_VERSION")]
