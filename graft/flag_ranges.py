"""The documented range of every numeric flag of `graft eval`, `search`, `inspect`, `recipe --from-scores` and
`demo`, in one table per command. The Python API checks its arguments against the same table (a notebook gets the
same one-line error as the command line), and each flag's `--help` quotes its range from here, so the two never
disagree. A value out of range, not finite, of the wrong kind (1.5 for a count, true for a number) is a usage
error, exit 2, naming the flag.

Why these bounds: a count of items, tokens, prompts or trials below 1 means nothing to do (and `--max-new-tokens
0` would score safety on empty replies); a seed is what NumPy's and Optuna's generators accept (0 to 2³² − 1); a
share is a share; a heartbeat must fit Python's timers and a day of silence is long enough to call a worker dead;
a cosine lies in [−1, 1].
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

from graft.errors import UsageError

SEED_MAX = 2**32 - 1  # numpy.random.RandomState and Optuna's samplers take 32-bit seeds
HEARTBEAT_MAX = 86_400  # seconds


@dataclass(frozen=True)
class Range:
    """The values a numeric flag accepts: an integer or a finite number, between `low` and `high` (each bound
    included unless `*_open`; None: unbounded on that side)."""

    flag: str
    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """The range in words, as --help and the error say it: 'an integer ≥ 1', 'a number in (0, 1]'."""
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            return (f"{kind} in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '≥'} {_num(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '≤'} {_num(self.high)}"
        return kind

    def holds(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        if not self.integer and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def check(self, value: object) -> object:
        """`value` itself when it is in range (None passes: the flag was not given), else a UsageError."""
        if value is None or self.holds(value):
            return value
        return _refuse(self.flag, value, self.describe())


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _refuse(flag: str, value: object, expected: str) -> object:
    shown = repr(value) if isinstance(value, str) else str(value)
    raise UsageError(f"{flag} {shown[:40]}: expected {expected}")


SEED = Range("--seed", 0, SEED_MAX, integer=True)
COSINE = (-1.0, 1.0)  # cos_tau_med, safelora_score, safelora_min

EVAL = {
    "limit": Range("--limit", 1, integer=True),
    "fraction": Range("--fraction", 0, 1, low_open=True),
    "seed": SEED,
    "max_new_tokens": Range("--max-new-tokens", 1, integer=True),  # and at most the model's context (checked there)
    "batch_size": Range("--batch-size", 1, integer=True),
}
SEARCH = {
    "trials": Range("--trials", 1, integer=True),
    "seed": SEED,
    "batch_size": EVAL["batch_size"],
    "heartbeat": Range("--heartbeat", 1, HEARTBEAT_MAX, integer=True),
    "max_medical_drop": Range("--max-medical-drop", 0, 1),
    "max_over_refusal": Range("--max-over-refusal", 0, 1),
    "confidence": Range("--confidence", 0, 1, low_open=True, high_open=True),
    "budget_items": Range("--budget-items", 1, integer=True),
}
INSPECT = {
    "trial": Range("--trial", 0, integer=True),
    "top": Range("--top", 0, integer=True),
}
RECIPE = {
    "scale": Range("--scale"),
    "threshold": Range("--threshold"),  # and within the metric's own range (threshold_range)
}
DEMO = {
    "limit": EVAL["limit"],
    "holdout": Range("--holdout", 0, 1, high_open=True),
    "trials": Range("--trials", 0, integer=True),
    "seed": SEED,
    "scales": Range("--scales"),
}


def check(table: Mapping[str, Range], **values: object) -> None:
    """Each named value against its flag's range in `table` (None: not given)."""
    for name, value in values.items():
        table[name].check(value)


def threshold_range(metric: str) -> Range:
    """`recipe --threshold`'s range for the score it compares: a cosine in [−1, 1], a norm or ratio ≥ 0."""
    if metric in ("cos_tau_med", "safelora_score", "safelora_min"):
        return Range("--threshold", *COSINE)
    return Range("--threshold", 0)


def help_range(table: Mapping[str, Range], name: str) -> str:
    """' (RANGE)' for a flag's --help."""
    return f" Range: {table[name].describe()}."


__all__ = ["DEMO", "EVAL", "INSPECT", "RECIPE", "SEARCH", "SEED", "Range", "check", "help_range", "threshold_range"]
