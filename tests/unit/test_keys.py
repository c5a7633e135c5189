"""The cluster key file: generated private, refused when missing, weak or exposed, with the fix named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrorcore.keys import KeyFileError, generate_key, load_key


def test_a_generated_key_loads_and_is_private(tmp_path: Path):
    path = tmp_path / "etc" / "cluster.key"
    generate_key(path)
    key = load_key(path)
    assert len(key) == 32
    assert path.stat().st_mode & 0o777 == 0o600


def test_two_generated_keys_differ(tmp_path: Path):
    generate_key(tmp_path / "a")
    generate_key(tmp_path / "b")
    assert load_key(tmp_path / "a") != load_key(tmp_path / "b")


def test_an_existing_key_is_kept_unless_forced(tmp_path: Path):
    path = tmp_path / "cluster.key"
    generate_key(path)
    before = load_key(path)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(path)
    assert load_key(path) == before
    generate_key(path, force=True)
    assert load_key(path) != before
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_missing_key_names_the_command_that_makes_one(tmp_path: Path):
    with pytest.raises(KeyFileError, match="mirrorctl cluster genkey") as e:
        load_key(tmp_path / "cluster.key")
    assert str(tmp_path / "cluster.key") in str(e.value)


@pytest.mark.parametrize(
    ("content", "what"),
    [("abcd\n", "too short"), ("not hex at all, not hex at all, not hex at all, not hex at all!\n", "not hex")],
)
def test_a_bad_key_is_refused_with_the_fix(tmp_path: Path, content: str, what: str):
    path = tmp_path / "cluster.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=what) as e:
        load_key(path)
    assert "mirrorctl cluster genkey" in str(e.value)


def test_a_key_readable_by_others_is_refused(tmp_path: Path):
    path = tmp_path / "cluster.key"
    generate_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key(path)
