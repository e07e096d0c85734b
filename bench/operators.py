"""Benchmark each graft operator's streamed merge against the naive whole-tensor way and mergekit's nearest method.

    python bench/operators.py --size-mb 200 --repeat 2          # ~200 MB bf16 checkpoints, CPU
    python bench/operators.py --size-mb 200 --only dare trim    # a subset of the operators

Why: `orthogonal` and `trim` read every grafted tensor more than once (a whole-tensor pre-pass before the chunks are
applied) and `dare` hashes every element index, so what each operator costs next to `linear`, next to what people
write by hand and next to mergekit is a measurement, not a guess. The trio (base, aligned, target) is bench/merge.py's
synthetic Llama-shaped bf16 one; the target's origin is the base (the medical model was fine-tuned from it); τ is
extracted once (reported apart) and λ = 0.7. Per operator, each in its own subprocess (wall, CPU, peak anonymous RSS
and ru_maxrss as bench/merge.py measures them, warm page cache, best of --repeat):

* graft: `graft merge --operator NAME --operator-param ...` through the CLI (streamed, default chunks);
* naive: per target shard, load the target, τ (and the origin) whole with `safetensors.torch.load_file`, compute the
  same operator on whole tensors with plain torch (dare: `torch.bernoulli` mask and 1/density; trim: stable
  descending argsort for the top k; orthogonal: the projection with whole-tensor fp64 sums), θ + λ·f(τ) in fp32,
  `save_file`;
* mergekit: its nearest method (`mergekit-yaml`, base_model = base, target weight 1 density 1, aligned weight λ):
  linear → `linear` (1, λ, −λ), dare → `dare_linear`, trim → `breadcrumbs` (gamma 0), trim + elect_sign → `ties`;
  orthogonal has none. These are NOT the same computation (see docs/performance.md): other RNG and an l1-norm
  rescale for DARE, floor(density·n) and unstable ties for trim, sign election over both deltas for TIES.

Outputs are compared: graft vs naive must be identical where the computation is the same (linear, orthogonal, trim,
trim + elect_sign); for dare the masks differ by design (graft's seeded hash vs torch's generator), so the check is
that both change about the same fraction of elements and agree bit for bit wherever both kept an element (the
1/density rescale and the arithmetic are the same).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

_spec = importlib.util.spec_from_file_location("bench_merge", Path(__file__).with_name("merge.py"))
assert _spec is not None and _spec.loader is not None
bench_merge = importlib.util.module_from_spec(_spec)
sys.modules["bench_merge"] = bench_merge
_spec.loader.exec_module(bench_merge)

LAM = bench_merge.LAM
# name → (graft operator, mergekit method or None, mergekit per-model parameters of the aligned model)
OPERATORS: dict[str, tuple[dict[str, object], str | None, dict[str, object]]] = {
    "linear": ({"name": "linear"}, "linear", {}),
    "orthogonal": ({"name": "orthogonal"}, None, {}),
    "dare": ({"name": "dare", "density": 0.3, "seed": 0}, "dare_linear", {"density": 0.3}),
    "trim": ({"name": "trim", "density": 0.2}, "breadcrumbs", {"density": 0.2, "gamma": 0.0}),
    "trim_elect_sign": ({"name": "trim", "density": 0.2, "elect_sign": True}, "ties", {"density": 0.2}),
}
EXACT = {"linear", "orthogonal", "trim", "trim_elect_sign"}  # naive computes the very same numbers


# -- the naive whole-tensor operators (run in a child: `--worker naive OP ...`) ----------------------------------------
def naive_effective_tau(spec: dict[str, object], tau, theta, origin, generator):
    """f(τ) on whole tensors, in fp32, the way one writes it by hand."""
    import torch

    t = tau.to(torch.float32)
    name = spec["name"]
    if name == "linear":
        return t
    if name == "orthogonal":
        med = theta.to(torch.float64) - origin.to(torch.float64)
        sq = float(med.square().sum())
        c = float((t.double() * med).sum()) / sq if sq > 0 else 0.0
        return t - (theta.to(torch.float32) - origin.to(torch.float32)) * c
    density = float(spec["density"])  # type: ignore[arg-type]
    if name == "dare":
        keep = torch.bernoulli(torch.full_like(t, density), generator=generator).bool()
        return (t * (1.0 / density)).masked_fill_(~keep, 0.0)
    if name == "trim":
        flat = t.abs().reshape(-1)
        k = min(flat.numel(), max(1, round(density * flat.numel())))
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        keep[torch.argsort(flat, descending=True, stable=True)[:k]] = True  # ties: lower flat index first
        keep = keep.view(t.shape)
        if spec.get("elect_sign"):
            med = theta.to(torch.float32) - origin.to(torch.float32)
            keep &= ~(((t > 0) & (med < 0)) | ((t < 0) & (med > 0)))
        return t.masked_fill(~keep, 0.0)
    raise SystemExit(f"no naive form of operator {name!r}")


def worker_naive(spec: dict[str, object], target: Path, vector: Path, origin: Path, out: Path, lam: float) -> None:
    """Per target shard: load the target, τ and the origin whole, f(τ), θ + λ·f(τ) in fp32, one cast, save."""
    import torch
    from safetensors.torch import load_file, save_file

    generator = torch.Generator().manual_seed(int(spec.get("seed", 0)))  # type: ignore[call-overload]
    taus: dict[str, torch.Tensor] = {}
    for file in sorted(vector.glob("*.safetensors")):
        taus.update(load_file(file))
    out.mkdir(parents=True)
    for shard in sorted(target.glob("*.safetensors")):
        thetas = load_file(shard)
        uses_origin = spec["name"] == "orthogonal" or bool(spec.get("elect_sign"))
        origins = load_file(origin / shard.name) if uses_origin else {}
        merged = {}
        for name, theta in thetas.items():
            tau = taus.pop(name, None)
            if tau is None:
                merged[name] = theta
                continue
            f = naive_effective_tau(spec, tau, theta, origins.get(name), generator)
            merged[name] = (f * lam).add_(theta.to(torch.float32)).to(theta.dtype)
        save_file(merged, str(out / shard.name), metadata={"format": "pt"})
        del thetas, origins, merged
    for extra in target.iterdir():
        if not extra.name.endswith(".safetensors"):
            shutil.copyfile(extra, out / extra.name)


def compare_dare(target: Path, left: Path, right: Path) -> dict[str, object]:
    """Two DARE outputs with different masks: the share of elements each changed, and whether they agree wherever
    both changed an element (same 1/density rescale, same arithmetic)."""
    from safetensors import safe_open

    files = {k: bench_merge._tensor_files(p) for k, p in (("t", target), ("a", left), ("b", right))}
    changed_a = changed_b = both = both_equal = total = 0
    for name in sorted(files["t"]):
        tensors = []
        for key in ("t", "a", "b"):
            with safe_open(str(files[key][name]), framework="pt") as handle:
                tensors.append(handle.get_tensor(name))
        theta, a, b = tensors
        ca, cb = a != theta, b != theta
        changed_a += int(ca.sum())
        changed_b += int(cb.sum())
        joint = ca & cb
        both += int(joint.sum())
        both_equal += int((a[joint] == b[joint]).sum())
        total += theta.numel()
    return {"changed_fraction_left": changed_a / total, "changed_fraction_right": changed_b / total,
            "jointly_changed": both, "jointly_changed_equal": both_equal}


def run_worker(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "naive":
        spec, target, vector, origin, out, lam = rest
        worker_naive(json.loads(spec), Path(target), Path(vector), Path(origin), Path(out), float(lam))
    elif kind == "compare-dare":
        print(json.dumps(compare_dare(Path(rest[0]), Path(rest[1]), Path(rest[2]))))
    else:
        bench_merge.run_worker(argv)


# -- mergekit's nearest spelling ---------------------------------------------------------------------------------------
def mergekit_config(which: str, paths: dict[str, Path], lam: float) -> str | None:
    import yaml

    _, method, params = OPERATORS[which]
    if method is None:
        return None
    if method == "linear":
        return bench_merge._mergekit_config(paths, lam)
    config = {
        "merge_method": method,
        "base_model": str(paths["base"]),
        "models": [{"model": str(paths["target"]), "parameters": {"weight": 1.0, "density": 1.0}},
                   {"model": str(paths["aligned"]), "parameters": {"weight": lam, **params}}],
        "parameters": {"normalize": False},
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    return yaml.safe_dump(config, sort_keys=False)


# -- the benchmark ---------------------------------------------------------------------------------------------------
def graft_params(spec: dict[str, object]) -> list[str]:
    argv = ["--operator", str(spec["name"])]
    for key, value in spec.items():
        if key != "name":
            argv += ["--operator-param", f"{key}={json.dumps(value)}"]
    return argv


def run_bench(args: argparse.Namespace) -> dict[str, object]:
    spec = bench_merge.choose_spec(3 * args.size_mb * 1e6 / 1e9, args.shapes, None)
    py, me = sys.executable, str(Path(__file__).resolve())
    graft_cli = [py, "-m", "graft.cli"]
    results: dict[str, object] = {
        "command": " ".join(["python bench/operators.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_start": os.getloadavg()[0],
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset")},
        "versions": bench_merge._versions(), "cache": "warm", "lam": LAM, "spec": asdict(spec),
    }
    chosen = args.only or list(OPERATORS)
    with bench_merge._workdir(args.workdir, args.keep) as (root, _temporary):
        subprocess.run([py, me, "--worker", "build", str(root), json.dumps(asdict(spec))], check=True)
        paths = {role: root / role for role in bench_merge.ROLES}
        print(f"trio: {spec.layers} layers of hidden {spec.hidden} / intermediate {spec.intermediate}, vocab "
              f"{spec.vocab}; {spec.checkpoint_bytes / 1e6:.0f} MB per checkpoint at {root}", flush=True)
        log = root / "bench.log"
        vector = root / "vector"
        shutil.rmtree(vector, ignore_errors=True)
        extract = [*graft_cli, "extract", "-b", str(paths["base"]), "-a", str(paths["aligned"]), "-o", str(vector),
                   "-q"]
        mergekit = None if args.skip_mergekit else bench_merge._mergekit_cli()
        contenders: list[tuple[str, str, list[str], Path | None]] = []
        for which in chosen:
            op = OPERATORS[which][0]
            out = {k: root / f"out-{which}-{k}" for k in ("graft", "naive", "mergekit")}
            contenders.append((which, "graft", [*graft_cli, "merge", "-t", str(paths["target"]), "--vector",
                                                str(vector), "-o", str(out["graft"]), "--scale", str(LAM),
                                                "--origin", str(paths["base"]), "--device", "cpu", "-q",
                                                *graft_params(op)], out["graft"]))
            contenders.append((which, "naive", [py, me, "--worker", "naive", json.dumps(op), str(paths["target"]),
                                                str(vector), str(paths["base"]), str(out["naive"]), str(LAM)],
                               out["naive"]))
            config = mergekit_config(which, paths, LAM)
            if mergekit and config:
                cfg = root / f"mergekit-{which}.yaml"
                cfg.write_text(config)
                contenders.append((which, "mergekit", [mergekit, str(cfg), str(out["mergekit"]),
                                                       "--no-copy-tokenizer", "--no-write-model-card", "--quiet",
                                                       "--no-cuda"], out["mergekit"]))
        contenders.insert(0, ("", "graft extract (once per pair)", extract, vector))
        contenders.insert(0, ("", "python + import torch", [py, me, "--worker", "import-torch"], None))
        bench_merge.read_all(list(paths.values()))  # untimed warm-up
        runs: dict[tuple[str, str], list] = {(w, k): [] for w, k, _, _ in contenders}
        for rep in range(args.repeat):
            for which, kind, argv, produced in contenders:
                if produced is not None:
                    shutil.rmtree(produced, ignore_errors=True)
                run = bench_merge.measure(f"{which} {kind}", argv, log)
                runs[(which, kind)].append(run)
                print(f"  [{rep + 1}/{args.repeat}] {which:<16} {kind:<30} {run.wall_s:7.2f} s  cpu "
                      f"{run.cpu_s:6.2f} s  anon {run.peak_anon_mb:6.0f} MB  load {os.getloadavg()[0]:.1f}",
                      flush=True)
        best = {f"{w}|{k}": asdict(bench_merge.best_of(r)) for (w, k), r in runs.items()}
        results["runs"] = best
        results["machine"]["loadavg_at_end"] = os.getloadavg()[0]  # type: ignore[index]
        checks: dict[str, object] = {}
        for which in chosen:
            graft_out, naive_out = root / f"out-{which}-graft", root / f"out-{which}-naive"
            if which in EXACT:
                checks[which] = _child_json(py, me, "compare", graft_out, naive_out)
            else:
                checks[which] = _child_json(py, me, "compare-dare", paths["target"], graft_out, naive_out)
        results["checks"] = checks
        if not args.keep:
            for which in chosen:
                for k in ("graft", "naive", "mergekit"):
                    shutil.rmtree(root / f"out-{which}-{k}", ignore_errors=True)
    return results


def _child_json(py: str, me: str, kind: str, *paths: Path) -> dict[str, object]:
    done = subprocess.run([py, me, "--worker", kind, *map(str, paths)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


HEADERS = ["operator", "contender", "wall s", "cpu s", "peak anon MB", "ru_maxrss MB", "vs naive (wall / cpu)",
           "vs mergekit (wall / cpu)"]


def _ratio(r: dict[str, float], other: dict[str, float] | None) -> str:
    return f"{r['wall_s'] / other['wall_s']:.2f}× / {r['cpu_s'] / other['cpu_s']:.2f}×" if other else "—"


def markdown_table(results: dict[str, object]) -> str:
    runs = results["runs"]
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for key, r in runs.items():  # type: ignore[union-attr]
        which, kind = key.split("|")
        naive = runs.get(f"{which}|naive") if which else None  # type: ignore[union-attr]
        mk = runs.get(f"{which}|mergekit") if which else None  # type: ignore[union-attr]
        vs_mk = _ratio(r, mk)
        if which and not OPERATORS[which][1]:
            vs_mk = "no mergekit method"
        method = f" (`{OPERATORS[which][1]}`)" if kind == "mergekit" else ""
        lines.append(f"| {which or '—'} | {kind}{method} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | "
                     f"{r['peak_anon_mb']:.0f} | {r['maxrss_mb']:.0f} | {_ratio(r, naive)} | {vs_mk} |")
    return "\n".join(lines)


def describe_checks(results: dict[str, object]) -> list[str]:
    lines = []
    for which, c in results["checks"].items():  # type: ignore[union-attr]
        if "max_abs_diff" in c:
            same = c["same_keys"] and c["max_abs_diff"] == 0
            lines.append(f"{which}: graft vs naive {'identical' if same else 'DIFFER'} (max |Δ| "
                         f"{c['max_abs_diff']:.3g}, {100 * c['differing_fraction']:.4f}% of elements)")
        else:
            lines.append(f"{which}: changed elements graft {100 * c['changed_fraction_left']:.2f}% vs naive "
                         f"{100 * c['changed_fraction_right']:.2f}%; where both changed one "
                         f"({c['jointly_changed']}), equal in {c['jointly_changed_equal']}")
    return lines


def print_report(results: dict[str, object]) -> None:
    spec, machine = results["spec"], results["machine"]
    print(f"\n{results['command']}  ({results['date']}, {machine['cpus']} CPUs, OMP_NUM_THREADS="  # type: ignore[index]
          f"{machine['OMP_NUM_THREADS']}, warm cache, λ={LAM}, load avg "  # type: ignore[index]
          f"{machine['loadavg_at_start']:.1f}→{machine['loadavg_at_end']:.1f}, {spec['layers']} layers of "  # type: ignore[index]
          f"{spec['hidden']}/{spec['intermediate']}, versions {results['versions']})\n")  # type: ignore[index]
    print(markdown_table(results))
    print()
    print("\n".join(describe_checks(results)))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        run_worker(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200.0, help="size of each bf16 checkpoint, MB")
    parser.add_argument("--shapes", choices=["auto", *bench_merge.SHAPES], default="small",
                        help="layer width preset of bench/merge.py")
    parser.add_argument("--only", nargs="+", choices=list(OPERATORS), default=None, help="operators to run")
    parser.add_argument("--repeat", type=int, default=2, help="runs per contender; the fastest wall is reported")
    parser.add_argument("--workdir", default=None, help="where to build the trio (reused across runs if unchanged)")
    parser.add_argument("--keep", action="store_true", help="keep the trio and every output")
    parser.add_argument("--skip-mergekit", action="store_true", help="leave mergekit out")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = run_bench(args)
    results["total_s"] = round(time.perf_counter() - started, 1)
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
