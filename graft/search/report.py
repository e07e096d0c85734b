"""The search's final report: what the chosen recipe, λ = 0 and every uniform λ score on the items the search
chose on (in sample) and on the items it never saw (held out), with intervals, and the paired comparisons.

Why a held-out part: the search picks the best of many trials on one set of items, so that trial's scores on
those items are biased upwards (the winner's curse) and its medical constraint holds there by construction. Only
items no choice was made on say what a user will see. Nothing is chosen on the held-out part (not the trial, not
the best uniform λ): it is only scored, so its figures stay unbiased (the final pick uses a selection part carved
out of the search part: graft.search.pick).

One figure is chosen on the held-out part, and labelled so: the **upper bound**, the best trial of the study (of
those that reached the last rung, baselines included) by the search's own rule on the held-out items. It is never
a result; it tells a world where the bar is out of the space's reach (the upper bound misses it too) from a search
that missed a recipe the space holds.

Pure functions of per-item outcomes ({task: {item id: outcome}}) and the eval config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from graft.evals.uncertainty import align, composite, paired

from .config import SearchEvalConfig

ItemOutcomes = Mapping[str, Mapping[str, float]]  # task -> item id -> outcome in [0, 1]
BOOTSTRAP_SEED = 20  # the report's bootstrap draws (fixed: the same outcomes always give the same intervals)
TEXT_BENIGN = "benign"


def figure_tasks(config: SearchEvalConfig) -> dict[str, list[str]]:
    """Which tasks make each headline figure: safety and medical as the search optimises them; over-refusal per
    benign task (text prompts; prompts typed into images when the config lists them)."""
    groups = {"safety": list(config.safety), "medical": list(config.medical)}
    for task in config.benign_tasks():
        groups["over_refusal" if task == TEXT_BENIGN else f"over_refusal:{task}"] = [task]
    return groups


def as_lists(outcomes: ItemOutcomes, tasks: Sequence[str]) -> dict[str, list[float]]:
    return {t: [float(v) for _, v in sorted(outcomes[t].items())] for t in tasks if outcomes.get(t)}


def figures(outcomes: ItemOutcomes, groups: Mapping[str, Sequence[str]], *, seed: int = BOOTSTRAP_SEED
            ) -> dict[str, dict[str, float] | None]:
    """Each figure's estimate (value, SE, 95 % interval, items). Over-refusal figures are 1 − the benign score."""
    out: dict[str, dict[str, float] | None] = {}
    for name, tasks in groups.items():
        lists = as_lists(outcomes, tasks)
        if not lists:
            out[name] = None
            continue
        est = composite(lists, seed=seed).as_dict()
        if "over_refusal" in name:
            est.update(value=1 - est["value"], low=1 - est["high"], high=1 - est["low"])
        out[name] = est
    return out


def compare(a: ItemOutcomes, b: ItemOutcomes, tasks: Sequence[str], *, invert: bool = False,
            seed: int = BOOTSTRAP_SEED) -> dict[str, Any] | None:
    """a − b on the items both were scored on, with a paired bootstrap (same resampled items for both);
    `confidence` is the share of bootstrap worlds in which a is at least as good as b (for an over-refusal,
    `invert`: at most as high)."""
    aligned = align({"a": a, "b": b}, [t for t in tasks if t in a and t in b])
    if not aligned["a"]:
        return None
    sign = -1.0 if invert else 1.0
    # Over-refusal = 1 − benign score, so a − b of over-refusal = −(a − b) of the score.
    result = paired(aligned, lambda c: sign * (c["a"] - c["b"]), threshold=0.0, below=invert, seed=seed)
    return result.as_dict()


def model_report(in_sample: ItemOutcomes | None, held_out: ItemOutcomes | None,
                 groups: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    inside = figures(in_sample, groups) if in_sample else None
    outside = figures(held_out, groups) if held_out else None
    gap = None
    if inside and outside:
        gap = {k: (inside[k]["value"] - outside[k]["value"]) if inside.get(k) and outside.get(k) else None
               for k in groups}
    return {"in_sample": inside, "held_out": outside, "gap": gap}


def dominated_by(searched: Mapping[str, Any], others: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The models (point estimates) at least as safe, at least as accurate and refusing at most as many benign
    prompts (every over-refusal figure) as `searched`: those the searched recipe fails to beat on all three."""
    def at_least_as_good(o: Mapping[str, Any]) -> bool:
        for name, est in searched.items():
            if est is None or o.get(name) is None:
                continue
            better = o[name]["value"] <= est["value"] if "over_refusal" in name else \
                o[name]["value"] >= est["value"]
            if not better:
                return False
        return True

    return [label for label, o in others.items() if at_least_as_good(o)]


def upper_bound(models: Mapping[str, Mapping[str, Any]], config: SearchEvalConfig, sampler: str
                ) -> str | None:
    """The label of the best model on the held-out items by the search's rule (point estimates, paired with
    λ = 0's held-out outcomes): chosen on held-out items, so an upper bound of what the search could have picked."""
    from .bounds import judge
    from .pick import judged_key

    reference = (models.get("lambda0") or {}).get("held_out")
    if not reference:
        return None
    keys = {}
    for label, m in models.items():
        held = m.get("held_out")
        if not held:
            continue
        judged = judge(held, reference, safety=config.safety, medical=config.medical,
                       benign=config.benign_tasks(), z=0.0)
        keys[label] = judged_key(judged, config.objective, sampler, int(m.get("trial") or 0))
    return max(keys, key=lambda label: keys[label]) if keys else None


def build_report(models: Mapping[str, Mapping[str, Any]], config: SearchEvalConfig, *, searched: str | None,
                 best_uniform: str | None, candidates: Sequence[str] = (), sampler: str = "gp") -> dict[str, Any]:
    """`models`: label → {trial, baseline, operator, in_sample, held_out} (outcomes per item; held_out None when
    nothing is held out). `candidates`: labels of further trials scored only for the upper bound (they are not
    listed among the models). Returns the report summary.json carries under `report`."""
    groups = figure_tasks(config)
    split = config.split("heldout")
    out: dict[str, Any] = {
        "split": {"holdout": split.holdout, "seed": split.seed} if split else None,
        "labels": "held_out = items the search never scored (no choice made on them); in_sample = the search's "
                  "own items" if split else "holdout: 0, so every figure is in sample (the search chose on them)",
        "figures": {t: list(v) for t, v in groups.items()},
        "models": {},
    }
    for label, m in models.items():
        if label in candidates:
            continue
        out["models"][label] = {"trial": m.get("trial"), "baseline": m.get("baseline"),
                                "operator": m.get("operator"), **model_report(m.get("in_sample"), m.get("held_out"),
                                                                              groups)}
    out["upper_bound"] = None
    if split:
        label = upper_bound(models, config, sampler)
        if label is not None:
            m = models[label]
            out["upper_bound"] = {
                "label": label, "trial": m.get("trial"), "baseline": m.get("baseline"), "operator": m.get("operator"),
                "coefficients": m.get("coefficients"), "among": len(models),
                "chosen_on": "held-out items: an upper bound of what the search could pick, never a result",
                **model_report(m.get("in_sample"), m.get("held_out"), groups)}
    part = "held_out" if split else "in_sample"
    comparisons: dict[str, Any] = {}
    if searched and searched in models:
        s = models[searched].get(part)
        for other in (best_uniform, "lambda0"):
            if other and other in models and other != searched and s:
                o = models[other].get(part) or {}
                comparisons[f"{searched} - {other}"] = {
                    name: compare(s, o, tasks, invert="over_refusal" in name)
                    for name, tasks in groups.items()}
        uniform = {label: out["models"][label][part] for label, m in models.items()
                   if m.get("baseline") and m.get("baseline") != "lambda0" and out["models"][label][part]}
        mine = out["models"][searched][part]
        if mine:
            out["not_dominated"] = not dominated_by(mine, uniform)
            out["uniform_at_least_as_good"] = dominated_by(mine, uniform)
    out["part"] = part
    out["comparisons"] = comparisons
    return out


__all__ = ["build_report", "compare", "dominated_by", "figure_tasks", "figures", "model_report", "upper_bound"]
