"""How graft names a model or a vector: a local folder, or a Hugging Face hub id `org/name`, optionally pinned to a
revision (`org/name@v1.0`, the form huggingface_hub's own file system uses, so a recipe pins one string).

A name that looks like a local path (``./x``, ``/x``, ``~/x``, ``models/targt`` when ``models/`` exists, ``a/b/c``,
``x.safetensors``) is never taken for a hub id: a typo gets "no such folder", not a download attempt. Fetching what
a hub id names is graft.io.hub's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from graft.errors import UsageError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
REVISION = re.compile(r"^[\w.\-/]+$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Endings that name a file, never a hub repository (whose names may well hold dots: Qwen2.5-7B, v0.1).
FILE_EXTENSIONS = frozenset({
    "safetensors", "json", "yaml", "yml", "bin", "pt", "pth", "ckpt", "pkl", "pickle", "gguf", "h5", "msgpack",
    "txt", "md", "csv", "jsonl", "db", "sqlite", "zip", "tar", "gz", "py", "npz", "npy", "onnx",
})


@dataclass(frozen=True)
class HubRef:
    """Where a folder came from on the hub: the repository and (when known) the commit it resolved to."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def split_revision(spec: str) -> tuple[str, str | None]:
    """`org/name@rev` → (`org/name`, `rev`); anything else (a path, a plain id) → (spec, None)."""
    text = str(spec)
    if "@" not in text:
        return text, None
    repo, revision = text.split("@", 1)
    if HUB_ID.match(repo) and revision and REVISION.match(revision) and not looks_local(repo):
        return repo, revision
    return text, None


def with_revision(spec: str | None, revision: str | None, flag: str) -> str | None:
    """A spec with a `--*-revision` flag folded in (`org/name` + `v1` → `org/name@v1`); refuses a local folder or a
    second, different revision."""
    if spec is None or revision is None:
        return spec
    repo, existing = split_revision(spec)
    if not looks_like_hub_id(repo):
        raise UsageError(f"{flag} {revision}: {spec} is not a hub id (org/name); a revision applies only to the hub")
    if existing is not None and existing != revision:
        raise UsageError(f"{flag} {revision}: {spec} already names revision {existing}; give one of them")
    if not REVISION.match(revision):
        raise UsageError(f"{flag} {revision!r}: not a branch, tag or commit name")
    return f"{repo}@{revision}"


def looks_local(spec: str) -> bool:
    """True when `spec` can only mean a path on this machine (see the module docstring)."""
    text = str(spec)
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or "\\" in text:
        return True
    if text.rsplit(".", 1)[-1].lower() in FILE_EXTENSIONS and "." in text:
        return True
    return Path(text.split("/", 1)[0]).is_dir()


def looks_like_hub_id(spec: str) -> bool:
    repo, _ = split_revision(str(spec))
    return bool(HUB_ID.match(repo)) and not looks_local(repo)


def check_hub_id(repo_id: str, flag: str | None = None) -> str:
    """A repository id to push to (org/name), checked before any work so a typo is not found after hours."""
    if not HUB_ID.match(repo_id):
        named = f"{flag} {repo_id}" if flag else repo_id
        raise UsageError(f"{named}: not a hub repository id; use org/name (or user/name)")
    return repo_id


__all__ = ["COMMIT", "HUB_ID", "REVISION", "HubRef", "check_hub_id", "looks_like_hub_id", "looks_local",
           "split_revision", "with_revision"]
