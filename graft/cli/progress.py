"""Progress of long runs (`graft eval`'s items, `graft search`'s trials, `graft inspect`'s tensors): a rich bar
with counts, rate and ETA on a terminal; on anything else (CI logs, files) plain lines as steps finish (at most
every few seconds where steps are many and short), so logs stay readable; nothing with `-q` (the console is then
quiet)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

PLAIN_EVERY = 10.0  # seconds between plain progress lines of a run made of many short steps (a log, not a terminal)


@contextmanager
def library_bars_off(quiet: bool) -> Iterator[None]:
    """With `-q`, no progress bars from transformers or huggingface_hub ("Loading weights: 100%|...", downloads)
    for the command's duration; their earlier state comes back afterwards (the Python API is not left silenced)."""
    if not quiet:
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    transformers_on, hub_off = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if transformers_on:
            hf_logging.enable_progress_bar()
        if not hub_off:
            hub_utils.enable_progress_bars()


def _eta(done: float, total: float, seconds: float) -> str:
    if done <= 0 or seconds <= 0 or done >= total:
        return "—" if done < total else "0 s"
    left = (total - done) * seconds / done
    return f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min"


class StepProgress:
    """`total` units of work (items, trials) counted as they finish. `start`, `advance` after each step, `stop`."""

    def __init__(self, console: Console, *, unit: str, title: str, steps: str = "tasks", every: float = 0.0):
        self.console, self.unit, self.title, self.step_name = console, unit, title, steps
        self.every, self._said = every, float("-inf")  # plain lines at most every `every` s (and the last one)
        self.live = console.is_terminal and not console.quiet
        self.total = self.done = 0
        self.steps = self.steps_total = 0
        self._bar: Progress | None = None
        self._task = None
        self._started = 0.0

    def start(self, total: int, steps_total: int = 0, done: int = 0) -> None:
        self.total, self.steps_total, self.done, self._started = total, steps_total, done, time.perf_counter()
        self._base = done  # work finished before this run (a resumed study): not counted in the rate
        if self.live:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(f"{self.unit}"), TextColumn("{task.fields[rate]}"),
                                 TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=self.console,
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.title, total=total, completed=done, rate="", note="")

    def advance(self, amount: int = 1, *, note: str = "", done: int | None = None, total: int | None = None) -> None:
        """`amount` more units finished (or `done` in all, e.g. a shared study's count); `note` shows beside it;
        `total` corrects the total (an estimate made exact). Off a terminal a plain line says so, at most every
        `every` seconds (many short steps would flood a CI log) and always for the last step."""
        self.done = done if done is not None else self.done + amount
        if total is not None:
            self.total = total
            if self._bar is not None and self._task is not None:
                self._bar.update(self._task, total=total)
        self.steps += 1
        seconds = time.perf_counter() - self._started
        rate = (self.done - self._base) / seconds if seconds > 0 else 0.0
        steps = f"{self.steps}/{self.steps_total} {self.step_name}, " if self.steps_total else ""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{rate:.2f} {self.unit}/s", note=note)
        elif not self.console.quiet and (seconds - self._said >= self.every or self.done >= self.total):
            self._said = seconds
            self.console.print(f"{self.title}: {steps}{self.done}/{self.total} "
                               f"{self.unit}, {rate:.2f} {self.unit}/s, ETA "
                               f"{_eta(self.done - self._base, self.total - self._base, seconds)}", soft_wrap=True,
                               highlight=False)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


__all__ = ["PLAIN_EVERY", "StepProgress"]
