"""The samplers a search can use: one table, name → factory and what the sampler can do. `--sampler`, a space's
`sampler` and `graft.search.search(sampler=...)` are checked against it; adding a sampler is one entry.

optuna is imported inside the factories, so reading the table (the CLI's --help does) costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graft.errors import UsageError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

Constraints = Callable[["FrozenTrial"], Sequence[float]] | None


@dataclass(frozen=True)
class Sampler:
    """A sampler: `build(seed, constraints)` with an explicit seed (`constraints` is Optuna's `constraints_func`,
    or None). `pareto`: it can search several objectives at once. `folds_constraints`: it cannot take constraints,
    so in constrained mode they are folded into its one objective as a penalty (graft.search.objective)."""

    build: Callable[[int, Constraints], optuna.samplers.BaseSampler]
    about: str
    pareto: bool = True
    folds_constraints: bool = False


def _cmaes(seed: int, constraints: Constraints) -> Any:
    import optuna

    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def _tpe(seed: int, constraints: Constraints) -> Any:
    import optuna

    # constant_liar: running trials count as bad guesses, so parallel workers spread out.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constraints_func=constraints,
                                      constant_liar=True, warn_independent_sampling=False)


def _gp(seed: int, constraints: Constraints) -> Any:
    import optuna

    return optuna.samplers.GPSampler(seed=seed, constraints_func=constraints, warn_independent_sampling=False)


def _nsga2(seed: int, constraints: Constraints) -> Any:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)


def _random(seed: int, constraints: Constraints) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


SAMPLER_TABLE: dict[str, Sampler] = {
    "cmaes": Sampler(_cmaes, "CMA-ES: one objective, constraints as a penalty", pareto=False,
                     folds_constraints=True),
    "tpe": Sampler(_tpe, "multivariate TPE with constant liar (parallel workers spread out)"),
    "gp": Sampler(_gp, "Gaussian-process Bayesian optimisation"),
    "nsga2": Sampler(_nsga2, "NSGA-II, a genetic Pareto search"),
    "random": Sampler(_random, "uniform random points (a baseline)"),
}
SAMPLERS: tuple[str, ...] = tuple(SAMPLER_TABLE)


def sampler_spec(name: str) -> Sampler:
    """The table's entry for `name`, or a one-line error listing the known samplers."""
    try:
        return SAMPLER_TABLE[name]
    except KeyError:
        raise UsageError(f"--sampler {name}: expected one of {', '.join(SAMPLER_TABLE)}") from None


def folds_constraints(sampler: str) -> bool:
    """Whether the sampler gets the constraints folded into its objective (it cannot model them itself)."""
    return sampler_spec(sampler).folds_constraints


__all__ = ["SAMPLERS", "SAMPLER_TABLE", "Sampler", "folds_constraints", "sampler_spec"]
