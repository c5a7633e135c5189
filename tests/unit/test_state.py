"""Durable node state: survives a restart, starts from safe defaults, refuses a corrupt file clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mirrorcore.state import Durable, DurableStateError, DurableStore


def test_a_fresh_node_is_not_uptodate(tmp_path: Path):
    assert DurableStore(tmp_path / "am").load() == Durable(uptodate=False, generation=0)


def test_saved_state_is_loaded_back_by_a_new_store(tmp_path: Path):
    saved = Durable(uptodate=True, generation=5, sync_timestamp=1700000000.5, failover_override=False, clean_stop=True)
    DurableStore(tmp_path / "am").save(saved)
    assert DurableStore(tmp_path / "am").load() == saved


def test_saving_replaces_the_previous_state_and_leaves_no_temporary_file(tmp_path: Path):
    store = DurableStore(tmp_path)
    store.save(Durable(uptodate=True, generation=1))
    store.save(Durable(uptodate=False, generation=2))
    assert store.load() == Durable(uptodate=False, generation=2)
    assert [p.name for p in tmp_path.iterdir()] == ["durable.json"]


@pytest.mark.parametrize(
    "content",
    ['{"uptodate": tru', "[]", '{"uptodate": "yes"}', '{"generation": -1}', "\xff\xfe"],
)
def test_a_corrupt_file_is_an_error_naming_the_file_and_the_fix(tmp_path: Path, content: str):
    store = DurableStore(tmp_path)
    store.file.write_bytes(content.encode("latin-1"))
    with pytest.raises(DurableStateError) as e:
        store.load()
    assert str(store.file) in str(e.value)
    assert "Fix:" in str(e.value)


def test_a_file_from_a_newer_version_with_more_fields_still_loads(tmp_path: Path):
    store = DurableStore(tmp_path)
    store.file.write_text(json.dumps({"uptodate": True, "generation": 3, "bitmaps_valid": True}))
    assert store.load() == Durable(uptodate=True, generation=3)


def test_the_last_status_is_kept_for_when_the_daemon_is_gone(tmp_path: Path):
    store = DurableStore(tmp_path)
    assert store.load_last_status() is None
    store.save_last_status({"state": "PRIM", "heartbeats": {"default": True}, "at": Path("/x")})
    assert DurableStore(tmp_path).load_last_status() == {"state": "PRIM", "heartbeats": {"default": True}, "at": "/x"}
    assert store.load() == Durable()  # separate from the durable state
