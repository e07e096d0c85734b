"""bench/resident.py runs end to end on its smallest model and its resident weights equal the reloaded merge
(a smoke test of the benchmark, not a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_and_resident_equals_merge(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/resident.py", "--size-gb", "0.01", "--shapes", "small", "--trials", "2",
         "--naive-trials", "1", "--skip-mergekit", "--skip-fused", "--workdir", str(tmp_path / "work"),
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["resident_equals_merge"] is True
    assert set(results["rows"]) == {"resident apply", "floor: copy orig → param",
                                    "floor: torch.add(orig, τ, alpha=λ, out=param)",
                                    "naive: graft merge to disk + reload"}
    assert results["resident_bytes"] == 2 * results["grafted_bytes"]  # bf16 θ and bf16 τ
    assert "| resident apply |" in proc.stdout
