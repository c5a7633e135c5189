"""Durations and sizes as written in configuration files.

A duration is one or more `<number><unit>` parts, e.g. `700ms`, `30s`, `1h30m`, `1.5d`,
with units `d h m s ms us`. A bare number takes the unit the attribute documents (the
product's convention: `pulse="700"` is 700 ms, `loop_interval="24"` is 24 hours).

A size is a number with an optional binary suffix: `131072`, `128K`, `128KiB`, `1.5M`,
`2G` (K, KB and KiB all mean 1024 bytes, as in the product's documentation).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from mirrorcore._config_error import ConfigError

__all__ = ["UNITS", "format_duration", "parse_duration", "parse_size"]

UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
# dividing by 1000 rounds better than multiplying by 1e-3: "700ms" gives exactly 0.7
_DIVISORS: dict[str, float] = {"ms": 1e3, "us": 1e6}
_SIZES: dict[str, int] = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# ms/us must be tried before m/s, or "700ms" would read as 700 minutes followed by junk
_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|us|d|h|m|s)?", re.IGNORECASE)
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|(b))?\s*", re.IGNORECASE)


def parse_duration(text: str, *, default_unit: str, file: Path, line: int | None, what: str | None = None) -> float:
    """Parses a duration such as `700ms`, `30s`, `1h30m` or a bare number in `default_unit`.

    Args:
        text: the attribute value.
        default_unit: the unit of a bare number (one of d h m s ms us).
        file: the file, for error messages.
        line: the line, for error messages.
        what: how to name the value in an error (defaults to the quoted text).

    Returns:
        The duration in seconds.

    Raises:
        ConfigError: the text is not a duration.
    """
    if default_unit not in UNITS:
        raise ValueError(f"unknown default unit {default_unit!r}")
    total = 0.0
    pos = 0
    parts = 0
    bare = False
    stripped = text.strip()
    while pos < len(stripped):
        m = _PART.match(stripped, pos)
        if m is None or m.end() == pos:
            break
        unit = (m.group(2) or "").lower()
        if not unit:
            bare = True
            unit = default_unit
        value = float(m.group(1))
        total += value / _DIVISORS[unit] if unit in _DIVISORS else value * UNITS[unit]
        parts += 1
        pos = m.end()
    if parts == 0 or pos != len(stripped) or (bare and parts > 1) or not math.isfinite(total):
        raise ConfigError(
            file,
            line,
            f"{what or repr(text)} is not a duration",
            f"write a number with a unit among d h m s ms us, e.g. 700ms, 30s or 1h30m "
            f"(a bare number means {default_unit})",
        )
    return total


def format_duration(seconds: float) -> str:
    """Writes a duration the way `parse_duration` reads it, in whole microseconds.

    `format_duration(5400.0) == "1h30m"`; `format_duration(0.7) == "700ms"`.
    """
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"cannot format {seconds!r} as a duration")
    us = round(seconds * 1_000_000)
    if us == 0:
        return "0s"
    out = []
    for unit, size in (
        ("d", 86_400_000_000),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1000),
        ("us", 1),
    ):
        n, us = divmod(us, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


def parse_size(text: str, *, default_unit: str, file: Path, line: int | None, what: str | None = None) -> int:
    """Parses a size such as `131072`, `128K`, `64MiB` or `1.5G`.

    Args:
        text: the attribute value.
        default_unit: the unit of a bare number: "B", "K", "M", "G" or "T".
        file: the file, for error messages.
        line: the line, for error messages.
        what: how to name the value in an error (defaults to the quoted text).

    Returns:
        The size in bytes (rounded down to a whole byte).

    Raises:
        ConfigError: the text is not a size.
    """
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ConfigError(
            file,
            line,
            f"{what or repr(text)} is not a size",
            f"write a number with an optional suffix K, M, G or T (powers of 1024), e.g. 128K "
            f"(a bare number means {default_unit})",
        )
    suffix = (m.group(2) or m.group(3) or default_unit).lower()
    return int(float(m.group(1)) * _SIZES[suffix])
