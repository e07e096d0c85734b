"""Resources an input cannot exhaust: a model cut into hundreds of shards is read with a bounded number of open
files (`ulimit -n 64` here; macOS shells default to 256), by extract, plan and merge alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SHARDS = 300
LIMIT = 64  # open files allowed to the whole process, Python and torch included


def _many_shards(folder: Path, seed: int) -> Path:
    """A model whose every tensor sits in a shard of its own: an embedding and SHARDS − 1 layers of 1 KB."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {"model.embed_tokens.weight": torch.randn(8, 16, generator=gen)}
    tensors |= {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(16, 16, generator=gen) for i in range(SHARDS - 1)}
    folder.mkdir(parents=True)
    weight_map = {}
    for k, (name, value) in enumerate(tensors.items(), start=1):
        file = f"model-{k:05d}-of-{SHARDS:05d}.safetensors"
        save_file({name: value}, str(folder / file), metadata={"format": "pt"})
        weight_map[name] = file
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": SHARDS - 1}))
    return folder


def _graft_limited(*args: object) -> subprocess.CompletedProcess[str]:
    code = ("import resource, sys; soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, hard)); "
            "from graft.cli import main; sys.argv[0] = 'graft'; main()")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_hundreds_of_shards_under_a_small_open_file_limit(tmp_path: Path) -> None:
    base, aligned, target = (_many_shards(tmp_path / name, seed) for seed, name in enumerate(("b", "a", "t")))
    vector = tmp_path / "vector"
    proc = _graft_limited("extract", "-b", base, "-a", aligned, "-o", vector, "-q", "--no-hash",
                          "--shard-size", "1KB")  # τ in hundreds of shards too
    assert proc.returncode == 0, proc.stderr
    assert len(list(vector.glob("*.safetensors"))) > LIMIT
    assert _graft_limited("plan", "-t", target, "--vector", vector, "-q").returncode == 0
    merged = tmp_path / "merged"
    proc = _graft_limited("merge", "-t", target, "--vector", vector, "-o", merged, "-q", "--scale", "0.5")
    assert proc.returncode == 0, proc.stderr
    # Every shard written and right: θ + 0.5·(θ_aligned − θ_base), against an independent computation.
    assert len(list(merged.glob("*.safetensors"))) == SHARDS
    for shard in list(merged.glob("*.safetensors"))[::37]:
        (name, got), = load_file(shard).items()
        theta, a, b = (load_file(folder / shard.name)[name] for folder in (target, aligned, base))
        assert torch.equal(got, theta + (a - b) * 0.5)
