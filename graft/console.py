"""The rich Console every command prints through: rich's own, except that off a terminal (a pipe, a file, a CI
log) a line is as long as what it holds, so a tensor name or a trial's name is never cut or elided."""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.rule import Rule

PIPED_WIDTH = 4096  # off a terminal: lines as long as their content, up to this
RULE_WIDTH = 80  # a section rule off a terminal: a rule is decoration, not content


class GraftConsole(Console):
    """Where nobody reads at a fixed width (`graft plan --list | grep q_proj`, `> log.txt`, CI), rich would wrap
    every line at 80 columns and elide table cells (`uniform_0…`); here tables and messages keep their full width
    instead. A terminal, Jupyter, `$COLUMNS` or an explicit `width=` keep rich's own choice."""

    def _piped(self) -> bool:
        return (self._width is None and not self.is_terminal and not self.is_jupyter
                and "COLUMNS" not in self._environ)

    @property
    def size(self) -> ConsoleDimensions:
        dims = Console.size.fget(self)  # type: ignore[attr-defined]
        return ConsoleDimensions(PIPED_WIDTH, dims.height) if self._piped() else dims

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def rule(self, title: Any = "", **kwargs: Any) -> None:
        if not self._piped():
            return super().rule(title, **kwargs)
        self.print(Rule(title, **kwargs), width=RULE_WIDTH)
        return None
