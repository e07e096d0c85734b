"""The evaluation tasks and suites, as plain data: what the CLI lists and validates without loading any model."""

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


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("catqa", "catqa", "safety"),
    Task("hexphi", "hexphi", "safety"),
    Task("medsafetybench", "medsafetybench", "safety"),
    Task("catqa-figstep", "catqa", "safety", figstep=True),
    Task("hexphi-figstep", "hexphi", "safety", figstep=True),
    Task("medsafetybench-figstep", "medsafetybench", "safety", figstep=True),
    Task("benign", "benign", "benign"),
    Task("benign-figstep", "benign", "benign", figstep=True),
    Task("pubmedqa", "pubmedqa", "mc"),
    Task("medqa", "medqa", "mc"),
    Task("medbullets4", "medbullets4", "mc"),
    Task("medbullets5", "medbullets5", "mc"),
    Task("vqarad", "vqarad", "vqa"),
]}
SUITES: dict[str, list[str]] = {
    "safety": [n for n, t in TASKS.items() if t.kind in ("safety", "benign")],
    "medical": [n for n, t in TASKS.items() if t.kind in ("mc", "vqa")],
}
SUITES["all"] = SUITES["safety"] + SUITES["medical"]


def samples_path(out: Path) -> Path:
    return out.with_name(out.stem + ".samples.jsonl")
