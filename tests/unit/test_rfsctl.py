"""What `mirrorctl state` and `verify` say about resyncs, and the salvage left pending across attempts."""

from __future__ import annotations

from pathlib import Path

from mirrorcore.rfsctl import _read_pending, _verify_line, _write_pending, status_lines


def test_state_shows_the_resync_under_way_with_progress_and_eta() -> None:
    status = {
        "rfs": {
            "resync": {
                "/srv/demo": {
                    "mode": "zones",
                    "phase": "content",
                    "state": "throttled",
                    "files_done": 12,
                    "files_total": 51,
                    "bytes_done": 3 << 20,
                    "bytes_total": 12 << 20,
                    "bytes_sent": 1 << 20,
                    "rate": 1 << 20,
                    "eta": 9.0,
                }
            },
            "last_resync": {"mode": "zones", "reason": "the map is trusted"},
        }
    }
    (line,) = status_lines(status)
    assert line.startswith("resync /srv/demo: zones (content, throttled)")
    assert "files 12/51" in line
    assert "3.0 MiB of 12.0 MiB compared" in line
    assert "1.0 MiB sent" in line
    assert "ETA 9 s" in line


def test_state_shows_the_last_resync_when_none_runs() -> None:
    status = {"rfs": {"resync": {"/d": {"phase": "done"}}, "last_resync": {"mode": "full", "reason": "first sync"}}}
    assert status_lines(status) == ["last resync: full (first sync)"]
    assert status_lines({"rfs": None}) == []


def test_verify_lines_say_whether_the_copies_match() -> None:
    ok = {"dir": "/d", "matched": True, "files_checked": 3, "bytes_checked": 2048}
    assert _verify_line(ok) == "/d: copies match (3 files, 2.0 KiB checked)"
    bad = {"dir": "/d", "matched": False, "files_checked": 3, "bytes_checked": 0, "differences": [{}], "total": 1}
    assert _verify_line(bad) == "/d: 1 differences (3 files, 0 B checked)"
    assert _verify_line({**bad, "repaired": True}).endswith("— repaired")
    assert "not verified: no secondary" in _verify_line({"dir": "/d", "error": "no secondary"})


def test_a_pending_salvage_survives_until_it_is_done(tmp_path: Path) -> None:
    pending = tmp_path / "state" / "salvage-pending.json"
    assert _read_pending(pending) is None
    _write_pending(pending, "split brain resolved: node1 kept the application")
    assert _read_pending(pending) == "split brain resolved: node1 kept the application"
    pending.write_text("{broken")
    # An unreadable marker still means a salvage is owed: never resync without it.
    assert "salvage was pending" in str(_read_pending(pending))
