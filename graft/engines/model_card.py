"""The model card (README.md) a merged folder carries: what was grafted into what, from which sources, how, and
(when a `graft eval` results file is given) how it scored, in the Hub's metadata format.

Deterministic text (no timestamps, no output path), so the same inputs and recipe give a byte-identical folder.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from graft import __version__
from graft.core.model_ids import looks_like_hub_id, split_revision
from graft.display import printable
from graft.engines.plan import GraftPlan
from graft.engines.vector_card import shown_input, source_lines
from graft.errors import IncompatibleError, InputError
from graft.regular_files import read_regular_bytes
from graft.schema import load_json_text

REPRODUCE = "graft merge --recipe graft_recipe.yaml --out rebuilt"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
TAGS = ["graft", "safety", "merge", "task-arithmetic"]


@dataclass(frozen=True)
class CardResults:
    """What a `graft eval` results.json gives a merged model's card: per-benchmark scores, and the content hash of
    the weights they score (`Checkpoint.weights_sha256`), which must be the merge's own."""

    path: Path
    scores: dict[str, dict[str, Any]]
    weights_sha256: str

    def check_weights(self, written: str, out: Path) -> None:
        """Refuse scores of other weights (exit 4): they would be published as this model's."""
        if written != self.weights_sha256:
            raise IncompatibleError(
                f"--results {self.path}: these scores are of weights with sha256 {self.weights_sha256}, but this "
                f"merge wrote weights with sha256 {written}: they belong to another model; evaluate this merge's "
                f"output (graft eval {out} --out results.json) and pass that file. Nothing was written")


def load_card_results(path: str | Path) -> CardResults:
    """The per-benchmark scores of a `graft eval` results file (results.json) and the weights they score, checked
    before a merge starts: {task: {"score": float, "n": int, "metric": str}}."""
    path = Path(path)
    flag = f"--results {path}"
    try:
        data = load_json_text(read_regular_bytes(path).decode("utf-8"))
    except InputError as exc:  # missing, unreadable or not a regular file: named by the reader
        raise InputError(f"--results: {exc}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{flag}: not JSON ({exc}); give the results.json `graft eval --out` wrote") from exc
    return card_results(data, path, flag)


def card_results(data: Any, path: Path, flag: str) -> CardResults:
    """`CardResults` of a results.json's content (`EvalResults.model_dump`), or an InputError naming `flag`."""
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, dict) or not benchmarks:
        raise InputError(f"{flag}: no 'benchmarks' mapping; give the results.json `graft eval --out` wrote")
    scores = {}
    for name, entry in benchmarks.items():
        score = entry.get("score") if isinstance(entry, dict) else None
        n, metric = (entry.get("n"), entry.get("metric")) if isinstance(entry, dict) else (None, None)
        if (isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score)
                or not isinstance(n, int) or isinstance(n, bool) or not isinstance(metric, str)):
            raise InputError(f"{flag}: benchmarks.{name} needs a finite 'score', an integer 'n' and a 'metric'")
        scores[str(name)] = {"score": float(score), "n": n, "metric": metric}
    model = data.get("model")
    weights = model.get("weights_sha256") if isinstance(model, dict) else None
    if not (isinstance(weights, str) and SHA256.match(weights)):
        raise InputError(f"{flag}: records no model.weights_sha256 (the content hash of the weights it scored), so "
                         "graft cannot tell whose scores these are; evaluate the merged folder with this graft's "
                         "`graft eval MERGED --out results.json` and pass that file")
    return CardResults(path, scores, weights)


def hub_id(spec: str | None) -> str | None:
    """The target's hub id (without its revision: the Hub's base_model is a repository) when it came from the hub;
    None for a local folder (never a path in the card)."""
    if not spec or Path(spec).expanduser().exists() or not looks_like_hub_id(spec):
        return None
    return split_revision(spec)[0]


def card_metadata(plan: GraftPlan, results: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The card's YAML header, in the fields the Hub reads (base_model, base_model_relation, tags, model-index)."""
    meta: dict[str, Any] = {}
    base = hub_id(plan.recipe.target)
    if base is not None:
        meta["base_model"] = base
        meta["base_model_relation"] = "merge"
    meta["tags"] = list(TAGS)
    if results:
        meta["model-index"] = model_index(_title(plan), results)
    return meta


def model_index(title: str, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The Hub's `model-index` of one model's scores (what huggingface_hub reads as `eval_results`)."""
    return [{"name": title, "results": [
        {"task": {"type": "text-generation", "name": entry["metric"]},
         "dataset": {"name": name, "type": name},
         "metrics": [{"type": "score", "name": entry["metric"], "value": entry["score"]}]}
        for name, entry in sorted(results.items())]}]


def evaluation_section(results: dict[str, dict[str, Any]]) -> list[str]:
    """The card's `## Evaluation` lines: the same whether the scores came with the merge or were added later."""
    return ["## Evaluation", "",
            "Scores of these very weights, from a `graft eval` results file (given to `graft merge --results`, or "
            "added by `graft eval --update-card`; either checks the content hash of the weights it scored against "
            "this folder's); higher is better for every score.", "",
            "| task | score | metric | items |", "|---|---|---|---|",
            *(f"| {name} | {e['score']:.4f} | {e['metric']} | {e['n']} |" for name, e in sorted(results.items()))]


def model_card(plan: GraftPlan, results: dict[str, dict[str, Any]] | None = None) -> str:
    recipe = plan.recipe
    manifest = plan.vector.manifest
    coeff = recipe.coefficients
    lams = [a.lam for a in plan.grafted]
    by_group = Counter(a.group for a in plan.grafted)
    reasons = plan.reasons()
    target = recipe.target or str(plan.target.root)
    stored_as = Counter(t.dtype for t in manifest.tensors.values())
    storage = ", ".join(f"{dtype} ({n} tensors)" if len(stored_as) > 1 else dtype
                        for dtype, n in sorted(stored_as.items()))
    if manifest.dtype == "auto":
        storage += ", each tensor in its source dtype"
    lines = [
        "---",
        yaml.safe_dump(card_metadata(plan, results), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {_title(plan)}",
        "",
        "This checkpoint was produced by graft: the safety task vector "
        "τ = θ_aligned − θ_base was grafted layer-wise into the target, θ' = θ_target + λ(layer, group) · f(τ), "
        "f the graft operator below (fp32 compute, one cast). Tensors without a partner in τ are byte-for-byte the "
        "target's.",
        "",
        "## Sources",
        "",
        f"- target: {shown_input(target)}",
        f"- vector: {shown_input(recipe.vector or str(plan.vector.root))} ({manifest.kind}, {len(manifest.tensors)} "
        f"tensors, stored as {storage}; extracted by graft {manifest.graft_version})",
        *source_lines("aligned", manifest.aligned),
        *source_lines("base", manifest.base),
    ]
    spec = recipe.operator_spec
    if plan.origin is not None:
        origin = recipe.options.origin or str(plan.origin.root)
        lines.append(f"- origin (τ_med = θ_target − θ_origin, used by operator {spec.name}): {shown_input(origin)}")
    lines += [
        "",
        "## Coefficients",
        "",
        f"- operator: {spec.describe()}",
        f"- scale: {coeff.scale}",
        f"- per-layer rule: {_layer_rule(plan)}",
        f"- group factors: {', '.join(f'{g}={coeff.group_factor(g)}' for g in sorted(by_group))}",
        f"- λ over grafted tensors: min {min(lams, default=0):.4g}, max {max(lams, default=0):.4g}",
        "",
        "## Tensors",
        "",
        f"- grafted: {len(plan.grafted)} ({', '.join(f'{g} {n}' for g, n in sorted(by_group.items()))})",
    ]
    lines += [f"- copied unchanged, {reason}: {n}" for reason, n in sorted(reasons.items()) if reason != "grafted"]
    partial = [a for a in plan.grafted if a.rows is not None]
    if partial:
        names = ", ".join(printable(a.target) for a in partial)  # one line of the card, whatever a name holds
        lines.append(f"- grown vocabulary: only the vector's rows were grafted in {names}")
    if results:
        lines += ["", *evaluation_section(results)]
    stored = recipe.model_copy(update={"out": None})
    lines += ["", "## Recipe", "", "```yaml", stored.to_yaml().rstrip(), "```", "",
              f"Reproduce with `{REPRODUCE}`, run in this folder (graft {__version__}; the recipe names its inputs "
              "by absolute path or hub id, so it rebuilds the same bytes from anywhere; add `--results` again for "
              "the scores).", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class LocalInput:
    """An input named by a local path in the stored recipe, as a published card names it: by folder name, with the
    sha256 of its weight files when it could be read at push time."""

    role: str
    name: str
    sha256: dict[str, str] | None

    def lines(self) -> list[str]:
        if self.sha256 is None:
            return [f"- {self.role}: `{self.name}` (not found where the recipe names it when this was pushed: "
                    "not hashed)"]
        return [f"- {self.role}: `{self.name}`",
                *(f"  - `{file}` sha256 `{digest}`" for file, digest in sorted(self.sha256.items()))]


def published_card(card: str, published_recipe: str, local: list[LocalInput]) -> str:
    """The card as it goes to the Hub: its recipe block is the published recipe (local inputs by folder name), and
    the local reproduce line that ends the card, whose recipe names paths on this machine, becomes how to rebuild
    from the Hub."""
    head = card.split("## Recipe\n", 1)[0]
    rebuild = (f"Rebuild it with `{REPRODUCE}` (graft {__version__}) in a folder holding graft_recipe.yaml: the "
               "recipe names hub inputs by id and commit")
    if local:
        rebuild += (", and local inputs by folder name: put a copy of each beside graft_recipe.yaml (its files must "
                    "have these sha256)")
    lines = ["## Recipe", "", "```yaml", published_recipe.rstrip(), "```", "", rebuild + ".",
             *([""] + [line for item in local for line in item.lines()] if local else []), ""]
    return head + "\n".join(lines)


def _title(plan: GraftPlan) -> str:
    name = hub_id(plan.recipe.target) or plan.target.root.name
    return f"{name.split('/')[-1]} + safety vector (graft {__version__})"


def _layer_rule(plan: GraftPlan) -> str:
    coeff = plan.recipe.coefficients
    if coeff.layers is not None:
        return "one factor per layer: " + ", ".join(f"{v:g}" for v in coeff.layers)
    if coeff.blocks is not None:
        return f"{len(coeff.blocks)} blocks: " + ", ".join(f"{v:g}" for v in coeff.blocks)
    if coeff.control_points is not None:
        return "control points over depth: " + ", ".join(f"{v:g}" for v in coeff.control_points)
    return "uniform (1 for every layer)"
