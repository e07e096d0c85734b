"""Which search space generalises best out of sample, on toy worlds (docs/search.md has the table).

For each world seed and each configuration (space × operator × sampler), run the demo's search (constrained,
δ = 2 % of the medical score, ρ = 10 % over-refusal) on the search part of every benchmark, then judge the searched
recipe exactly as `graft demo` does on the held-out part: safety kept of aligned, medical kept of medical,
over-refusal, and whether some uniform λ of the grid is at least as good on all three. The in-sample figures are
kept beside them (the gap is the winner's curse).

    nice python bench/search_generalisation.py --seeds 0,1,2 --configs layers-linear-gp,layers-choice-gp \
        --out bench/results/search_generalisation.json

Worlds are built on first use and cached (~/.cache/graft or $GRAFT_CACHE); each (seed, config) result is
written to --out as soon as it exists and reused on a rerun, so the script can be stopped and resumed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GROUPS = {g: {"low": 0.0, "high": 2.0} for g in ("attn", "mlp", "norm", "embed", "head")}
DEPTHS = {
    "layers": {"kind": "layers", "low": 0.0, "high": 2.0},
    "points3": {"kind": "control_points", "count": 3, "low": 0.0, "high": 2.0},
    "blocks2": {"kind": "blocks", "count": 2, "low": 0.0, "high": 2.0},
}
OPERATORS = {"linear": "linear", "orthogonal": "orthogonal", "choice": {"choice": ["linear", "orthogonal"]}}


def config_space(name: str) -> tuple[dict[str, Any], str]:
    """'DEPTH-OPERATOR-SAMPLER', e.g. layers-choice-gp → (graft_space mapping, sampler)."""
    depth, operator, sampler = name.split("-")
    space = {"graft_space": 1, "sampler": sampler, "depth": DEPTHS[depth], "groups": GROUPS,
             "operator": OPERATORS[operator]}
    return space, sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--configs", default="layers-linear-gp,layers-choice-gp,points3-choice-gp")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--holdout", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "search_generalisation.json")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/graft-bench-generalisation"))
    args = parser.parse_args()

    from rich.console import Console

    from graft import demo
    from graft.engines.extract import extract_vector
    from graft.evals import evaluate
    from graft.evals.config import DataConfig
    from graft.evals.screening import Split
    from graft.toy.world import WorldSpec, build_world

    console = Console(stderr=True)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        world = build_world(WorldSpec(seed=seed), log=console.print)
        data = DataConfig.from_yaml(world.data)
        work = args.workdir / f"seed{seed}"
        vector = work / "vector"
        if not (vector / "vector.json").is_file():
            extract_vector(world.base, world.aligned, vector)
        safety = (*demo.SAFETY_TASKS, *demo.available(demo.FIGSTEP_TASKS, data))
        benign = (*demo.BENIGN_TASKS, *demo.available(demo.IMAGE_BENIGN_TASKS, data))
        parts = {"held_out": Split(args.holdout, seed, "heldout"), "in_sample": Split(args.holdout, seed, "search")}
        aligned = {p: demo.outcomes_of(evaluate(world.aligned, tasks=[*demo.SAFETY_TASKS, *demo.BENIGN_TASKS,
                                                                       *demo.TEXT_MEDICAL],
                                                data=data, split=s, device="cpu").samples)
                   for p, s in parts.items()}
        medical_in = demo.score_row("medical", 0.0, "in_sample", demo.outcomes_of(evaluate(
            world.medical, tasks=[*demo.TEXT_MEDICAL, *demo.IMAGE_MEDICAL], data=data, split=parts["in_sample"],
            device="cpu").samples))
        for name in args.configs.split(","):
            key = f"{name}/seed{seed}/trials{args.trials}/holdout{args.holdout:g}"
            if key in results:
                continue
            space, sampler = config_space(name)
            t0 = time.perf_counter()
            search = demo.search_world(world, vector, work / name, medical_in, demo.DEMO_SCALES, args.trials, None,
                                       "cpu", seed, args.holdout, safety, benign, space, sampler, lambda _m: None)
            items = json.loads((search.out / "heldout.json").read_text())["models"]
            uniform = (search.summary.get("best_uniform") or {}).get("baseline_lambda")
            row: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 1),
                                   "operator": items.get("searched", {}).get("operator")}
            for part, field in (("held_out", "held_out"), ("in_sample", "in_sample")):
                outcomes = {"aligned": aligned[part], "medical": items["lambda0"][field],
                            "searched": items["searched"][field]}
                rows = [demo.score_row("aligned", None, part, outcomes["aligned"]),
                        demo.score_row("medical", 0.0, part, outcomes["medical"])]
                for label, m in items.items():
                    if label.startswith("uniform_"):
                        grid = demo.grid_name(float(label.split("_", 1)[1]))
                        outcomes[grid] = m[field]
                        rows.append(demo.score_row(grid, float(label.split("_", 1)[1]), part, m[field]))
                rows.append(demo.score_row("searched", None, part, outcomes["searched"]))
                verdict = demo.judge_bar(rows, outcomes, part=part,
                                         best_uniform=demo.grid_name(uniform) if uniform is not None else None)
                row[part] = verdict.as_dict()
            results[key] = row
            args.out.write_text(json.dumps(results, indent=1))
            held = row["held_out"]
            console.print(f"{key}: " + "; ".join(f"{c['name']} {100 * c['value']:.1f}" for c in held["checks"])
                          + f"; undominated {held['dominates']}; met {held['met']} ({row['seconds']} s)")
    print(table(results))


def table(results: dict[str, Any]) -> str:
    """Markdown: per configuration, held-out means over seeds (in-sample in brackets) and seeds meeting the bar."""
    by_config: dict[str, list[dict[str, Any]]] = {}
    for key, row in results.items():
        by_config.setdefault(key.split("/")[0], []).append(row)
    lines = ["| configuration | seeds | safety kept | medical kept | over-refusal | undominated | bar met |",
             "|---|---|---|---|---|---|---|"]

    def mean(rows: list[dict[str, Any]], part: str, name: str) -> float:
        vals = [next(c["value"] for c in r[part]["checks"] if c["name"].startswith(name)) for r in rows]
        return 100 * sum(vals) / len(vals)

    for config, rows in sorted(by_config.items()):
        cells = [f"{mean(rows, 'held_out', n):.1f} ({mean(rows, 'in_sample', n):.1f})"
                 for n in ("safety kept", "medical kept", "over-refusal (text)")]
        lines.append(f"| {config} | {len(rows)} | " + " | ".join(cells)
                     + f" | {sum(r['held_out']['dominates'] for r in rows)}/{len(rows)}"
                     + f" | {sum(r['held_out']['met'] for r in rows)}/{len(rows)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
