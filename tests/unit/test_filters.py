"""rfs/filters.py: what is replicated under a replicated dir, and which renames cross the boundary."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from mirrorcore.config import Exclusion, Replicated
from mirrorcore.rfs.filters import Filter

components = st.sampled_from([b"a", b"b", b"tmp", b"x.bak", b"log", b"db"])
paths = st.lists(components, min_size=1, max_size=5).map(b"/".join)
REGEXES = [r"\.bak$", r"^log/", r"(^|/)tmp$", r"b/a"]
ONLY = [r"\.db$", r"^a/b$", r"x\.bak"]


def ancestors(path: bytes) -> list[bytes]:
    parts = path.split(b"/")
    return [b"/".join(parts[:i]) for i in range(1, len(parts))]


@st.composite
def filters(draw: st.DrawFn) -> Filter:
    return Filter(
        draw(st.lists(paths, max_size=2)),
        draw(st.lists(st.sampled_from(REGEXES), max_size=2)),
        draw(st.lists(st.sampled_from(ONLY), max_size=2)),
    )


def test_from_config_reads_every_kind_of_notreplicated() -> None:
    f = Filter.from_config(
        Replicated(
            "/srv/data",
            False,
            (Exclusion("path", "tmp"), Exclusion("regex", r".*\.bak$"), Exclusion("regex", r"\.db$", only=True)),
            (),
        )
    )
    assert not f.replicated(b"tmp/base.db")
    assert not f.replicated(b"base/old.bak")
    assert f.replicated(b"base/main.db")
    assert not f.replicated(b"base/notes.txt")  # only *.db files are replicated...
    assert f.replicated(b"base", is_dir=True)  # ...but directories are, so they have a parent
    assert f.replicated(b"")


def test_no_exclusions_replicates_everything() -> None:
    f = Filter()
    assert f.everything
    assert f.replicated(b"any/thing")
    assert not f.crosses_boundary(b"a", b"tmp/a", is_dir=True)


@given(paths, paths)
def test_a_path_exclusion_covers_the_entry_and_everything_below(excluded: bytes, path: bytes) -> None:
    f = Filter([excluded])
    below = path == excluded or path.startswith(excluded + b"/")
    assert f.replicated(path) is not below
    assert f.replicated(path, is_dir=True) is not below


@given(filters(), paths, st.booleans())
def test_every_replicated_entry_has_replicated_parents(f: Filter, path: bytes, is_dir: bool) -> None:
    # The secondary's tree must stay a tree: it can only create an entry whose parent exists there.
    if f.replicated(path, is_dir=is_dir):
        for parent in ancestors(path):
            assert f.replicated(parent, is_dir=True), parent


@given(filters(), paths)
def test_an_excluded_directory_excludes_its_subtree(f: Filter, path: bytes) -> None:
    for parent in ancestors(path):
        if not f.replicated(parent, is_dir=True):
            assert not f.replicated(path)
            assert not f.replicated(path, is_dir=True)


@given(st.lists(st.sampled_from(ONLY), min_size=1, max_size=2), paths)
def test_only_regexes_replicate_matching_files_and_all_directories(only: list[str], path: bytes) -> None:
    f = Filter(only=only)
    assert f.replicated(path) is any(re.search(r.encode(), path) for r in only)
    assert f.replicated(path, is_dir=True)


@given(filters(), paths, paths, st.booleans())
def test_crossing_is_symmetric_and_follows_the_entry_itself(f: Filter, old: bytes, new: bytes, is_dir: bool) -> None:
    crosses = f.crosses_boundary(old, new, is_dir=is_dir)
    assert crosses is f.crosses_boundary(new, old, is_dir=is_dir)
    if f.replicated(old, is_dir=is_dir) != f.replicated(new, is_dir=is_dir):
        assert crosses
    if not is_dir:
        assert crosses is (f.replicated(old) != f.replicated(new))


def test_moving_a_directory_that_holds_an_excluded_path_crosses() -> None:
    f = Filter([b"app/cache"])
    assert f.crosses_boundary(b"app", b"app2", is_dir=True)  # app2/cache would become replicated
    assert f.crosses_boundary(b"other", b"app", is_dir=True)  # other/cache would stop being replicated
    assert not f.crosses_boundary(b"app/data", b"app/data2", is_dir=True)
    assert not f.crosses_boundary(b"app/cache/x", b"app/cache/y")  # both sides excluded


def test_regex_crossing_of_a_directory_looks_at_its_descendants() -> None:
    f = Filter(excludes=[r"^old/.*\.log$"])
    assert not f.crosses_boundary(b"old", b"new", is_dir=True)
    assert f.crosses_boundary(b"old", b"new", is_dir=True, descendants=[b"sub/x.log"])
    assert not f.crosses_boundary(b"old", b"new", is_dir=True, descendants=[b"sub/x.txt"])
    assert f.has_regex
    assert not Filter([b"tmp"]).has_regex
