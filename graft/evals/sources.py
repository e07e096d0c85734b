"""Where one benchmark's items come from: a local path (file or folder) or a dataset on the hub. The loaders read
a `Source`; `data.yaml` (graft.evals.config) maps each benchmark name to one, and a benchmark left out of it reads
the public source its declaration names (graft.evals.benchmarks)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict


class HubSource(BaseModel):
    """A dataset on the Hugging Face hub. `layout: rows` (the default) reads it with
    `datasets.load_dataset(hub, name, split=split, revision=revision)`; `layout: files` downloads the repository's
    files as published (`huggingface_hub.snapshot_download`) and reads them like a local copy, for a release whose
    files `datasets` cannot parse as a table (HEx-PHI's header-less CSVs). Both go through the hub cache and honour
    `HF_TOKEN`, `HF_HUB_OFFLINE` and `HF_DATASETS_OFFLINE`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hub: str
    name: str | None = None
    split: str = "test"
    revision: str | None = None
    layout: Literal["rows", "files"] = "rows"

    def part(self) -> str:
        """Which part of the repository is read: its config and split, or its files."""
        if self.layout == "files":
            return "its files"
        return f"config {self.name}, split {self.split}" if self.name else f"split {self.split}"

    def __str__(self) -> str:
        """How results and messages name it: `hub:owner/name[@revision] (config, split)`."""
        return f"hub:{self.hub}{'@' + self.revision if self.revision else ''} ({self.part()})"


Source = Path | HubSource
