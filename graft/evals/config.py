"""Typed configuration for evaluation: where each benchmark's data lives (`data.yaml`). (How to judge is
graft.evals.judges.JudgeConfig, beside the judge registry it is checked against.)

`data.yaml` maps a benchmark name to a local path (file or folder, relative paths resolve against the YAML
file's folder) or to a hub dataset (`{hub: owner/name, name: config, split: test}`), loaded with `datasets`. A
benchmark it leaves out reads the public hub source its declaration names (`Benchmark.public`), as lm-eval's tasks
do; no data.yaml at all is `DataConfig()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from graft.errors import InputError, UsageError
from graft.schema import describe_validation_error, load_yaml_file

from .benchmarks import BENCHMARKS
from .sources import HubSource, Source

FIXTURES = Path(__file__).resolve().parent / "fixtures"


class DataConfig(BaseModel):
    """Where each benchmark's data lives: `data.yaml` is a flat mapping benchmark -> source, checked against the
    benchmark registry (graft.evals.benchmarks), plus `figstep`, a folder of ready-made FigStep images. A benchmark
    left out reads its public hub source, if it has one. FigStep tasks reuse the text sources and render their
    images, unless `figstep` names a folder of ready-made ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    benchmarks: dict[str, Source] = Field(default_factory=dict, description="benchmark name -> local path or hub")
    figstep: Path | None = Field(None, description="folder of FigStep images named <item id>.png, used instead of "
                                                   "rendering them (e.g. a toy world's own typeset)")

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, raw: Any) -> Any:
        """Accept the data.yaml layout (benchmark keys beside `figstep`) and refuse a name no benchmark has."""
        if not isinstance(raw, dict):
            return raw
        nested = isinstance(raw.get("benchmarks"), dict)
        entries = raw["benchmarks"] if nested else {k: v for k, v in raw.items() if k != "figstep"}
        extra = [k for k in raw if k not in ("benchmarks", "figstep")] if nested else []
        unknown = extra + [k for k in entries if k not in BENCHMARKS]
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown field; known benchmarks: {', '.join(BENCHMARKS)} "
                             "(and figstep, a folder of FigStep images)")
        return {"benchmarks": {k: _source(k, v) for k, v in entries.items() if v is not None},
                "figstep": raw.get("figstep")}

    @model_serializer(mode="wrap")
    def _as_yaml(self, handler: Any) -> dict:
        """Dumped in the data.yaml layout (benchmark keys beside `figstep`), so a dump reloads as it was."""
        out = handler(self)
        return {**out.pop("benchmarks"), **out}

    def get(self, benchmark: str) -> Source | None:
        """The source of `benchmark`: data.yaml's entry, else the benchmark's public hub source; None when it has
        neither (a benchmark whose authors publish it elsewhere)."""
        given = self.benchmarks.get(benchmark)
        if given is not None or benchmark not in BENCHMARKS:
            return given
        return BENCHMARKS[benchmark].public

    def __getattr__(self, name: str) -> Any:
        # `config.catqa` (the layout before the registry) reads the entry; None for a benchmark left out.
        if name in BENCHMARKS:
            return self.__dict__["benchmarks"].get(name)
        return super().__getattr__(name)

    def source(self, benchmark: str) -> Source:
        src = self.get(benchmark)
        if src is None:
            bench = BENCHMARKS.get(benchmark)
            origin = f"; {bench.origin}" if bench is not None and bench.origin else ""
            about = f" (PATH: {bench.about})" if bench is not None and bench.about else ""
            raise UsageError(f"no data for benchmark '{benchmark}': it has no public hub copy{origin}; add a line "
                             f"'{benchmark}: PATH' to a data.yaml and pass it with --data{about}")
        return src

    def paths(self) -> list[Path]:
        """Every local path the config names (what an evaluation reads, so its outputs never land there)."""
        local = [src for src in self.benchmarks.values() if isinstance(src, Path)]
        return local + ([self.figstep] if self.figstep is not None else [])

    @classmethod
    def load(cls, path: str | Path | None) -> DataConfig:
        """`data.yaml` at `path`, or no file at all: every benchmark from its public source."""
        return cls() if path is None else cls.from_yaml(path)

    @classmethod
    def from_yaml(cls, path: str | Path) -> DataConfig:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: data config not found (a YAML mapping benchmark -> path or hub id)")
        raw = load_yaml_file(path, "data config") or {}
        if not isinstance(raw, dict):
            raise UsageError(f"{path}: expected a mapping benchmark -> path, got {type(raw).__name__}")
        return cls.from_mapping(raw, base=path.parent, origin=str(path))

    @classmethod
    def from_mapping(cls, raw: dict, base: Path | None = None, origin: str = "data config") -> DataConfig:
        resolved: dict = {}
        for key, value in raw.items():
            if isinstance(value, str) and base is not None and not Path(value).is_absolute():
                value = base / value
            resolved[key] = value
        try:
            return cls.model_validate(resolved)
        except ValidationError as e:
            raise UsageError(f"{origin}: {describe_validation_error(e)}") from e


def _source(key: str, value: Any) -> Source:
    """One data.yaml entry as a path or a hub source, with an error that names the key in plain words."""
    if isinstance(value, (str, Path)) and str(value).strip():
        return Path(value)
    if isinstance(value, dict):
        try:
            return HubSource.model_validate(value)
        except ValidationError as e:
            raise ValueError(f"{key}: {describe_validation_error(e)}") from None
    raise ValueError(f"{key}: expected a path or a hub source {{hub: owner/name, split: test}}, "
                     f"got {type(value).__name__}")


def fixture_data() -> DataConfig:
    """The shipped synthetic fixtures (placeholder text in the real layouts), for tests and demos."""
    return DataConfig.from_yaml(FIXTURES / "data.yaml")
