"""What each graft operator costs in a streamed merge, next to `linear`.

    python bench/operators.py --size-mb 200            # synthetic bf16 trio of ~200 MB per model, CPU
    python bench/operators.py --size-mb 2000 --device cuda

Why: `orthogonal` and `trim` read every grafted tensor more than once (a whole-tensor pre-pass before the chunks are
applied: orthogonal one pass over τ, θ and θ_origin; trim three over τ), and `dare` hashes every element index.
This measures the wall time of `graft.engines.merge.merge` per operator on the same inputs (warm page cache: one untimed
linear merge first), so the price of each pre-pass is a number, not a guess. Single run per operator, best of
`--repeat`; inputs are written with deterministic seeds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from graft.engines.merge import merge
from graft.recipe import Recipe
from graft.vector import extract_vector

SPECS = {
    "linear": "linear",
    "orthogonal": "orthogonal",
    "dare": {"name": "dare", "density": 0.3},
    "trim": {"name": "trim", "density": 0.2},
    "trim_elect_sign": {"name": "trim", "density": 0.2, "elect_sign": True},
}


def write_model(folder: Path, hidden: int, layers: int, seed: int) -> Path:
    """A Llama-shaped bf16 checkpoint (attention and MLP weights, norms) with a config transformers accepts."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {"model.embed_tokens.weight": torch.randn(4096, hidden, generator=generator)}
    for layer in range(layers):
        p = f"model.layers.{layer}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"{p}self_attn.{name}.weight"] = torch.randn(hidden, hidden, generator=generator)
        for name, shape in (("gate_proj", (2 * hidden, hidden)), ("up_proj", (2 * hidden, hidden)),
                            ("down_proj", (hidden, 2 * hidden))):
            tensors[f"{p}mlp.{name}.weight"] = torch.randn(*shape, generator=generator)
        tensors[f"{p}input_layernorm.weight"] = torch.ones(hidden)
    folder.mkdir(parents=True)
    save_file({k: (v * 0.02).to(torch.bfloat16).contiguous() for k, v in tensors.items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "intermediate_size": 2 * hidden, "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
              "num_key_value_heads": hidden // 64, "vocab_size": 4096, "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200.0, help="approximate size of each model")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    per_layer = 2 * (4 * args.hidden**2 + 6 * args.hidden**2)  # bf16 bytes of one decoder layer
    layers = max(1, round(args.size_mb * 2**20 / per_layer))
    with tempfile.TemporaryDirectory(prefix="graft-bench-ops-") as tmp:
        root = Path(tmp)
        base, aligned = (write_model(root / n, args.hidden, layers, s) for n, s in (("base", 0), ("aligned", 1)))
        origin, target = (write_model(root / n, args.hidden, layers, s) for n, s in (("origin", 2), ("target", 3)))
        vector = extract_vector(base, aligned, root / "vector", hash_sources=False).out
        size = (target / "model.safetensors").stat().st_size

        def run(spec: object, out: Path) -> float:
            recipe = Recipe.parse({"target": str(target), "vector": str(vector), "out": str(out),
                                   "coefficients": {"scale": 0.7}, "operator": spec,
                                   "options": {"origin": str(origin), "device": args.device}})
            started = time.perf_counter()
            merge(recipe, force=True)
            return time.perf_counter() - started

        run("linear", root / "warm")
        seconds = {name: min(run(spec, root / f"out-{name}") for _ in range(args.repeat)) for name, spec in
                   SPECS.items()}
    print(json.dumps({"model_bytes": size, "layers": layers, "hidden": args.hidden, "device": args.device,
                      "seconds": {k: round(v, 3) for k, v in seconds.items()},
                      "vs_linear": {k: round(v / seconds["linear"], 2) for k, v in seconds.items()}}, indent=2))


if __name__ == "__main__":
    main()
