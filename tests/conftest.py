"""Shared fixtures: tiny real-architecture checkpoints, built once per test session and reused read-only."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch

from graft.engines.extract import extract_vector
from graft.testing.layouts import LAYOUTS, TextSpec, build_target, build_text_pair

FAMILY_OF_LAYOUT = {
    "causal": "llama", "qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2", "qwen2_vl_t5names": "qwen2",
    "llava": "llama", "llava_med": "mistral", "gemma3": "gemma3", "mistral3": "mistral",
}


@dataclass(frozen=True)
class World:
    """A donor pair, its vector, and a target (with its origin) in one layout."""

    layout: str
    spec: TextSpec
    base: Path
    aligned: Path
    vector: Path
    origin: Path
    target: Path


@pytest.fixture(scope="session")
def make_world(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., World]:
    cache: dict[tuple, World] = {}

    def make(layout: str = "causal", *, dtype: torch.dtype = torch.bfloat16, sharded: bool = False,
             extra_vocab: int = 0, vector_dtype: str = "auto") -> World:
        key = (layout, dtype, sharded, extra_vocab, vector_dtype)
        if key not in cache:
            spec = TextSpec(family=FAMILY_OF_LAYOUT[layout])
            root = tmp_path_factory.mktemp(f"world-{layout}")
            shard = "40KB" if sharded else None
            base, aligned = build_text_pair(root / "pair", spec, dtype=dtype, max_shard_size=shard)
            origin, target = build_target(layout, root / "model", aligned, spec, dtype=dtype, max_shard_size=shard,
                                          extra_vocab=extra_vocab, with_origin=True)
            vector = extract_vector(base, aligned, root / "vector", dtype=vector_dtype).out
            cache[key] = World(layout, spec, base, aligned, vector, origin, target)
        return cache[key]

    return make


ALL_LAYOUTS = sorted(LAYOUTS)


@pytest.fixture(scope="session")
def load_bench() -> Callable[[str], ModuleType]:
    """A script of bench/ as a module, by name (bench/ is not a package: its scripts run from the command line)."""
    def load(name: str) -> ModuleType:
        script = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
