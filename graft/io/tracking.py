"""Experiment tracking, opt in: `--log mlflow` / `--log wandb` (or `log:` in a search's eval.yaml) sends a search's
or an evaluation's parameters, scores and recipe to the tracker a team already reads.

Both trackers run offline: MLflow writes wherever `MLFLOW_TRACKING_URI` points (its default is a local
`sqlite:///mlflow.db`); W&B honours `WANDB_MODE` (e.g. `offline`, then `wandb sync` later). Neither is imported
unless asked for, and a missing one is a one-line usage error saying what to install.

A search logs one parent run (its configuration, the final figures, `best_recipe.yaml` and `summary.json`) and,
per finished trial, its parameters, λ per (layer, group) and scores: MLflow as a nested run per trial, W&B as one
step per trial. `Tracker.trial` has Optuna's callback signature `(study, frozen_trial)`, so it runs through the
same hook as `optuna-integration`'s callbacks and a user's own functions (`--callback module:function`).

A tracker is opened (its run started) before the work, so a wrong server, a missing key or no network fails in
seconds as a one-line input error (exit 3), not after an hour of trials. Once the work is done its outputs are the
result: a tracker that fails while logging then (or between trials) costs a warning on stderr, never the exit code
or the files (`log_safely`, `finish_all`).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from graft.errors import InputError, UsageError, reason

LOGGERS: dict[str, tuple[str, str]] = {  # name -> (module to import, what to install)
    "mlflow": ("mlflow", "pip install 'graft[tracking]' (or mlflow-skinny)"),
    "wandb": ("wandb", "pip install 'graft[tracking]' (or wandb)"),
}
TrialCallback = Callable[[Any, Any], None]  # Optuna's (study, frozen_trial)
# How long MLflow may try an unreachable server while graft opens its run: its defaults (7 retries with
# exponential backoff, 120 s per request) turn a typo in MLFLOW_TRACKING_URI into minutes of silence. Applied only
# to the opening calls, and only to the variables the user has not set.
MLFLOW_OPEN_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
WANDB_INIT_TIMEOUT = 30.0  # seconds wandb.init may wait for W&B's servers (its default: 90), unless WANDB_INIT_TIMEOUT
log = logging.getLogger("graft")


class Tracker(Protocol):
    def trial(self, study: Any, trial: Any) -> None: ...

    def finish(self, *, metrics: Mapping[str, Any], files: Sequence[Path],
               params: Mapping[str, Any] | None = None) -> None: ...


def check_loggers(names: Sequence[str], *, source: str = "--log") -> list[str]:
    """Known and installed, or a usage error (exit 2) naming what to install."""
    out = []
    for name in names:
        if name not in LOGGERS:
            raise UsageError(f"{source} {name}: expected one of {', '.join(LOGGERS)}")
        module, install = LOGGERS[name]
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"{source} {name}: {module} is not installed; {install}") from exc
        out.append(name)
    return list(dict.fromkeys(out))


def load_callback(spec: str) -> TrialCallback:
    """`module:function` (a module importable from the current environment) → the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--callback {spec}: expected module:function (e.g. mypackage.hooks:on_trial)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--callback {spec}: cannot import {module_name} ({exc})") from exc
    func = module
    for part in attr.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise UsageError(f"--callback {spec}: {module_name} has no {attr}")
    if not callable(func):
        raise UsageError(f"--callback {spec}: {attr} is not callable")
    return func  # type: ignore[return-value]


def flat(prefix: str, data: Any) -> dict[str, Any]:
    """Nested dicts → 'a.b.c' keys (what both trackers show as parameters)."""
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat(f"{prefix}.{key}" if prefix else str(key), value))
        return out
    return {prefix: data}


def numbers(data: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries (booleans as 0/1): what a tracker accepts as metrics."""
    out = {}
    for key, value in data.items():
        if isinstance(value, (bool, int, float)) and math.isfinite(value):  # booleans as 0/1
            out[key] = float(value)
    return out


def trial_record(trial: Any, lambdas: Callable[[dict | None], dict[str, float]]) -> tuple[dict, dict]:
    """(parameters, metrics) of a finished trial: its sampled parameters and λ per cell; scores and constraints."""
    attrs = trial.user_attrs
    params = {**{f"param.{k}": v for k, v in trial.params.items()}, **lambdas(attrs.get("coefficients"))}
    if attrs.get("baseline"):
        params["baseline"] = attrs["baseline"]
    if attrs.get("operator"):
        params["operator"] = attrs["operator"]
    metrics = {k: attrs.get(k) for k in ("safety", "medical", "medical_drop", "over_refusal", "screening",
                                         "feasible", "seconds")}
    metrics.update({f"score.{t}": v for t, v in (attrs.get("scores") or {}).items()})
    metrics.update({f"value_{i}": v for i, v in enumerate(trial.values or [])})
    metrics["pruned"] = trial.state.name == "PRUNED"
    return params, numbers(metrics)


class MlflowTracker:
    """A parent run with nested runs per trial, through `MlflowClient` (no global active run to leak)."""

    def __init__(self, name: str, params: Mapping[str, Any], *, tags: Mapping[str, str] | None = None,
                 lambdas: Callable[[dict | None], dict[str, float]] | None = None):
        from mlflow.tracking import MlflowClient, get_tracking_uri

        from graft.io.databases import check_tracking_store

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its database-migration chatter in our console
        check_tracking_store(get_tracking_uri())  # MLflow would add its tables to another application's database
        with env_defaults(MLFLOW_OPEN_LIMITS):
            self.client = MlflowClient()
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "graft")
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run = self.client.create_run(self.experiment_id, run_name=name,
                                              tags={"graft": "1", **(tags or {})})
            self.run_id = self.run.info.run_id
            self._log(self.run_id, params=params)
        self.lambdas = lambdas or (lambda _c: {})

    @staticmethod
    def where() -> str:
        from mlflow.tracking import get_tracking_uri

        return f"MLFLOW_TRACKING_URI={get_tracking_uri()}"

    @staticmethod
    def advice() -> str:
        return ("check MLFLOW_TRACKING_URI (the server must be up and reachable; unset, MLflow writes to a local "
                "sqlite:///mlflow.db) and its credentials (MLFLOW_TRACKING_TOKEN / _USERNAME / _PASSWORD)")

    def _log(self, run_id: str, *, params: Mapping[str, Any] = (), metrics: Mapping[str, float] = (),
             step: int = 0) -> None:
        from mlflow.entities import Metric, Param

        items = [Param(k, str(v)[:6000]) for k, v in dict(params).items() if v is not None]
        now = _millis()
        values = [Metric(k, float(v), now, step) for k, v in dict(metrics).items()]
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 parameters and 1000 metrics
            self.client.log_batch(run_id, params=items[start:start + 100])
        for start in range(0, len(values), 1000):
            self.client.log_batch(run_id, metrics=values[start:start + 1000])

    def trial(self, study: Any, trial: Any) -> None:
        params, metrics = trial_record(trial, self.lambdas)
        child = self.client.create_run(self.experiment_id, run_name=f"trial {trial.number}",
                                       tags={"mlflow.parentRunId": self.run_id, "trial": str(trial.number),
                                             "state": trial.state.name})
        self._log(child.info.run_id, params=params, metrics=metrics, step=trial.number)
        self.client.set_terminated(child.info.run_id)
        self._log(self.run_id, metrics={f"trial.{k}": v for k, v in metrics.items()}, step=trial.number)

    def finish(self, *, metrics: Mapping[str, Any], files: Sequence[Path],
               params: Mapping[str, Any] | None = None) -> None:
        self._log(self.run_id, params=params or {}, metrics=numbers(metrics))
        for path in files:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id)

    def logged(self) -> str:
        """Where the run went, for the user to find it (printed once the work is logged)."""
        from mlflow.tracking import get_tracking_uri

        uri = get_tracking_uri()
        return (f"mlflow: run {self.run_id} in experiment {self.run.info.experiment_id} at {uri} "
                f"(browse it: mlflow ui --backend-store-uri {uri})")

    def fail(self) -> None:
        with env_defaults(MLFLOW_OPEN_LIMITS):  # on the way out of a failed command: never minutes of retries
            self.client.set_terminated(self.run_id, status="FAILED")


class WandbTracker:
    """One W&B run: the configuration as its config, one step per trial, the final figures as its summary."""

    def __init__(self, name: str, params: Mapping[str, Any], *, tags: Mapping[str, str] | None = None,
                 lambdas: Callable[[dict | None], dict[str, float]] | None = None):
        import wandb

        self.wandb = wandb
        timeout = None if os.environ.get("WANDB_INIT_TIMEOUT") else WANDB_INIT_TIMEOUT
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "graft"), name=name,
                              config={k: v for k, v in params.items() if v is not None},
                              tags=[f"{k}:{v}" for k, v in (tags or {}).items()], reinit="create_new",
                              settings=wandb.Settings(init_timeout=timeout) if timeout else None)
        self.lambdas = lambdas or (lambda _c: {})
        self._step = -1

    @staticmethod
    def where() -> str:
        return f"WANDB_MODE={os.environ.get('WANDB_MODE') or 'online'}"

    @staticmethod
    def advice() -> str:
        return ("run `wandb login` or set WANDB_API_KEY (and WANDB_BASE_URL for a private server), or set "
                "WANDB_MODE=offline to log locally and `wandb sync` later")

    def trial(self, study: Any, trial: Any) -> None:
        params, metrics = trial_record(trial, self.lambdas)
        self._step = max(self._step + 1, trial.number)  # W&B steps only go forward
        self.run.log({**{f"trial/{k}": v for k, v in metrics.items()},
                      **{f"trial/{k}": v for k, v in params.items() if isinstance(v, (int, float))},
                      "trial/number": trial.number}, step=self._step)

    def finish(self, *, metrics: Mapping[str, Any], files: Sequence[Path],
               params: Mapping[str, Any] | None = None) -> None:
        if params:
            self.run.config.update({k: v for k, v in params.items() if v is not None}, allow_val_change=True)
        self.run.summary.update(numbers(metrics))
        for path in files:
            if Path(path).is_file():
                self.run.save(str(path), base_path=str(Path(path).parent), policy="now")
        self.run.finish()

    def logged(self) -> str:
        """Where the run went: its page online; offline, its folder and the command that uploads it later."""
        folder = Path(self.run.dir).parent  # wandb/offline-run-…/files -> the run's folder
        if self.run.settings.mode in ("offline", "dryrun") or not getattr(self.run, "url", None):
            return f"wandb: run {self.run.id} logged offline in {folder} (upload it later: wandb sync {folder})"
        return f"wandb: run {self.run.id} at {self.run.url} (local copy in {folder})"

    def fail(self) -> None:
        self.run.finish(exit_code=1)


KINDS: dict[str, Any] = {"mlflow": MlflowTracker, "wandb": WandbTracker}


def open_trackers(names: Sequence[str], name: str, params: Mapping[str, Any], *,
                  tags: Mapping[str, str] | None = None,
                  lambdas: Callable[[dict | None], dict[str, float]] | None = None) -> list[Any]:
    """Start one run per tracker, before the work: whatever the tracker's library raises (no server, no key, no
    network, a refused token) is a one-line input error naming the tracker, where it points and what to do. A run
    already started is marked failed when a later one cannot start."""
    opened: list[Any] = []
    for kind in check_loggers(names):
        tracker = KINDS[kind]
        try:
            opened.append(tracker(name, params, tags=tags, lambdas=lambdas))
        except Exception as exc:
            fail_all(opened)
            raise InputError(f"--log {kind}: could not start a run ({tracker.where()}): {reason(exc)}; "
                             f"{tracker.advice()}") from exc
    return opened


def log_safely(tracker: Any, kind: str) -> TrialCallback:
    """The tracker's per-trial hook, made harmless: a failure is one warning, then that tracker sits out the rest
    of the search (its work is in the study and the output folder either way)."""
    broken: list[str] = []

    def trial(study: Any, frozen: Any) -> None:
        if broken:
            return
        try:
            tracker.trial(study, frozen)
        except Exception as exc:
            broken.append(reason(exc))
            log.warning("--log %s: logging trial %s failed (%s); the search goes on without %s, its trials are "
                        "kept in the study", kind, getattr(frozen, "number", "?"), broken[0], kind)

    return trial


def finish_all(trackers: Sequence[Any], *, metrics: Mapping[str, Any], files: Sequence[Path],
               params: Mapping[str, Any] | None = None, say: Callable[[str], None] | None = None) -> bool:
    """Send the final figures and files once the work is done, and `say` where each run went. A tracker that fails
    now is a warning naming the complete outputs that were kept, not a failed command: the results are on disk and
    can be logged again. True when every tracker took them."""
    complete = True
    for tracker in trackers:
        try:
            tracker.finish(metrics=metrics, files=files, params=params)
            if say is not None and hasattr(tracker, "logged"):
                say(tracker.logged())
        except Exception as exc:
            complete = False
            kind = next((k for k, v in KINDS.items() if isinstance(tracker, v)), type(tracker).__name__)
            kept = ", ".join(str(p) for p in files if Path(p).is_file())
            log.warning("--log %s: the work is done and its outputs are complete (%s), but logging them failed "
                        "(%s); they are kept", kind, kept or "none written", reason(exc))
    return complete


def fail_all(trackers: Sequence[Any]) -> None:
    """Mark the runs failed on the way out of a failed command; a tracker that cannot be told is left as it is."""
    for tracker in trackers:
        try:
            tracker.fail()
        except Exception as exc:  # the command's own error is the one to report
            log.debug("could not mark a tracker run failed: %s", reason(exc))


@contextmanager
def env_defaults(values: Mapping[str, str]) -> Iterator[None]:
    """Set the environment variables the user has not set, for the duration of the block only."""
    added = [key for key in values if key not in os.environ]
    for key in added:
        os.environ[key] = values[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _millis() -> int:
    import time

    return int(time.time() * 1000)


__all__ = ["LOGGERS", "MlflowTracker", "Tracker", "TrialCallback", "WandbTracker", "check_loggers", "fail_all",
           "finish_all", "flat", "load_callback", "log_safely", "numbers", "open_trackers", "trial_record"]
