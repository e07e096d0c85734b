"""Benchmark `graft inspect`'s scores (graft.inspect.score_tensors) against a naive whole-shard loop and the I/O floor.

    python bench/inspect_scores.py --size-gb 1                  # ~1 GB trio, CPU
    python bench/inspect_scores.py --size-gb 13.5 --device cuda # 7B layer shapes, on a GPU machine

The question: does streaming in row chunks with float64 sums cost more than what people write by hand (load each
shard of target, origin and τ whole, compute every statistic per tensor in float64, Safe-LoRA as V(VᵀΔW)), and how
far is it from just reading the bytes? The trio of bench/merge.py is reused: τ = aligned − base (extracted once,
not timed), target = the trio's target, origin = base. Each contender runs in its own subprocess (wall, CPU, peak
anonymous RSS); the naive results double as a check of graft's numbers (max relative difference printed).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge import _workdir, best_of, build_trio, choose_spec, measure, read_all


def worker_graft(vector: Path, target: Path, origin: Path | None, device: str, out: Path) -> None:
    from graft.inspect.scores import score_tensors

    stats = score_tensors(vector, target, origin, device=device)
    out.write_text(json.dumps({s.tensor: [math.sqrt(s.tau_sq), math.sqrt(s.theta_sq),
                                          s.dot / math.sqrt(s.tau_sq * s.med_sq) if s.med_sq else None,
                                          s.safelora] for s in stats}))


def worker_naive(vector: Path, target: Path, origin: Path, device: str, out: Path) -> None:
    """Per target shard: target and origin shards whole, τ tensors from the vector's shards, float64 per tensor."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    where = json.loads((vector / "vector.safetensors.index.json").read_text())["weight_map"] \
        if (vector / "vector.safetensors.index.json").exists() else None
    results = {}
    for shard in sorted(target.glob("*.safetensors")):
        theta_all, base_all = load_file(shard, device=device), load_file(origin / shard.name, device=device)
        for name, theta in theta_all.items():
            file = vector / (where[name] if where else "vector.safetensors")
            with safe_open(str(file), framework="pt", device=device) as handle:
                v = handle.get_tensor(name).to(torch.float64)
            t = theta.to(torch.float64)
            med = t - base_all[name].to(torch.float64)
            tau_norm, med_norm = float(v.norm()), float(med.norm())
            cos = float((v * med).sum()) / (tau_norm * med_norm) if med_norm else None
            safelora = None
            if v.dim() == 2:
                projected = v @ (v.T @ med)
                safelora = float((projected * med).sum() / (projected.norm() * med_norm))
            results[name] = [tau_norm, float(t.norm()), cos, safelora]
        del theta_all, base_all
    out.write_text(json.dumps(results))


def max_relative_difference(left: dict, right: dict) -> float:
    worst = 0.0
    for name, values in left.items():
        for a, b in zip(values, right[name], strict=True):
            if a is not None and b is not None:
                worst = max(worst, abs(a - b) / max(abs(b), 1e-300))
    return worst


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        kind, *rest = sys.argv[2:]
        if kind == "read":
            read_all([Path(p) for p in rest])
        else:
            vector, target, origin, device, out = rest
            fn = worker_graft if kind == "graft" else worker_naive
            fn(Path(vector), Path(target), Path(origin) if origin != "-" else None, device, Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="total size of the trio (3 checkpoints), GB")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender; the fastest wall is reported")
    parser.add_argument("--workdir", default=None, help="where to build the trio (reused across runs if unchanged)")
    args = parser.parse_args()
    spec = choose_spec(args.size_gb, "auto", None)
    py, me = sys.executable, str(Path(__file__).resolve())
    with _workdir(args.workdir, False) as (root, _):
        paths = build_trio(root, spec)  # reused when already built there (building is not measured)
        vector = root / "vector"
        if not (vector / "vector.json").exists():
            subprocess.run([py, "-m", "graft.cli", "extract", "-b", str(paths["base"]), "-a", str(paths["aligned"]),
                            "-o", str(vector), "--no-hash", "-q"], check=True)
        target, origin = paths["target"], paths["base"]
        log = root / "bench-inspect.log"
        read_all([vector, target, origin])  # warm cache for everyone
        outs = {k: root / f"inspect-{k}.json" for k in ("graft", "graft-norms", "naive")}
        contenders = [
            ("floor: read τ + target + origin", [py, me, "--worker", "read", str(vector), str(target), str(origin)]),
            ("graft: target only (norms)", [py, me, "--worker", "graft", str(vector), str(target), "-", args.device,
                                            str(outs["graft-norms"])]),
            ("graft: target + origin (all scores)", [py, me, "--worker", "graft", str(vector), str(target),
                                                     str(origin), args.device, str(outs["graft"])]),
            ("naive: whole shards, float64", [py, me, "--worker", "naive", str(vector), str(target), str(origin),
                                              args.device, str(outs["naive"])]),
        ]
        runs = {name: best_of([measure(name, argv, log) for _ in range(args.repeat)]) for name, argv in contenders}
        print(f"\n{spec.layers} layers of {spec.hidden}/{spec.intermediate}, vocab {spec.vocab}; "
              f"{spec.checkpoint_bytes / 1e9:.2f} GB per checkpoint; device {args.device}\n")
        print("| contender | wall s | cpu s | peak anon MB |\n|---|---|---|---|")
        for name, run in runs.items():
            print(f"| {name} | {run.wall_s:.2f} | {run.cpu_s:.2f} | {run.peak_anon_mb:.0f} |")
        graft, naive = (json.loads(outs[k].read_text()) for k in ("graft", "naive"))
        print(f"\nmax relative difference graft vs naive (norms, cos, Safe-LoRA): "
              f"{max_relative_difference(graft, naive):.2e}")


if __name__ == "__main__":
    main()
