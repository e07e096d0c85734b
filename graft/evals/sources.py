"""Where one benchmark's items come from: a local path (file or folder) or a dataset on the hub. The loaders read
a `Source`; `data.yaml` (graft.evals.config) maps each benchmark name to one."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict


class HubSource(BaseModel):
    """A dataset on the Hugging Face hub, read with `datasets.load_dataset(hub, name, split=split)`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hub: str
    name: str | None = None
    split: str = "test"
    revision: str | None = None


Source = Path | HubSource
