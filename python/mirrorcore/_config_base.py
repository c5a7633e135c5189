"""The shared pieces of configuration parsing: the error type and a strict element reader.

Every attribute read goes through `Attrs`, which remembers what was read so that any
attribute left over is reported as unknown (a typo such as `failover="of"` must not be
silently ignored). Every child tag goes through `children`, which rejects tags the
element does not know.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path

from lxml import etree

from mirrorcore._config_error import ConfigError
from mirrorcore.durations import parse_duration, parse_size

__all__ = ["Attrs", "ConfigError", "children", "expand_macros", "line_of", "read_xml", "single", "tag_of"]

_MACRO = re.compile(r"%%|%([A-Za-z_][A-Za-z0-9_]*)%")
_BOOLS = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


def read_xml(path: Path, root_tag: str) -> etree._Element:
    """Parses an XML file, turning a missing file or a syntax error into a ConfigError.

    Args:
        path: the file to read.
        root_tag: the tag the document element must have.

    Returns:
        The document element.

    Raises:
        ConfigError: the file is missing, unreadable, not well-formed or has another root.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, None, "the file does not exist", "create it (see `mirrorctl config check`)") from None
    except OSError as e:
        raise ConfigError(path, None, f"cannot read the file ({e.strerror})", "check its permissions") from e
    # resolve_entities=False and no_network: a config file has no business pulling in other files.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as e:
        line = e.position[0] if e.position else e.lineno
        raise ConfigError(path, line, f"XML syntax error: {e.msg}", "correct the XML at that line") from None
    if root.tag != root_tag:
        raise ConfigError(path, line_of(root), f"the document element is <{root.tag}>", f"use <{root_tag}>")
    return root


def line_of(el: etree._Element) -> int | None:
    """The element's line in its file (None if lxml does not know it)."""
    line = el.sourceline
    return line if isinstance(line, int) else None


def tag_of(el: etree._Element) -> str | None:
    """The tag of an element, or None for comments and processing instructions."""
    return el.tag if isinstance(el.tag, str) else None


def children(el: etree._Element, file: Path, allowed: tuple[str, ...]) -> Iterator[etree._Element]:
    """Yields the child elements of `el`, raising on a tag not in `allowed` or on stray text.

    Args:
        el: the parent element.
        file: the file, for error messages.
        allowed: the child tags this element accepts.

    Yields:
        Each child element, in document order.

    Raises:
        ConfigError: a child tag is not allowed here.
    """
    for child in el:
        tag = tag_of(child)
        if tag is None:
            continue
        if tag not in allowed:
            where = ", ".join(f"<{a}>" for a in allowed) if allowed else "no child elements"
            raise ConfigError(
                file,
                line_of(child),
                f"unknown tag <{tag}> inside <{el.tag}>",
                f"remove it or use one of: {where}",
            )
        yield child


def single(el: etree._Element, file: Path, tag: str, *, required: bool) -> etree._Element | None:
    """The one child `tag` of `el`; errors if it appears twice, or is missing and required."""
    found = [c for c in el if tag_of(c) == tag]
    if len(found) > 1:
        raise ConfigError(file, line_of(found[1]), f"<{tag}> appears more than once in <{el.tag}>", "keep only one")
    if not found and required:
        raise ConfigError(file, line_of(el), f"<{el.tag}> has no <{tag}>", f"add a <{tag}> element inside it")
    return found[0] if found else None


def expand_macros(text: str, macros: dict[str, str], file: Path, line: int | None) -> str:
    """Replaces every `%NAME%` with the macro's value; `%%` stands for a literal `%`.

    Raises:
        ConfigError: a `%NAME%` names no macro defined before it.
    """

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            return "%"
        if name not in macros:
            known = ", ".join(sorted(macros)) or "none defined"
            raise ConfigError(
                file,
                line,
                f"%{name}% names no macro (macros: {known})",
                f'define it first with <macro name="{name}" value="..."/>, or write %% for a literal %',
            )
        return macros[name]

    return _MACRO.sub(sub, text)


class Attrs:
    """Typed, checked access to one element's attributes; `done()` rejects the unread ones."""

    def __init__(self, el: etree._Element, file: Path) -> None:
        self.el = el
        self.file = file
        self.line: int | None = line_of(el)
        self._read: set[str] = set()

    def error(self, what: str, fix: str) -> ConfigError:
        """A ConfigError at this element's line."""
        return ConfigError(self.file, self.line, what, fix)

    def _desc(self, name: str, value: str) -> str:
        return f'<{self.el.tag} {name}="{value}">'

    def text(self, name: str, default: str | None = None) -> str | None:
        """The attribute as text, or `default` when absent."""
        self._read.add(name)
        value = self.el.get(name)
        return default if value is None else value

    def required(self, name: str, hint: str) -> str:
        """The attribute as non-empty text; `hint` tells what to put there."""
        value = self.text(name)
        if value is None or not value.strip():
            raise self.error(f'<{self.el.tag}> lacks the attribute "{name}"', f'add {name}="{hint}"')
        return value.strip()

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        """The attribute, which must be one of `options`."""
        value = self.text(name, default)
        assert value is not None
        if value not in options:
            raise self.error(f"{self._desc(name, value)} is not valid", f"use one of: {', '.join(options)}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        """An on/off attribute (yes/no and true/false are accepted too)."""
        value = self.text(name)
        if value is None:
            return default
        if value.strip().lower() not in _BOOLS:
            raise self.error(f"{self._desc(name, value)} is not on or off", f'write {name}="on" or {name}="off"')
        return _BOOLS[value.strip().lower()]

    def integer(self, name: str, default: int | None, *, low: int, high: int | None = None) -> int | None:
        """An integer attribute within [low, high]."""
        value = self.text(name)
        if value is None:
            return default
        rng = f"from {low} to {high}" if high is not None else f"{low} or more"
        try:
            n = int(value.strip())
        except ValueError:
            raise self.error(f"{self._desc(name, value)} is not a whole number", f"write a number {rng}") from None
        if n < low or (high is not None and n > high):
            raise self.error(f"{self._desc(name, value)} is out of range", f"write a number {rng}")
        return n

    def duration(self, name: str, default: float, unit: str, *, positive: bool = True) -> float:
        """A duration attribute in seconds; a bare number is in `unit`."""
        value = self.text(name)
        if value is None:
            return default
        seconds = parse_duration(value, default_unit=unit, file=self.file, line=self.line, what=self._desc(name, value))
        if positive and seconds <= 0:
            raise self.error(f"{self._desc(name, value)} must be longer than zero", f'write e.g. {name}="10s"')
        return seconds

    def size(self, name: str, default: int | None, unit: str) -> int | None:
        """A size attribute in bytes; a bare number is in `unit`."""
        value = self.text(name)
        if value is None:
            return default
        return parse_size(value, default_unit=unit, file=self.file, line=self.line, what=self._desc(name, value))

    def ip(self, name: str) -> str:
        """A required IPv4 or IPv6 address, normalised."""
        value = self.required(name, "an IP address")
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise self.error(
                f"{self._desc(name, value)} is not an IPv4 or IPv6 address", "write an address such as 10.0.0.100"
            ) from None

    def done(self) -> None:
        """Raises on any attribute that was never read: it is unknown here."""
        for key in self.el.attrib:
            name = key.decode() if isinstance(key, bytes) else key
            if name not in self._read:
                known = ", ".join(sorted(self._read)) or "none"
                raise self.error(
                    f'<{self.el.tag}> has an unknown attribute "{name}"',
                    f"remove it (attributes of <{self.el.tag}>: {known})",
                )
