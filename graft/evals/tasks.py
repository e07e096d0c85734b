"""What one evaluation task is, as plain data: the CLI lists and validates tasks without loading any model. The
tasks themselves (`TASKS`, `SUITES`) are derived from the benchmark registry, graft.evals.benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["safety", "benign", "mc", "vqa"]


@dataclass(frozen=True)
class Task:
    name: str
    benchmark: str  # the data.yaml key it reads
    kind: Kind
    figstep: bool = False

    @property
    def needs_image(self) -> bool:
        return self.figstep or self.kind == "vqa"


def samples_path(out: Path) -> Path:
    return out.with_name(out.stem + ".samples.jsonl")
