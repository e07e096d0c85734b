"""The evaluation tasks and suites, as plain data: what the CLI lists and validates without loading any model.
They are derived from the benchmark registry (graft.evals.benchmarks)."""

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


# Filled (in place) from the benchmark registry, graft.evals.benchmarks: one task per benchmark, plus NAME-figstep
# for the benchmarks that declare FigStep variants.
TASKS: dict[str, Task] = {}
SUITES: dict[str, list[str]] = {}


def samples_path(out: Path) -> Path:
    return out.with_name(out.stem + ".samples.jsonl")


from . import benchmarks as _benchmarks  # noqa: E402,F401  (fills TASKS and SUITES; it imports Task from here)
