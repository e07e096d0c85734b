"""Benchmark a graft merge against a naive safetensors loop, mergekit's `linear` merge and the I/O floor.

    python bench/merge.py --size-gb 1                      # ~1 GB trio (base, aligned, target), CPU
    python bench/merge.py --size-gb 13.5 --device cuda     # 7B layer shapes, on a GPU machine
    python bench/merge.py --size-gb 1 --baseline-src DIR   # also another graft (a checkout at DIR), same run

Why this exists: a streamed merge should be I/O-bound, so the claim worth checking is "close to the cost of just
reading the inputs and writing the output, and ahead of what people do today" (a `load_file`/add/`save_file` loop
per shard, or mergekit). The script builds a synthetic Llama-shaped trio of the requested size (written straight
with `safetensors.torch.save_file`, deterministic seeds), then runs every contender in its own subprocess so wall
time and peak memory are per contender: peak anonymous RSS (`RssAnon`, sampled every 20 ms: the memory a merge
really needs) and `ru_maxrss` from `wait4` (which also counts file-backed pages the process touched, e.g. mmap'd
shards). Everything runs with a warm page cache (one untimed read of the inputs first; dropping caches needs root),
and `sync` is called between contenders so one's dirty pages are not flushed on the next one's clock.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

LAM = 0.7
VOCAB = 32000
HEAD_DIM = 128
# (hidden, intermediate): TinyLlama-1.1B-like "1b", Llama-2-7B "7b", and a smaller one so a 1 GB trio still has
# several decoder layers instead of being mostly embedding.
SHAPES = {"small": (1024, 2816), "1b": (2048, 5632), "7b": (4096, 11008)}
ROLES = ("base", "aligned", "target")
BLOCK = 16 * 1024 * 1024


# -- the synthetic trio --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrioSpec:
    """Llama shapes of one checkpoint of the trio (all three share them) and how it is sharded."""

    hidden: int
    intermediate: int
    vocab: int
    layers: int
    shard_bytes: int
    seed: int = 0

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) in the order HF writes a LlamaForCausalLM (no GQA: k/v are as wide as q, as in Llama-2-7B)."""
        h, i = self.hidden, self.intermediate
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out += [(p + "input_layernorm.weight", (h,)), (p + "mlp.down_proj.weight", (h, i)),
                    (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                    (p + "post_attention_layernorm.weight", (h,))]
            out += [(p + f"self_attn.{m}_proj.weight", (h, h)) for m in "kovq"]
        return [*out, ("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]

    @property
    def checkpoint_bytes(self) -> int:
        return 2 * sum(math.prod(shape) for _, shape in self.tensors())  # bf16

    def config(self) -> dict[str, object]:
        heads = max(1, self.hidden // HEAD_DIM)
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_hidden_layers": self.layers, "num_attention_heads": heads,
            "num_key_value_heads": heads, "vocab_size": self.vocab, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
        }


def choose_spec(size_gb: float, shapes: str, shard_size: str | None) -> TrioSpec:
    """Layers (and, with shapes=auto, the layer width) such that the three checkpoints total about `size_gb`.

    auto picks the widest preset whose embedding + head stay under 40% of a checkpoint, so the trio looks like a
    real model (mostly decoder layers): "small" at 1 GB, "7b" from ~8 GB up.
    """
    params = size_gb * 1e9 / 3 / 2  # per checkpoint, bf16
    if shapes == "auto":
        fits = [k for k in ("7b", "1b", "small") if 2 * VOCAB * SHAPES[k][0] <= 0.4 * params]
        shapes = fits[0] if fits else "small"
    hidden, inter = SHAPES[shapes]
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((params - 2 * VOCAB * hidden - hidden) / per_layer))
    spec = TrioSpec(hidden, inter, VOCAB, layers, 0)
    # Default: ~3 shards per checkpoint, like a 7B model saved with 5 GB shards.
    shard = _parse_size(shard_size) if shard_size else max(1 << 20, math.ceil(spec.checkpoint_bytes / 3))
    return TrioSpec(hidden, inter, VOCAB, layers, shard)


def _parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    clean = text.strip().upper()
    for unit, factor in units.items():
        if clean.endswith(unit):
            return int(float(clean[: -len(unit)]) * factor)
    return int(clean)


def _shard_groups(spec: TrioSpec) -> list[list[tuple[str, tuple[int, ...]]]]:
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in spec.tensors():
        nbytes = 2 * math.prod(shape)
        if groups[-1] and size + nbytes > spec.shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += nbytes
    return groups


def build_trio(root: Path, spec: TrioSpec) -> dict[str, Path]:
    """Write base (random), aligned = base + noise, target = base + other noise, as bf16 HF folders.

    Reused when `root/trio.json` says the same spec was built there before (building is not what is measured).
    """
    import torch
    from safetensors.torch import save_file

    paths = {role: root / role for role in ROLES}
    stamp = root / "trio.json"
    if stamp.exists() and json.loads(stamp.read_text()) == asdict(spec) and all(p.is_dir() for p in paths.values()):
        return paths
    for p in paths.values():
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
    stamp.unlink(missing_ok=True)
    groups = _shard_groups(spec)
    files = [f"model-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)]
    gens = {role: torch.Generator().manual_seed(spec.seed * 3 + k) for k, role in enumerate(ROLES)}
    for group, file in zip(groups, files, strict=True):
        shards: dict[str, dict[str, torch.Tensor]] = {role: {} for role in ROLES}
        for name, shape in group:
            if len(shape) == 1:  # RMSNorm weights sit around 1
                base = 1 + 0.05 * torch.randn(shape, generator=gens["base"])
            else:
                base = 0.02 * torch.randn(shape, generator=gens["base"])
            base = base.to(torch.bfloat16)
            shards["base"][name] = base
            for role in ("aligned", "target"):  # a fine-tune: ~1e-3 updates, several bf16 ulps of a 0.02 weight
                noise = torch.randn(shape, generator=gens[role]).mul_(1e-3)
                shards[role][name] = noise.add_(base.float()).to(torch.bfloat16)
            del base
        for role in ROLES:
            save_file(shards[role], str(paths[role] / file), metadata={"format": "pt"})
        del shards
    weight_map = {name: file for group, file in zip(groups, files, strict=True) for name, _ in group}
    index = {"metadata": {"total_size": spec.checkpoint_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    for p in paths.values():
        (p / "config.json").write_text(json.dumps(spec.config(), indent=2) + "\n")
        (p / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    stamp.write_text(json.dumps(asdict(spec)))
    return paths


# -- measuring a subprocess ------------------------------------------------------------------------------------------
@dataclass
class Run:
    name: str
    wall_s: float
    peak_anon_mb: float
    maxrss_mb: float
    cpu_s: float = 0.0  # user + system: less sensitive than wall to other load on a shared machine
    note: str = ""
    walls: list[float] = field(default_factory=list)


def _rss_anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(name: str, argv: Sequence[str], log: Path, *, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> Run:
    """Run argv once; wall time, peak RssAnon (polled) and this child's own ru_maxrss (from wait4, not the max
    over all children as RUSAGE_CHILDREN would give)."""
    os.sync()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        peak = [0]
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_anon_kb(proc.pid))
                done.wait(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return Run(name, wall, peak[0] / 1024, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, walls=[wall])


def best_of(runs: list[Run]) -> Run:
    """Fastest wall over repeats (the least disturbed run); memory is the worst seen."""
    best = min(runs, key=lambda r: r.wall_s)
    return Run(best.name, best.wall_s, max(r.peak_anon_mb for r in runs), max(r.maxrss_mb for r in runs),
               min(r.cpu_s for r in runs), best.note, [w for r in runs for w in r.walls])


# -- work done in children: `python bench/merge.py --worker KIND ...` ------------------------------------------------
def worker_naive(target: Path, aligned: Path, base: Path, out: Path, lam: float, device: str) -> None:
    """What people write by hand: per shard, load all three whole, t + λa − λb in fp32 (mergekit's order), save."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    for shard in sorted(target.glob("*.safetensors")):
        t = load_file(shard, device=device)
        a = load_file(aligned / shard.name, device=device)
        b = load_file(base / shard.name, device=device)
        merged = {}
        for name, theta in t.items():
            acc = theta.to(torch.float32)
            acc.add_(a.pop(name).to(torch.float32), alpha=lam).add_(b.pop(name).to(torch.float32), alpha=-lam)
            merged[name] = acc.to(theta.dtype).cpu()
        del t, a, b
        save_file(merged, str(out / shard.name), metadata={"format": "pt"})
        del merged
    for extra in target.iterdir():
        if not extra.name.endswith(".safetensors"):
            shutil.copyfile(extra, out / extra.name)


def read_all(paths: Sequence[Path]) -> int:
    """Read every file under `paths` into one reused buffer: the cost of getting the bytes, nothing else."""
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    total = 0
    for root in paths:
        for file in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            with open(file, "rb", buffering=0) as handle:
                while got := handle.readinto(view):
                    total += got
    return total


def worker_copy(src: Path, dst: Path) -> None:
    """Copy a model folder file by file (`shutil.copyfile` uses the kernel's copy path on Linux)."""
    dst.mkdir(parents=True)
    for file in sorted(src.iterdir()):
        if file.is_file():
            shutil.copyfile(file, dst / file.name)


def run_worker(argv: list[str]) -> None:
    kind, *rest = argv
    if kind == "naive":
        target, aligned, base, out, lam, device = rest
        worker_naive(Path(target), Path(aligned), Path(base), Path(out), float(lam), device)
    elif kind == "read":
        read_all([Path(p) for p in rest])
    elif kind == "copy":
        worker_copy(Path(rest[0]), Path(rest[1]))
    elif kind == "build":
        build_trio(Path(rest[0]), TrioSpec(**json.loads(rest[1])))
    elif kind == "compare":
        print(json.dumps(compare(Path(rest[0]), Path(rest[1]))))
    elif kind == "import-torch":
        import torch  # noqa: F401
    else:
        raise SystemExit(f"unknown worker {kind!r}")


# -- comparing outputs ---------------------------------------------------------------------------------------------
def _tensor_files(folder: Path) -> dict[str, Path]:
    from safetensors import safe_open

    files: dict[str, Path] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            files.update(dict.fromkeys(handle.keys(), shard))
    return files


def compare(left: Path, right: Path) -> dict[str, object]:
    """Max |left − right| over all tensors, how many elements differ, and whether the key sets agree."""
    from safetensors import safe_open

    lf, rf = _tensor_files(left), _tensor_files(right)
    max_abs, differing, total = 0.0, 0, 0
    for name in sorted(lf.keys() & rf.keys()):
        with safe_open(str(lf[name]), framework="pt") as a, safe_open(str(rf[name]), framework="pt") as b:
            x, y = a.get_tensor(name).float(), b.get_tensor(name).float()
        diff = (x - y).abs()
        max_abs = max(max_abs, float(diff.max()))
        differing += int((diff > 0).sum())
        total += diff.numel()
    return {"same_keys": lf.keys() == rf.keys(), "max_abs_diff": max_abs,
            "differing_fraction": differing / max(1, total)}


# -- the benchmark -----------------------------------------------------------------------------------------------------
def _mergekit_cli() -> str | None:
    local = Path(sys.executable).with_name("mergekit-yaml")
    return str(local) if local.exists() else shutil.which("mergekit-yaml")


def _mergekit_config(paths: dict[str, Path], lam: float) -> str:
    """mergekit's spelling of θ_t + λ(θ_a − θ_b): a linear merge with weights 1, λ, −λ and no normalisation."""
    import yaml

    config = {
        "merge_method": "linear",
        "models": [{"model": str(paths["target"]), "parameters": {"weight": 1.0}},
                   {"model": str(paths["aligned"]), "parameters": {"weight": lam}},
                   {"model": str(paths["base"]), "parameters": {"weight": -lam}}],
        "parameters": {"normalize": False},
        "dtype": "float32",
        "out_dtype": "bfloat16",
    }
    return yaml.safe_dump(config, sort_keys=False)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("graft", "torch", "safetensors", "mergekit"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


@contextlib.contextmanager
def _workdir(path: str | None, keep: bool) -> Iterator[tuple[Path, bool]]:
    if path:
        root = Path(path).absolute()
        root.mkdir(parents=True, exist_ok=True)
        yield root, False
        return
    root = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    try:
        yield root, True
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def run_bench(args: argparse.Namespace) -> dict[str, object]:
    spec = choose_spec(args.size_gb, args.shapes, args.shard_size)
    py, me = sys.executable, str(Path(__file__).resolve())
    graft_cli = [py, "-m", "graft.cli"]
    results: dict[str, object] = {
        "command": " ".join(["python bench/merge.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "device": args.device,
                    "loadavg_at_start": os.getloadavg()[0]},
        "versions": _versions(), "cache": "warm", "lam": LAM, "spec": asdict(spec),
    }
    with _workdir(args.workdir, args.keep) as (root, temporary):
        started = time.perf_counter()
        # Build and compare in children too: a parent that imported torch would inflate every child's ru_maxrss
        # (Linux carries the pre-exec address space's high-water mark over exec, and subprocess uses vfork).
        subprocess.run([py, me, "--worker", "build", str(root), json.dumps(asdict(spec))], check=True)
        paths = {role: root / role for role in ROLES}
        files = len(list(paths["target"].glob("*.safetensors")))
        print(f"trio: {len(spec.tensors())} tensors, {spec.layers} layers of hidden {spec.hidden} / intermediate "
              f"{spec.intermediate}, vocab {spec.vocab}; {spec.checkpoint_bytes / 1e9:.3f} GB per checkpoint in "
              f"{files} shards ({3 * spec.checkpoint_bytes / 1e9:.2f} GB trio) at {root} "
              f"[ready in {time.perf_counter() - started:.1f} s]", flush=True)
        outs = {k: root / f"out-{k}" for k in ("vector", "graft", "baseline", "naive", "mergekit", "copy")}
        log = root / "bench.log"
        cfg = root / "mergekit.yaml"
        cfg.write_text(_mergekit_config(paths, LAM))
        mergekit = _mergekit_cli()
        read_all(list(paths.values()))  # untimed warm-up: every contender then reads from the page cache

        def fresh(*dirs: Path) -> None:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)

        contenders: list[tuple[str, list[str], tuple[Path, ...]]] = [
            ("startup", [py, me, "--worker", "import-torch"], ()),
            ("graft startup", [*graft_cli, "--version"], ()),
            ("graft extract", [*graft_cli, "extract", "-b", str(paths["base"]), "-a", str(paths["aligned"]),
                               "-o", str(outs["vector"]), "-q"], (outs["vector"],)),
            ("graft merge", [*graft_cli, "merge", "-t", str(paths["target"]), "--vector", str(outs["vector"]),
                             "-o", str(outs["graft"]), "--scale", str(LAM), "--device", args.device, "-q",
                             *(["--chunk-size", args.chunk_size] if args.chunk_size else [])],
             (outs["graft"],)),
            ("naive", [py, me, "--worker", "naive", str(paths["target"]), str(paths["aligned"]), str(paths["base"]),
                       str(outs["naive"]), str(LAM), args.device], (outs["naive"],)),
            ("floor read", [py, me, "--worker", "read", str(paths["target"]), str(outs["vector"])], ()),
            ("floor copy", [py, me, "--worker", "copy", str(paths["target"]), str(outs["copy"])], (outs["copy"],)),
        ]
        # Every child runs in the work folder with graft's source named explicitly: `python -m` puts the current
        # folder first on sys.path, so a checkout there would otherwise be what runs.
        this_checkout = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)}
        environments: dict[str, dict[str, str]] = {name: this_checkout for name, _, _ in contenders}
        if args.baseline_src:  # another graft (e.g. the previous commit), measured in this same run
            source = str(Path(args.baseline_src).resolve())
            environments["graft merge (baseline)"] = {**os.environ, "PYTHONPATH": source}
            contenders.insert(4, ("graft merge (baseline)",
                                  [*graft_cli, "merge", "-t", str(paths["target"]), "--vector", str(outs["vector"]),
                                   "-o", str(outs["baseline"]), "--scale", str(LAM), "--device", args.device, "-q",
                                   *(["--chunk-size", args.chunk_size] if args.chunk_size else [])],
                                  (outs["baseline"],)))
        if mergekit and not args.skip_mergekit:
            mk = [mergekit, str(cfg), str(outs["mergekit"]), "--no-copy-tokenizer", "--no-write-model-card",
                  "--quiet", *(["--cuda"] if args.device == "cuda" else ["--no-cuda"])]
            contenders.append(("mergekit", mk, (outs["mergekit"],)))
        runs: dict[str, list[Run]] = {name: [] for name, _, _ in contenders}
        for rep in range(args.repeat):
            for name, argv, produced in contenders:
                fresh(*produced)
                if name == "floor read":  # τ is an input of the merge: make sure it is as warm as the target
                    read_all([outs["vector"]])
                run = measure(name, argv, log, env=environments.get(name), cwd=root)
                runs[name].append(run)
                print(f"  [{rep + 1}/{args.repeat}] {name:<14} {run.wall_s:7.2f} s  cpu {run.cpu_s:6.2f} s  "
                      f"anon {run.peak_anon_mb:6.0f} MB  maxrss {run.maxrss_mb:6.0f} MB  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        best = {name: best_of(r) for name, r in runs.items()}
        best["graft extract + merge"] = _combine("graft extract + merge", best["graft extract"], best["graft merge"])
        best["floor (read + copy)"] = _combine("floor (read + copy)", best["floor read"], best["floor copy"])
        results["runs"] = {name: asdict(r) for name, r in best.items()}
        results["machine"]["loadavg_at_end"] = os.getloadavg()[0]  # type: ignore[index]
        pairs = {"graft vs naive": ("graft", "naive")}
        if args.baseline_src:
            pairs["graft vs baseline"] = ("graft", "baseline")
        if "mergekit" in best:
            pairs |= {"graft vs mergekit": ("graft", "mergekit"), "naive vs mergekit": ("naive", "mergekit")}
        results["diffs"] = {label: _compare_in_child(py, me, outs[a], outs[b]) for label, (a, b) in pairs.items()}
        if not args.keep:
            fresh(*outs.values())
            if not temporary:
                print(f"(kept the trio in {root} for the next run; delete it or pass another --workdir)")
    return results


def _compare_in_child(py: str, me: str, left: Path, right: Path) -> dict[str, object]:
    done = subprocess.run([py, me, "--worker", "compare", str(left), str(right)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _combine(name: str, first: Run, second: Run) -> Run:
    """Two steps run one after the other: times add, peak memory is the larger of the two."""
    return Run(name, first.wall_s + second.wall_s, max(first.peak_anon_mb, second.peak_anon_mb),
               max(first.maxrss_mb, second.maxrss_mb), first.cpu_s + second.cpu_s)


ORDER = ("floor read", "floor copy", "floor (read + copy)", "startup", "graft startup", "graft merge",
         "graft merge (baseline)", "graft extract", "graft extract + merge", "naive", "mergekit")
LABELS = {"startup": "python + import torch (fixed cost)", "graft startup": "graft CLI startup (`graft --version`)",
          "graft merge (baseline)": "graft merge of --baseline-src", "floor read": "I/O floor: read target + τ",
          "floor copy": "I/O floor: copy target", "floor (read + copy)": "I/O floor (read + copy)"}


def table_rows(results: dict[str, object]) -> list[list[str]]:
    runs = {k: Run(**v) for k, v in results["runs"].items()}  # type: ignore[union-attr]
    floor = runs["floor (read + copy)"].wall_s
    naive = runs["naive"].wall_s
    mk = runs["mergekit"].wall_s if "mergekit" in runs else None
    rows = []
    for name in ORDER:
        if name not in runs:
            continue
        r = runs[name]
        rows.append([LABELS.get(name, name), f"{r.wall_s:.2f}", f"{r.cpu_s:.2f}", f"{r.peak_anon_mb:.0f}",
                     f"{r.maxrss_mb:.0f}",
                     f"{r.wall_s / floor:.2f}×", f"{r.wall_s / naive:.2f}×", f"{r.wall_s / mk:.2f}×" if mk else "—"])
    return rows


HEADERS = ["contender", "wall s", "cpu s", "peak anon MB", "ru_maxrss MB", "vs floor", "vs naive", "vs mergekit"]


def markdown_table(results: dict[str, object]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def print_report(results: dict[str, object]) -> None:
    spec = results["spec"]
    print(f"\n{results['command']}  ({results['date']}, {results['machine']['cpus']} CPUs, "  # type: ignore[index]
          f"device {results['machine']['device']}, warm cache, λ={LAM}, "  # type: ignore[index]
          f"load avg {results['machine']['loadavg_at_start']:.1f}→{results['machine']['loadavg_at_end']:.1f}, "  # type: ignore[index]
          f"{spec['layers']} layers of {spec['hidden']}/{spec['intermediate']})\n")  # type: ignore[index]
    print(markdown_table(results))
    print()
    for pair, d in results["diffs"].items():  # type: ignore[union-attr]
        print(f"{pair}: same keys {d['same_keys']}, max |Δ| {d['max_abs_diff']:.3g}, "
              f"{100 * d['differing_fraction']:.3f}% of elements differ")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        run_worker(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0, help="total size of the trio (3 checkpoints), GB")
    parser.add_argument("--shapes", choices=["auto", *SHAPES], default="auto",
                        help="layer width preset (auto: widest that keeps embeddings under 40%% of a checkpoint)")
    parser.add_argument("--shard-size", default=None, help="bytes per input shard, e.g. 200MB (default: ~3 shards)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="compute device for graft merge, naive and mergekit (extract always runs on CPU)")
    parser.add_argument("--chunk-size", default=None, help="pass --chunk-size to graft merge (default: graft's own)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender; the fastest wall is reported")
    parser.add_argument("--workdir", default=None, help="where to build the trio (reused across runs if unchanged)")
    parser.add_argument("--keep", action="store_true", help="keep the trio and every output")
    parser.add_argument("--skip-mergekit", action="store_true", help="leave mergekit out (slow, big)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--baseline-src", default=None,
                        help="also time `graft merge` from another source tree (e.g. `git archive` of an earlier "
                             "commit unpacked there), in this same run: a before/after on one machine state")
    args = parser.parse_args(argv)
    results = run_bench(args)
    print_report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
