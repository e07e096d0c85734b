"""`EvalResults.to_frame()`: the scores as a pandas DataFrame for a notebook, the same numbers as results.json."""

from __future__ import annotations

import json
import math

from graft.evals import evaluate
from graft.evals.config import fixture_data


def test_results_frame_is_the_results_table(tiny_llama, tmp_path):
    out = tmp_path / "results.json"
    res = evaluate(tiny_llama, tasks="catqa,medqa", data=fixture_data(), limit=3, max_new_tokens=2, device="cpu",
                   out=out)
    frame = res.to_frame()
    written = json.loads(out.read_text())
    assert list(frame.index) == ["catqa", "medqa"]
    for task, b in written["benchmarks"].items():
        row = frame.loc[task]
        assert row["score"] == b["score"] and row["n"] == b["n"] == 3 and row["metric"] == b["metric"]
        assert (row["ci95_low"], row["ci95_high"]) == tuple(b["ci95"])
        assert math.isclose(row["se"], b["se"]) if b["se"] is not None else math.isnan(row["se"])
        assert row["items_per_s"] == written["timing"][task]["items_per_s"]
        outcomes = [s for s in res.samples if s["task"] == task]
        assert len(outcomes) == 3
