"""The one exception every configuration problem raises."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """A configuration problem: where it is, what is wrong and how to fix it.

    `str(error)` reads `file:line: what. Fix: fix` (`file:line:column:` for failover rules,
    `file:` alone when no line applies), so a user can jump to the place and act.
    """

    def __init__(self, file: Path, line: int | None, what: str, fix: str, *, column: int | None = None) -> None:
        self.file = file
        self.line = line
        self.column = column
        self.what = what
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.file)
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.what}. Fix: {self.fix}"

    def __reduce__(self) -> tuple[object, ...]:
        # keyword-only column would otherwise be lost when the error crosses a process boundary
        return (_rebuild, (self.file, self.line, self.what, self.fix, self.column))


def _rebuild(file: Path, line: int | None, what: str, fix: str, column: int | None) -> ConfigError:
    return ConfigError(file, line, what, fix, column=column)
