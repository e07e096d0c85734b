"""Turn a user's model argument (local folder or Hugging Face hub id) into a local folder.

Only safetensors weights and small text files are fetched: pickled weights are never downloaded, let alone loaded.
A name that looks like a local path (``./x``, ``/x``, ``~/x``, ``models/targt`` when ``models/`` exists, ``a/b/c``,
``x.safetensors``) is never sent to the hub: a typo gets "no such folder", not a download attempt.
"""

from __future__ import annotations

import re
from pathlib import Path

from graft.errors import InputError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "*.txt", "*.model", "*.md"]
# Endings that name a file, never a hub repository (whose names may well hold dots: Qwen2.5-7B, v0.1).
FILE_EXTENSIONS = frozenset({
    "safetensors", "json", "yaml", "yml", "bin", "pt", "pth", "ckpt", "pkl", "pickle", "gguf", "h5", "msgpack",
    "txt", "md", "csv", "jsonl", "db", "sqlite", "zip", "tar", "gz", "py", "npz", "npy", "onnx",
})


def looks_local(spec: str) -> bool:
    """True when `spec` can only mean a path on this machine (see the module docstring)."""
    text = str(spec)
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or "\\" in text:
        return True
    if text.rsplit(".", 1)[-1].lower() in FILE_EXTENSIONS and "." in text:
        return True
    return Path(text.split("/", 1)[0]).is_dir()


def looks_like_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(str(spec))) and not looks_local(str(spec))


def pin(spec: str | None) -> str | None:
    """How a stored recipe names an input so it means the same from any folder: a hub id as is, a local path
    absolute and resolved."""
    if spec is None or not Path(spec).expanduser().exists():
        return spec  # a hub id, or a missing path that the error should name as the user typed it
    return str(Path(spec).expanduser().resolve())


def missing_local(spec: str | Path, role: str) -> InputError:
    return InputError(f"{spec}: no such {role} folder; check the path (a hub id is org/name)")


def resolve_model(spec: str | Path, *, role: str = "model", revision: str | None = None) -> Path:
    """A local folder as is; otherwise a hub id downloaded (or found in the HF cache when offline)."""
    path = Path(spec).expanduser()
    if path.exists() or path.is_symlink():
        return path
    if not looks_like_hub_id(str(spec)):
        raise missing_local(spec, role)
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
