"""bench/figstep_remedies.py grafts τ on the parts of the model its docs name (checked through graft's own
coefficients), and the remedy it measures on a λ grid is chosen by its stated rule from search-part rows alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from graft.core.recipe import Coefficients

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("figstep_remedies")


@pytest.mark.parametrize("layers", [6, 7, 32])
def test_each_pattern_grafts_exactly_its_part(bench, layers: int) -> None:
    patterns = bench.patterns(layers)
    cut = [round(k * layers / 3) for k in range(4)]
    thirds = {"early": range(cut[0], cut[1]), "middle": range(cut[1], cut[2]), "late": range(cut[2], cut[3])}
    assert sum(len(r) for r in thirds.values()) == layers and all(thirds.values())
    for name, pattern in patterns.items():
        c = Coefficients.model_validate({"scale": 2.0, **pattern})
        factors = c.layer_factors(layers)
        grafted = {(layer, g) for layer in range(layers) for g in ("attn", "mlp", "norm")
                   if c.lam(layer, g, factors) != 0} | {(None, g) for g in ("embed", "head")
                                                        if c.lam(None, g, factors) != 0}
        if name.endswith(" only"):
            group = name.removesuffix(" only")
            want = {(None, group)} if group in ("embed", "head") else {(i, group) for i in range(layers)}
        elif name.startswith("all but "):
            left_out = name.removeprefix("all but ")
            want = {(i, g) for i in range(layers) for g in ("attn", "mlp", "norm") if g != left_out}
            want |= {(None, g) for g in ("embed", "head") if g != left_out}
        elif name.startswith("attn, "):
            want = {(i, "attn") for i in thirds[name.split(", ")[1].removesuffix(" layers")]}
        else:
            want = {(i, g) for i in thirds[name.removesuffix(" layers")] for g in ("attn", "mlp", "norm")}
        assert grafted == want, name
        assert all(c.lam(layer, g, factors) == 2.0 for layer, g in grafted), name


def _row(figstep: float, image: float, text: float) -> dict:
    return {"figstep": figstep, "image_over_refusal": image, "over_refusal": text}


def test_the_choice_keeps_both_caps_then_takes_the_most_figstep(bench) -> None:
    rows = {"a": _row(0.9, 0.5, 0.0), "b": _row(0.6, 0.05, 0.2), "c": _row(0.3, 0.1, 0.1), "d": _row(0.2, 0.0, 0.0)}
    assert bench.choose(rows) == "c"  # a and b break a cap; c keeps both at the cap and refuses the most FigStep
    # none keeps both: the least image over-refusal, whatever the text refuses
    assert bench.choose({"a": rows["a"], "b": rows["b"], "e": _row(0.5, 0.02, 0.9)}) == "e"


def test_the_table_of_a_world_with_only_the_searched_rows(bench) -> None:
    """A world whose remedies were not measured, only d. searched (bench/figstep_aligned_vlm.py --search), still
    prints: its held-out rows (the aligned text model left out: it has no FigStep figures), the verdict's checks and
    the constraints the trials broke."""
    def row(name: str, figstep: float | None, medical: float) -> dict:
        values = {"figstep": figstep, "image_over_refusal": 0.02, "safety": 0.5, "over_refusal": 0.01,
                  "medical": medical}
        return {"name": name, **values, "se": {f: (0.01 if v is not None else None) for f, v in values.items()}}

    check = {"name": "over-refusal (image)", "value": 0.02, "low": 0.0, "high": 0.05, "bar": 0.1, "at_most": True,
             "met": True}
    run = {"aligned_vlm_search": {
        "world": "w", "seed": 3, "holdout": 0.5, "protocol": "p", "trials": 60,
        "held_out": [row("aligned", None, 0.2), row("medical", 0.0, 0.56), row("searched", 0.25, 0.55)],
        "verdict": {"checks": [check], "figstep": None, "figstep_restored": False},
        "search": {"warnings": ["edge"], "constraints_broken": {"searched": 5, "feasible": 2, "medical drop only": 3}}}}
    text = bench.table(run)
    assert "| searched | 25 ± 1 % | 2 ± 1 % | 50 ± 1 % | 1 ± 1 % | 55 ± 1 % |" in text
    assert "| aligned |" not in text and "seed 3, 50 % of every benchmark" in text
    assert "- over-refusal (image): 2.0 % (95 %: 0.0–5.0; bar ≤ 10 %): yes" in text
    assert "searched 5, feasible 2, medical drop only 3" in text and "- search: edge" in text
