"""What one evaluation task is, as plain data: the CLI lists and validates tasks without loading any model. The
tasks themselves (`TASKS`, `SUITES`) are derived from the benchmark registry, graft.evals.benchmarks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Task:
    name: str
    benchmark: str  # the data.yaml key it reads
    kind: str  # the name of its kind (graft.evals.kinds: how its items are asked and scored)
    figstep: bool = False  # its requests typed into an image (FigStep), scored as the text requests are
    kind_needs_image: bool = False  # every task of its kind sends an image (VQA)

    @property
    def needs_image(self) -> bool:
        """A text-only model cannot score it."""
        return self.figstep or self.kind_needs_image


def samples_path(out: Path) -> Path:
    return out.with_name(out.stem + ".samples.jsonl")
