"""The <rfs> section of userconfig.xml: what is replicated and how (SPEC §3, §6)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lxml import etree

from mirrorcore._config_base import Attrs, children
from mirrorcore.durations import parse_size

__all__ = ["Exclusion", "Replicated", "Rfs", "parse_rfs"]


@dataclass(frozen=True)
class Exclusion:
    """A `<notreplicated>` entry, relative to its replicated dir.

    kind "path": `pattern` is a relative path; it and everything under it is not replicated.
    kind "regex": `pattern` is a regular expression matched against the relative path
    (`re.search`); with `only` (written with a leading `!`), only matching paths are replicated.
    """

    kind: str
    pattern: str
    only: bool = False


@dataclass(frozen=True)
class Replicated:
    """A `<replicated dir>`: an absolute directory; `read_only` (mode="read_only") on the secondary."""

    dir: str
    read_only: bool
    exclusions: tuple[Exclusion, ...]
    tocheck: tuple[str, ...]  # relative paths that must exist before replication starts


@dataclass(frozen=True)
class Rfs:
    """`<rfs>`: file replication settings.

    Attributes:
        async_mode: "second" (default, semi-sync: acked once in the secondary's memory) or
            "none" (sync: acked once on the secondary's disk).
        ruzone_blocksize: bytes per zone of the bitmaps kept while ALONE; default 131072
            (128 KiB); a power of two from 4 KiB to 64 MiB; accepts suffixes (128K); bare = bytes.
        reiallowedbw: resync bandwidth limit in bytes per second; None (default) is unlimited;
            accepts suffixes with an optional "/s" (50M/s); a bare number is KiB/s, as in the product.
        syncdelta: seconds subtracted from the last sync timestamp when resyncing by timestamp
            (guards against clock steps); default 0; a bare number is minutes, as in the product.
        ackeach: every operation is a durability point (default off) [beyond].
        sendtimeout: seconds without an answer after which the primary drops the secondary and
            goes ALONE; default 30; a bare number is seconds.
        dirs: the replicated directories, none nested in another.
        nbrei: how many files a resync compares at once (`<rfs nbrei>`, 1 to 64); default 4.
    """

    async_mode: str
    ruzone_blocksize: int
    reiallowedbw: int | None
    syncdelta: float
    ackeach: bool
    sendtimeout: float
    dirs: tuple[Replicated, ...]
    nbrei: int = 4


def _relative(a: Attrs, attr: str, value: str) -> str:
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or str(p) in ("", "."):
        raise a.error(
            f'<{a.el.tag} {attr}="{value}"> must be a path relative to the replicated dir',
            'write it without a leading "/" and without "..", e.g. path="tmp"',
        )
    return str(p)


def _replicated(el: etree._Element, file: Path) -> Replicated:
    a = Attrs(el, file)
    raw = a.required("dir", "/srv/data")
    mode = a.choice("mode", ("read_only", ""), "")
    a.done()
    p = PurePosixPath(raw)
    if not p.is_absolute() or ".." in p.parts:
        raise a.error(f'<replicated dir="{raw}"> is not an absolute path', 'write it from the root, e.g. "/srv/data"')
    if p == PurePosixPath("/"):
        raise a.error('<replicated dir="/"> would replicate the whole system', "name the application's data dir")
    exclusions: list[Exclusion] = []
    tocheck: list[str] = []
    for child in children(el, file, ("notreplicated", "tocheck")):
        ca = Attrs(child, file)
        if child.tag == "tocheck":
            tocheck.append(_relative(ca, "path", ca.required("path", "relative/file")))
            ca.done()
            continue
        path = ca.text("path")
        regex = ca.text("regexpath")
        ca.done()
        if (path is None) == (regex is None):
            raise ca.error(
                "<notreplicated> needs exactly one of path or regexpath", 'write path="tmp" or regexpath="..."'
            )
        if path is not None:
            if path.startswith("!"):
                raise ca.error('a leading "!" is only understood in regexpath', 'write regexpath="!^pattern" instead')
            exclusions.append(Exclusion("path", _relative(ca, "path", path)))
            continue
        assert regex is not None
        only = regex.startswith("!")
        pattern = regex[1:] if only else regex
        try:
            re.compile(pattern)
        except re.error as e:
            raise ca.error(
                f'<notreplicated regexpath="{regex}"> is not a valid regular expression ({e})',
                "correct the expression (Python re syntax)",
            ) from None
        exclusions.append(Exclusion("regex", pattern, only))
    return Replicated(str(p), mode == "read_only", tuple(exclusions), tuple(tocheck))


def parse_rfs(el: etree._Element | None, file: Path) -> Rfs | None:
    """Parses `<rfs>`; None when the module replicates nothing."""
    if el is None:
        return None
    a = Attrs(el, file)
    async_mode = a.choice("async", ("second", "none"), "second")
    blocksize = a.size("ruzone_blocksize", 131072, "B")
    assert blocksize is not None
    bw_text = a.text("reiallowedbw")
    bw = None
    if bw_text is not None and bw_text.strip().lower() not in ("", "0", "none", "unlimited"):
        stripped = bw_text.strip()
        stripped = stripped[:-2] if stripped.lower().endswith("/s") else stripped
        bw = parse_size(stripped, default_unit="K", file=file, line=a.line, what=f'<rfs reiallowedbw="{bw_text}">')
    syncdelta = a.duration("syncdelta", 0.0, "m", positive=False)
    ackeach = a.flag("ackeach", False)
    sendtimeout = a.duration("sendtimeout", 30.0, "s")
    nbrei = a.integer("nbrei", 4, low=1, high=64)
    assert nbrei is not None
    a.done()
    if blocksize < 4096 or blocksize > 64 << 20 or blocksize & (blocksize - 1):
        raise a.error(
            f"ruzone_blocksize {blocksize} is not a power of two from 4 KiB to 64 MiB",
            'write e.g. ruzone_blocksize="128K"',
        )
    if syncdelta < 0:
        raise a.error("syncdelta is negative", 'write e.g. syncdelta="1m"')
    dirs: list[Replicated] = []
    for rep_el in children(el, file, ("replicated",)):
        rep = _replicated(rep_el, file)
        for other in dirs:
            a_, b_ = PurePosixPath(rep.dir), PurePosixPath(other.dir)
            if a_ == b_ or a_.is_relative_to(b_) or b_.is_relative_to(a_):
                raise Attrs(rep_el, file).error(
                    f'<replicated dir="{rep.dir}"> overlaps <replicated dir="{other.dir}">',
                    "replicate the parent directory once, or use dirs that are not nested",
                )
        dirs.append(rep)
    if not dirs:
        raise a.error("<rfs> has no <replicated dir>", 'add <replicated dir="/srv/data"/> inside it')
    return Rfs(async_mode, blocksize, bw, syncdelta, ackeach, sendtimeout, tuple(dirs), nbrei)
