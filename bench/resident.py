"""Benchmark one search trial's weight update: the resident graft against the memory-bandwidth floor and the disk.

    python bench/resident.py --size-gb 0.5                          # 0.5 GB bf16 Llama-shaped target, CPU
    python bench/resident.py --size-gb 13.5 --device cuda --skip-naive --skip-mergekit   # 7B shapes on a GPU

Why this exists: `graft search` sets the live model's weights to θ + λ·τ before every trial. The claim to check
is that this costs about one pass over memory (the floor: a plain `torch.add(orig, τ, alpha=λ, out=param)` over
the very same tensors, and a plain copy), and that it is far cheaper than what a search would otherwise do per
trial: a streamed `graft merge` to disk plus a `from_pretrained` reload ("naive"), or mergekit's linear merge plus
a reload. Everything is measured in one process and one run, on the same model (warm page cache for the disk
contenders); the resident weights are checked bit for bit against the reloaded merge.

The model is bench/merge.py's synthetic trio (bf16 `LlamaForCausalLM` tensors, deterministic seeds): τ is
extracted from its base/aligned pair once and the target gets a small word-level tokenizer so it loads as a model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from graft.core.recipe import Coefficients, Recipe
from graft.engines.extract import extract_vector
from graft.engines.merge import merge
from graft.engines.resident import ResidentGraft
from graft.evals.generation import HFBackend

_spec = importlib.util.spec_from_file_location("bench_merge", Path(__file__).with_name("merge.py"))
assert _spec is not None and _spec.loader is not None
bench_merge = importlib.util.module_from_spec(_spec)
sys.modules["bench_merge"] = bench_merge  # its dataclasses look their module up there
_spec.loader.exec_module(bench_merge)

LAM = 0.7
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def trial_coefficients(k: int) -> Coefficients:
    """A different point per trial, λ ≠ 0 for every tensor (so every trial does the full work)."""
    return Coefficients(scale=0.5 + 0.05 * (k % 5), control_points=[1.0, 0.5 + 0.1 * (k % 3), 1.0])


def add_tokenizer(folder: Path) -> None:
    """A small word-level tokenizer: HFBackend.load needs one, the weights do not care which."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", *(f"w{i}" for i in range(60))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)


def prepare(root: Path, spec) -> tuple[dict[str, Path], Path]:
    """The trio (reused when unchanged), the target's tokenizer, and τ = aligned − base (reused likewise)."""
    paths = bench_merge.build_trio(root, spec)
    if not (paths["target"] / "tokenizer.json").exists():
        add_tokenizer(paths["target"])
    vector = root / "vector"
    stamp = root / "vector.stamp"
    if not (stamp.exists() and stamp.read_text() == json.dumps(asdict(spec)) and (vector / "vector.json").exists()):
        shutil.rmtree(vector, ignore_errors=True)
        extract_vector(paths["base"], paths["aligned"], vector, hash_sources=False)
        stamp.write_text(json.dumps(asdict(spec)))
    return paths, vector


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeats: int, warmup: int = 2) -> list[float]:
    """Seconds per call (device work included)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def same_weights(model: torch.nn.Module, other: torch.nn.Module | dict[str, torch.Tensor]) -> bool:
    mine, theirs = model.state_dict(), other if isinstance(other, dict) else other.state_dict()
    return mine.keys() == theirs.keys() and all(
        torch.equal(mine[k].cpu().reshape(-1).view(torch.uint8), theirs[k].cpu().reshape(-1).view(torch.uint8))
        for k in mine)


def max_abs_diff(model: torch.nn.Module, other: torch.nn.Module) -> float:
    mine, theirs = model.state_dict(), other.state_dict()
    return max(float((mine[k].float().cpu() - theirs[k].float().cpu()).abs().max()) for k in mine)


def run_bench(args: argparse.Namespace) -> dict[str, object]:
    spec = bench_merge.choose_spec(3 * args.size_gb, args.shapes, None)
    device = args.device
    results: dict[str, object] = {
        "command": " ".join(["python bench/resident.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                    "loadavg_at_start": os.getloadavg()[0]},
        "versions": bench_merge._versions(), "spec": asdict(spec), "trials": args.trials,
    }
    root = Path(args.workdir).absolute() if args.workdir else Path(tempfile.mkdtemp(prefix="graft-resident-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        paths, vector = prepare(root, spec)
        print(f"target: {spec.layers} layers of {spec.hidden}/{spec.intermediate}, vocab {spec.vocab}, "
              f"{spec.checkpoint_bytes / 1e9:.3f} GB bf16 at {paths['target']} "
              f"[ready in {time.perf_counter() - started:.1f} s]", flush=True)
        recipe = Recipe.parse({"target": str(paths["target"]), "vector": str(vector),
                               "options": {"device": device}})
        rows: dict[str, dict[str, float]] = {}

        start = time.perf_counter()
        resident = ResidentGraft.from_recipe(recipe, load=HFBackend.load, device=device, text_only=True)
        sync(device)
        load_s = time.perf_counter() - start
        print(f"resident graft loaded in {load_s:.2f} s: {len(resident.param_names)} tensors, "
              f"{resident.resident_bytes / 1e9:.3f} GB resident besides the model", flush=True)
        results["resident_load_s"] = load_s
        results["resident_bytes"] = resident.resident_bytes

        k = iter(range(10**9))
        rows["resident apply"] = {"times": timed(lambda: resident.apply(trial_coefficients(next(k))), device,
                                                 args.trials)}
        # The floors run over the very tensors the resident graft holds (its private slots): same memory, same sizes.
        slots = resident._slots
        rows["floor: copy orig → param"] = {"times": timed(
            lambda: [s.out.copy_(s.orig) for s in slots], device, args.trials)}
        rows["floor: torch.add(orig, τ, alpha=λ, out=param)"] = {"times": timed(
            lambda: [torch.add(s.orig, s.tau, alpha=LAM, out=s.out) for s in slots], device, args.trials)}
        grafted_bytes = sum(s.orig.nbytes for s in slots)

        check = Coefficients(scale=LAM)
        resident.apply(check)
        reference = {k: v.detach().cpu().clone() for k, v in resident.engine.model.state_dict().items()}
        outputs = {name: root / f"out-{name}" for name in ("naive", "mergekit")}
        if not args.skip_naive:
            times, identical = [], None
            for rep in range(args.naive_trials):
                start = time.perf_counter()
                merge(resident.recipe(check if rep == 0 else trial_coefficients(rep)).model_copy(
                    update={"out": str(outputs["naive"])}), force=True)
                engine = HFBackend.load(outputs["naive"], device=device, dtype="bfloat16", text_only=True)
                sync(device)
                times.append(time.perf_counter() - start)
                if rep == 0:
                    identical = same_weights(resident.engine.model, engine.model)
                del engine
            rows["naive: graft merge to disk + reload"] = {"times": times}
            results["resident_equals_merge"] = identical
            print(f"resident weights == reloaded `graft merge` output: {identical}", flush=True)
        mergekit = bench_merge._mergekit_cli()
        if mergekit and not args.skip_mergekit:
            cfg = root / "mergekit.yaml"
            cfg.write_text(bench_merge._mergekit_config(paths, LAM))
            times, diff = [], None
            for rep in range(args.naive_trials):
                shutil.rmtree(outputs["mergekit"], ignore_errors=True)
                start = time.perf_counter()
                subprocess.run([mergekit, str(cfg), str(outputs["mergekit"]), "--no-copy-tokenizer",
                                "--no-write-model-card", "--quiet", "--cuda" if device == "cuda" else "--no-cuda"],
                               check=True, capture_output=True)
                for name in TOKENIZER_FILES:  # bytes of text; copied outside mergekit so its flags stay simple
                    if (paths["target"] / name).exists():
                        shutil.copyfile(paths["target"] / name, outputs["mergekit"] / name)
                engine = HFBackend.load(outputs["mergekit"], device=device, dtype="bfloat16", text_only=True)
                sync(device)
                times.append(time.perf_counter() - start)
                if rep == 0:
                    diff = max_abs_diff(resident.engine.model, engine.model)
                del engine
            rows["mergekit linear + reload"] = {"times": times}
            results["mergekit_max_abs_diff"] = diff
        resident.close()
        slots = []  # drop the last references to the resident tensors before a second model is loaded
        if not args.skip_fused:
            start = time.perf_counter()
            fused = ResidentGraft.from_recipe(recipe, load=HFBackend.load, device=device, text_only=True, fused=True)
            fused.apply(check)  # the first apply compiles
            sync(device)
            results["fused_load_and_compile_s"] = time.perf_counter() - start
            results["fused_equals_unfused"] = same_weights(fused.engine.model, reference)
            print(f"fused: loaded and compiled in {results['fused_load_and_compile_s']:.1f} s; weights == unfused: "
                  f"{results['fused_equals_unfused']}", flush=True)
            k = iter(range(10**9))
            rows["resident apply, fused=True"] = {"times": timed(lambda: fused.apply(trial_coefficients(next(k))),
                                                                 device, args.trials)}
            fused.close()
        for row in rows.values():
            row["median_ms"] = 1e3 * statistics.median(row["times"])
            row["min_ms"] = 1e3 * min(row["times"])
        results["rows"] = rows
        results["grafted_bytes"] = grafted_bytes
        results["machine"]["loadavg_at_end"] = os.getloadavg()[0]  # type: ignore[index]
    finally:
        for name in ("out-naive", "out-mergekit"):
            shutil.rmtree(root / name, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return results


ORDER = ("floor: copy orig → param", "floor: torch.add(orig, τ, alpha=λ, out=param)", "resident apply",
         "resident apply, fused=True", "naive: graft merge to disk + reload", "mergekit linear + reload")
HEADERS = ["per trial", "median ms", "min ms", "vs floor (add)", "vs resident", "GB/s (add's 3 streams)"]


def markdown_table(results: dict[str, object]) -> str:
    rows = results["rows"]
    floor = rows["floor: torch.add(orig, τ, alpha=λ, out=param)"]["median_ms"]  # type: ignore[index]
    resident = rows["resident apply"]["median_ms"]  # type: ignore[index]
    streams = 3 * results["grafted_bytes"] / 1e9  # type: ignore[operator]
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for name in ORDER:
        if name not in rows:  # type: ignore[operator]
            continue
        r = rows[name]  # type: ignore[index]
        med = r["median_ms"]
        lines.append(f"| {name} | {med:.1f} | {r['min_ms']:.1f} | {med / floor:.2f}× | {med / resident:.2f}× | "
                     f"{streams / (med / 1e3):.1f} |")
    return "\n".join(lines)


def print_report(results: dict[str, object]) -> None:
    machine = results["machine"]
    print(f"\n{results['command']}  ({results['date']}, {machine['device']}, {machine['cpus']} CPUs, "  # type: ignore[index]
          f"{machine['torch_threads']} torch threads, load avg {machine['loadavg_at_start']:.1f}"  # type: ignore[index]
          f"→{machine['loadavg_at_end']:.1f}; {results['grafted_bytes'] / 1e9:.3f} GB grafted, "  # type: ignore[index,operator]
          f"{results['resident_bytes'] / 1e9:.3f} GB resident, loaded once in {results['resident_load_s']:.2f} s)\n")  # type: ignore[operator]
    print(markdown_table(results))
    if "resident_equals_merge" in results:
        print("\nresident weights bit-identical to the reloaded `graft merge` output:",
              results["resident_equals_merge"])
    if results.get("mergekit_max_abs_diff") is not None:
        print(f"mergekit vs resident: max |Δ| {results['mergekit_max_abs_diff']:.3g} "
              "(graft extract stores τ in bf16 by default)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=0.5, help="size of the target checkpoint (bf16), GB")
    parser.add_argument("--shapes", choices=["auto", *bench_merge.SHAPES], default="auto",
                        help="layer width preset (auto: widest that keeps embeddings under 40%% of the model)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--trials", type=int, default=20, help="timed applies (and floor passes)")
    parser.add_argument("--naive-trials", type=int, default=2, help="timed merge + reload rounds per disk contender")
    parser.add_argument("--skip-naive", action="store_true", help="leave out graft merge + reload")
    parser.add_argument("--skip-mergekit", action="store_true", help="leave out mergekit + reload")
    parser.add_argument("--skip-fused", action="store_true", help="leave out the torch.compile'd apply")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workdir", default=None, help="where to build the model (reused across runs if unchanged)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_bench(args)
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
