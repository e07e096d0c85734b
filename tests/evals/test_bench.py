"""bench/eval.py runs end to end on a toy model and its paths agree (a smoke test, not a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_runs_and_paths_agree(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/eval.py", "--n", "6", "--max-new-tokens", "6", "--batch-size", "4",
         "--toy-hidden", "64", "--toy-layers", "1", "--device", "cpu", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert rows["generate: per-prompt loop"]["same_replies"] == 1.0
    assert rows["generate: lm-eval generate_until"]["same_replies"] == 1.0
    assert rows["generate: graft batched + refusal stop"]["same_verdicts"] == 1.0
    assert rows["loglik: lm-eval HFLM"]["max_abs_diff_vs_graft"] < 1e-4
    assert "batched / per-prompt loop" in proc.stdout
