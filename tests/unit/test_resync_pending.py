"""Following the application's renames, unlinks and links while a resync works through its files."""

from __future__ import annotations

from mirrorcore.rfs.pending import Item, Pending, align, merge_ranges, planned_bytes


def registry(*names: bytes) -> tuple[Pending, dict[bytes, Item]]:
    pending = Pending()
    items = {}
    for ino, name in enumerate(names, 1):
        item = Item((1, ino), [name], size=100)
        pending.add(item)
        pending.queue(item)
        items[name] = item
    return pending, items


def test_a_renamed_file_is_followed_and_its_old_name_is_free():
    pending, items = registry(b"a", b"b")
    pending.renamed(b"a", b"c")
    assert items[b"a"].paths == [b"c"]
    assert pending.current(b"c") is items[b"a"]
    assert pending.current(b"a") is None


def test_renaming_a_directory_moves_every_name_below_it_and_only_those():
    pending, items = registry(b"d/x", b"d/sub/y", b"dd/z", b"d")
    pending.renamed(b"d", b"e/f")
    assert items[b"d/x"].paths == [b"e/f/x"]
    assert items[b"d/sub/y"].paths == [b"e/f/sub/y"]
    assert items[b"dd/z"].paths == [b"dd/z"]  # a sibling sharing the prefix is untouched


def test_renaming_over_a_pending_file_leaves_the_replaced_one_without_a_name():
    pending, items = registry(b"a", b"b")
    pending.renamed(b"a", b"b")
    assert items[b"a"].paths == [b"b"]
    assert items[b"b"].paths == []  # unlinked by the rename: nothing left to send
    assert pending.current(b"b") is items[b"a"]


def test_an_exchange_swaps_the_names_of_both_sides_and_their_subtrees():
    pending, items = registry(b"p", b"q/inner")
    pending.renamed(b"p", b"q", exchange=True)
    assert items[b"p"].paths == [b"q"]
    assert items[b"q/inner"].paths == [b"p/inner"]
    # A swap there and back again ends where it began.
    pending.renamed(b"p", b"q", exchange=True)
    assert (items[b"p"].paths, items[b"q/inner"].paths) == ([b"p"], [b"q/inner"])


def test_a_file_linked_then_unlinked_under_its_first_name_is_followed_by_the_new_one():
    pending, items = registry(b"a")
    pending.linked(b"a", b"l")
    pending.removed(b"a")
    assert items[b"a"].paths == [b"l"]
    pending.removed(b"l")
    assert items[b"a"].paths == []


def test_needs_are_found_by_their_namespace_step_names_after_renames():
    pending = Pending()
    item = Item((1, 1), [b"old"], size=10)
    pending.add(item)
    pending.renamed(b"old", b"new")  # the application, before the needs came back
    assert pending.at_origin(b"old") is item
    assert pending.current(b"new") is item
    pending.queue(item)
    other = Item((1, 2), [b"other"], size=10)
    pending.add(other)
    pending.forget_unqueued()
    assert pending.current(b"other") is None
    assert pending.current(b"new") is item
    assert pending.pop() is item
    assert pending.pop() is None
    pending.done(item)
    assert pending.current(b"new") is None


def test_ranges_align_merge_and_count_only_what_the_file_holds():
    assert merge_ranges([(10, 5), (0, 10), (30, 1), (15, 0)]) == [(0, 15), (30, 1)]
    assert align([(5, 10), (4100, 1)], 4096) == [(0, 8192)]
    item = Item((1, 1), [b"f"], size=5000, ranges=[(0, 4096), (4096, 1 << 40)])
    assert planned_bytes(item) == 5000
    item.widen([(8192, 4096)])
    assert item.ranges == [(0, 4096 + (1 << 40))]
    item.widen(None)
    assert item.ranges is None
