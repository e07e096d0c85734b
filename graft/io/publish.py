"""`graft push`: publish a merged model folder or a vector folder to the Hugging Face hub.

Only a complete graft output is pushed: the folder must carry graft's marker, open cleanly as what its marker says
(every shard the index names, readable headers, a valid manifest) and hold no staging left by an unfinished write.
Everything is checked before the first request, so a refused push never leaves a half-made repository behind.

What is published names no path of this machine. A local output keeps its inputs' absolute paths, which is what lets
its recipe rebuild it byte for byte from anywhere here; the copies pushed of the files that hold them (the recipe and
the model card of a merged model, the manifest of a vector) name a hub input by id and commit, and a local one by its
folder name with the sha256 of its weight files (hashed at push time). The local folder is never changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graft.errors import GraftError, InputError, UsageError, reason
from graft.io.guard import MARKER, OWNER, STAGING_RE, folder_kind, is_graft_folder
from graft.io.hub import REVISION, check_hub_id, looks_like_hub_id, network_errors

if TYPE_CHECKING:
    from graft.modelcard import LocalInput

PUSHABLE = {"merge": "merged model", "vector": "vector"}
# graft's bookkeeping stays home: the marker only means something to `--force` on this machine.
IGNORE = [MARKER]


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    kind: str  # "merge" or "vector"
    revision: str | None  # the branch pushed to (None: the default branch)
    commit: str | None  # the commit the hub made
    url: str | None


def check_pushable(folder: str | Path) -> str:
    """The folder's kind ("merge" or "vector") when it is a complete graft output; one-line InputError otherwise."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise InputError(f"{folder}: no such folder; give a folder written by `graft merge` or `graft extract`")
    if STAGING_RE.match(path.name):
        raise InputError(f"{folder}: a staging folder of an unfinished graft write, not an output; push the "
                         "finished folder (rerun the command that made it)")
    if not is_graft_folder(path):
        raise InputError(f"{folder}: not a graft output (no {MARKER} file); only folders written by `graft merge` "
                         "or `graft extract` are pushed")
    kind = folder_kind(path)
    if kind not in PUSHABLE:
        raise InputError(f"{folder}: a graft {kind or 'unknown'} output; only merged models and vectors are pushed")
    for entry in path.rglob("*"):
        if entry.name == OWNER or STAGING_RE.match(entry.name):
            raise InputError(f"{entry}: staging of an unfinished graft write inside {folder}; rerun the command "
                             "that made the folder (with --force) before pushing it")
        if entry.is_symlink():
            raise InputError(f"{entry}: a symbolic link; graft outputs hold regular files only (rerun the command)")
    if kind == "merge":
        from graft.engines.merge import RECIPE_FILE
        from graft.io.checkpoint import Checkpoint

        for name in ("config.json", RECIPE_FILE, "README.md"):
            if not (path / name).is_file():
                raise InputError(f"{path / name}: missing from the merged folder; rerun `graft merge` (with --force)")
        Checkpoint.open(path, role="merged").close()  # every shard the index names, headers readable
    else:
        from graft.vector import SafetyVector

        SafetyVector.open(path).close()  # manifest valid and every tensor it lists present
    return kind


def published_files(folder: Path, kind: str) -> dict[str, bytes]:
    """The files whose published copy differs from the local one, with that copy: paths of this machine replaced
    by folder names (and, in a merged model's card and recipe, the sha256 of each local input's weight files)."""
    if kind == "vector":
        from graft.vector import MANIFEST, VectorManifest

        manifest = VectorManifest.model_validate_json((folder / MANIFEST).read_bytes())
        sources = {role: getattr(manifest, role) for role in ("base", "aligned")}
        named = {role: src.model_copy(update={"path": Path(src.path).name}) for role, src in sources.items()}
        return {MANIFEST: (manifest.model_copy(update=named).model_dump_json(indent=2) + "\n").encode()}
    from graft.engines.output_names import CARD_FILE, RECIPE_FILE
    from graft.modelcard import published_card
    from graft.recipe import Recipe

    recipe = Recipe.from_yaml(folder / RECIPE_FILE)
    local = [_local_input(role, spec) for role, spec in (("target", recipe.target), ("vector", recipe.vector),
                                                          ("origin", recipe.options.origin)) if _is_local(spec)]
    names = {item.role: item.name for item in local}
    published = recipe.model_copy(update={
        "target": names.get("target", recipe.target), "vector": names.get("vector", recipe.vector),
        "options": recipe.options.model_copy(update={"origin": names.get("origin", recipe.options.origin)})})
    header = "".join(
        f"# {item.role} {item.name}: a local folder; its files' sha256 are in README.md\n" for item in local)
    text = (header + published.to_yaml()) if header else published.to_yaml()
    card = published_card((folder / CARD_FILE).read_text(), published.to_yaml(), local)
    return {RECIPE_FILE: text.encode(), CARD_FILE: card.encode()}


def _is_local(spec: str | None) -> bool:
    return spec is not None and (Path(spec).expanduser().exists() or not looks_like_hub_id(spec))


def _local_input(role: str, spec: str) -> LocalInput:
    """A local input by folder name, with its weight files' sha256 (None when it cannot be read any more)."""
    from graft.io.checkpoint import Checkpoint, sha256_file
    from graft.modelcard import LocalInput

    path = Path(spec).expanduser()
    try:
        with Checkpoint.open(path, role=role) as checkpoint:
            files = [*checkpoint.weight_files, *([path / "vector.json"] if (path / "vector.json").is_file() else [])]
            hashes = {file.name: sha256_file(file) for file in files}
    except (GraftError, OSError):
        hashes = None
    return LocalInput(role, path.name, hashes)


def hub_token(token: str | None) -> str:
    """The token from --token, HF_TOKEN or the cached `hf auth login`; a clear error when there is none."""
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise UsageError("no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass --token")
    return found


def push(folder: str | Path, repo_id: str, *, private: bool = True, revision: str | None = None,
         commit_message: str | None = None, token: str | None = None) -> PushResult:
    """Create the repository if needed (private unless asked otherwise) and upload the folder in one commit."""
    check_hub_id(repo_id)
    if revision is not None and not REVISION.match(revision):
        raise UsageError(f"--revision {revision!r}: not a branch name")
    path = Path(folder).expanduser()
    kind = check_pushable(path)
    secret = hub_token(token)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    operations = _operations(path, published_files(path, kind))
    api = HfApi(token=secret)
    message = commit_message or f"Upload {PUSHABLE[kind]} made with graft"
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info: Any = api.create_commit(repo_id, operations, commit_message=message, repo_type="model",
                                      revision=revision)
    except HFValidationError as exc:
        raise UsageError(f"{repo_id}: not a valid hub repository id ({exc})") from exc
    except RepositoryNotFoundError as exc:
        raise InputError(f"{repo_id}: no such hub repository, or this token may not write to it "
                         "(check the name and the token's permissions)") from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise InputError(f"{repo_id}: the hub refused this token ({status}); use a token with write access "
                             "(`hf auth login`, HF_TOKEN or --token)") from exc
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise InputError(f"{repo_id}: the hub refused the push ({first})") from exc
    except network_errors() as exc:  # an unknown host, a closed port, a dropped connection: not a bug in graft
        raise InputError(f"{repo_id}: could not reach the hub ({reason(exc)}); check the network (HF_ENDPOINT, "
                         "proxies) and rerun `graft push`") from exc
    return PushResult(repo_id=repo_id, kind=kind, revision=revision, commit=getattr(info, "oid", None),
                      url=getattr(info, "commit_url", None))


def _operations(folder: Path, published: dict[str, bytes]) -> list[Any]:
    """One upload per file of the folder (its published copy where there is one), graft's bookkeeping left home."""
    from huggingface_hub import CommitOperationAdd

    operations = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.name in IGNORE or (path.name.startswith(".") and path.name.endswith(".graft")):
            continue  # the marker, and the record graft keeps beside a file it wrote: they mean nothing elsewhere
        operations.append(CommitOperationAdd(rel, published.get(rel, str(path))))
    return operations


__all__ = ["PushResult", "check_pushable", "hub_token", "published_files", "push"]
