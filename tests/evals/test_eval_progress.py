"""`graft eval`'s progress counts the items of each task as it finishes (plain lines when not on a terminal)."""

from __future__ import annotations

import io

from rich.console import Console

import graft
from graft.cli.progress import StepProgress
from graft.evals import fixture_data


def test_eval_counts_items_as_tasks_finish(tiny_llama) -> None:
    buf = io.StringIO()
    bar = StepProgress(Console(file=buf, force_terminal=False, width=120), unit="items", title="eval")
    results = graft.evaluate(tiny_llama, tasks="medqa,catqa", data=fixture_data(), device="cpu", bar=bar)
    bar.stop()
    n = [results.benchmarks["medqa"]["n"], results.benchmarks["catqa"]["n"]]
    lines = buf.getvalue().splitlines()
    assert [line.split(", ")[:2] for line in lines] == [["eval: 1/2 tasks", f"{n[0]}/{sum(n)} items"],
                                                       ["eval: 2/2 tasks", f"{sum(n)}/{sum(n)} items"]]
