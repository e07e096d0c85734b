"""Turn a user's model argument (local folder or Hugging Face hub id) into a local folder.

Only safetensors weights and small text files are fetched: pickled weights are never downloaded, let alone loaded.
"""

from __future__ import annotations

import re
from pathlib import Path

from graft.errors import InputError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "*.txt", "*.model", "*.md"]


def looks_like_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not spec.startswith((".", "/"))


def resolve_model(spec: str | Path, *, role: str = "model", revision: str | None = None) -> Path:
    """A local folder as is; otherwise a hub id downloaded (or found in the HF cache when offline)."""
    path = Path(spec).expanduser()
    if path.exists() or not looks_like_hub_id(str(spec)):
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id=str(spec), revision=revision, allow_patterns=ALLOW_PATTERNS))
    except RepositoryNotFoundError as exc:
        raise InputError(f"{spec}: no such local folder, and no such hub repository (or it is gated)") from exc
    except LocalEntryNotFoundError as exc:
        raise InputError(
            f"{spec}: not a local folder, and the hub is unreachable with no cached copy; "
            "download it first (huggingface-cli download) or pass a local path"
        ) from exc
    except (HfHubHTTPError, OSError) as exc:
        raise InputError(f"{spec}: could not fetch the {role} from the hub ({exc.__class__.__name__}: {exc})") from exc
