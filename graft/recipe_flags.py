"""Command-line flags laid over a recipe file: the one place where `--scale`, `--layers`, `--group`, `--map`,
`--operator` and the like become recipe fields. Shared by `graft plan`/`merge` and `graft inspect` (which reads
a recipe's λ), so neither command imports the other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from graft.engines.operators import OPERATORS
from graft.errors import UsageError
from graft.recipe import Recipe, size_in_range
from graft.schema import load_yaml_text, yaml_problem


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as exc:
        raise UsageError(f"{flag} {text!r}: expected comma-separated numbers, e.g. 0.2,0.5,1") from exc


def _pairs(items: list[str] | None, flag: str, sep: str) -> list[tuple[str, str]]:
    result = []
    for item in items or []:
        if sep not in item:
            raise UsageError(f"{flag} {item!r}: expected the form LEFT{sep}RIGHT")
        left, right = item.split(sep, 1)
        result.append((left.strip(), right.strip()))
    return result


def size_flag(flag: str, field: str, text: str | None) -> str | None:
    """A size flag (`--chunk-size`, `--shard-size`) checked against its range, the error naming the flag and the
    recipe field it sets."""
    if text is not None:
        try:
            size_in_range(field, text)
        except ValueError as exc:
            raise UsageError(f"{flag} {text}: {exc} (options.{field})") from exc
    return text


def build_recipe(recipe: Path | None, **flags: Any) -> Recipe:
    """Recipe file (if any) with command-line flags laid over it; None means 'not given, keep the recipe's'."""
    for field in ("chunk_size", "shard_size"):
        size_flag("--" + field.replace("_", "-"), field, flags.get(field))
    base = Recipe.from_yaml(recipe) if recipe else Recipe()
    coefficients: dict[str, Any] = {}
    if flags.get("scale") is not None:
        coefficients["scale"] = flags["scale"]
    for key, flag in (("layers", "--layers"), ("blocks", "--blocks"), ("control_points", "--control-points")):
        values = _floats(flags.get(key), flag)
        if values is not None:
            coefficients.update({"layers": None, "blocks": None, "control_points": None, key: values})
    groups = _pairs(flags.get("group"), "--group", "=")
    if groups:
        try:
            coefficients["groups"] = {**base.coefficients.groups, **{g: float(v) for g, v in groups}}
        except ValueError as exc:
            raise UsageError(f"--group: factors must be numbers ({exc})") from exc
    mapping: dict[str, Any] = {}
    rules = _pairs(flags.get("map"), "--map", "=>")
    if rules:
        mapping["rules"] = [*base.mapping.model_dump()["rules"], *({"match": m, "replace": r} for m, r in rules)]
    for key in ("include", "exclude"):
        if flags.get(key):
            mapping[key] = [*getattr(base.mapping, key), *flags[key]]
    options = {k: flags[k] for k in ("dtype", "shard_size", "device", "origin", "orthogonalize", "chunk_size",
                                     "strict", "allow_partial")
               if flags.get(k) is not None}
    top = {k: flags[k] for k in ("target", "vector", "out") if flags.get(k) is not None}
    changes: dict[str, Any] = {**top}
    operator = _operator_flags(base, flags.get("operator"), flags.get("operator_param"))
    if operator is not None:
        changes["operator"] = operator
        if flags.get("orthogonalize") is None:  # the legacy flag follows the operator unless given
            options["orthogonalize"] = operator["name"] == "orthogonal"
    if coefficients:
        changes["coefficients"] = coefficients
    if mapping:
        changes["mapping"] = mapping
    if options:
        changes["options"] = options
    return base.updated(**changes) if changes else base


def _operator_flags(base: Recipe, name: str | None, params: list[str] | None) -> dict[str, Any] | None:
    """--operator NAME and --operator-param KEY=VALUE over the recipe's operator (values read as YAML scalars:
    0.3, 7, true); None when neither is given. The recipe's parameters are kept when the name stays the same."""
    if name is None and not params:
        return None
    if name is not None and not name.strip():
        raise UsageError("--operator '': give an operator's name (see `graft merge --help`), or leave the flag out "
                         "for the recipe's operator")
    current = base.operator_spec
    chosen = name or current.name
    values = current.params.model_dump(mode="json") if chosen == current.name else {}
    declared = OPERATORS[chosen].Params.model_fields if chosen in OPERATORS else None
    for key, text in _pairs(params, "--operator-param", "="):
        if declared is not None and key not in declared:
            known = f"its parameters: {', '.join(declared)}" if declared else "it has no parameters"
            source = "" if name else " (the recipe's operator, or the default)"
            raise UsageError(f"--operator-param {key}: operator {chosen}{source} has no parameter {key!r} ({known}); "
                             "give --operator NAME for another operator")
        try:
            values[key] = load_yaml_text(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"--operator-param {key}={text}: not a value ({yaml_problem(exc)})") from exc
        except RecursionError:
            raise UsageError(f"--operator-param {key}: not a value (nested too deeply)") from None
    return {"name": chosen, **values}


__all__ = ["build_recipe", "size_flag"]
