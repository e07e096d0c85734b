"""The Optuna side of a search: storage (SQLite, PostgreSQL, MySQL) with heartbeats, samplers with explicit
seeds, creating or joining a study (baselines enqueued once, by its creator), and the worker loop that shares
one trial budget between any number of processes.

`budget` = the number of finished (COMPLETE or PRUNED) trials the study should reach, whoever runs them. A worker
claims a trial with `ask()`, then checks its rank among the trials that are not FAILed (by trial number, which
the storage hands out in order under a row lock); a trial ranked past the budget is released at once (FAIL, with
`released` set, and its fixed parameters re-enqueued if it had any). Ranks only fall over time (trials leave by
failing; new ones come last), so a trial that was inside the budget stays inside it, and the study ends with
exactly `budget` finished trials even when workers ask at the same moment. A worker killed mid-trial stops its
heartbeat; the next `fail_stale_trials` marks it FAIL and `RetryFailedTrialCallback` enqueues the same
parameters again, so its slot of the budget is run again by whoever is alive.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from graft.errors import InputError, UsageError
from graft.io.databases import check_study_storage, redact, storage_url

from .config import Objective
from .objective import Pruned, constraints_of
from .optuna_internals import rdb_backend, running_trials_without_heartbeat, study_storage, trial_id
from .samplers import SAMPLER_TABLE, sampler_spec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
METADATA_KEY = "graft_search"
READY_KEY = "graft_ready"
REFERENCE_KEY = "medical_reference"


@contextmanager
def quiet_optuna():
    """Optuna marks heartbeats, retries and multivariate TPE experimental; the warning says nothing to users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # We run trials with our own loop (for the shared budget) and send the heartbeats ourselves.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning)
        # CMA-ES folds the constraints into its value; they are recorded for the dashboard (`show_constraints`).
        warnings.filterwarnings("ignore", message="Constraints have been set, but CmaEsSampler", category=UserWarning)
        yield


# -- storage --------------------------------------------------------------------------------------------------------
def open_storage(url: str, *, heartbeat_interval: int = 60, grace_period: int | None = None,
                 max_retry: int | None = 3) -> optuna.storages.RDBStorage:
    """An RDB storage whose running trials send heartbeats; stale ones are failed and retried (up to max_retry)."""
    if not url.startswith(("sqlite:", "postgresql", "postgres:", "mysql")):
        raise UsageError(f"--storage {redact(url)}: expected sqlite:///FILE, postgresql://... or mysql://...")
    if heartbeat_interval < 1:
        raise UsageError(f"--heartbeat {heartbeat_interval}: expected a positive number of seconds")
    check_study_storage(url, write=True)  # never Optuna's tables in another application's database
    retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    callback_arg = "heartbeat_stale_trial_callback" if retry_cls is not optuna.storages.RetryFailedTrialCallback \
        else "failed_trial_callback"
    for attempt in range(5):
        with quiet_optuna():
            try:
                return optuna.storages.RDBStorage(
                    storage_url(url), engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period, **{callback_arg: retry_cls(max_retry=max_retry)})
            except ImportError as exc:
                raise InputError(f"--storage {redact(url)}: no database driver for it ({exc}); install one, e.g. "
                                 "pip install 'graft[postgres]'") from exc
            except Exception as exc:  # sqlalchemy: unreachable server, bad credentials, unknown database...
                # ...or workers creating the same fresh schema at once (the loser's CREATE fails): try again.
                if attempt < 4 and _schema_race(exc):
                    time.sleep(0.2 + random.random())
                    continue
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                raise InputError(f"--storage {redact(url)}: cannot open it ({detail})") from exc
    raise AssertionError("unreachable")


def _schema_race(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("already exists", "unique constraint", "duplicate key", "database is locked"))


# -- samplers -------------------------------------------------------------------------------------------------------
def make_sampler(name: str, *, seed: int, mode: str,
                 constraints: Callable[[FrozenTrial], Sequence[float]] | None) -> optuna.samplers.BaseSampler:
    """A sampler from graft.search.samplers' table, with an explicit seed."""
    spec = sampler_spec(name)
    if mode == "pareto" and not spec.pareto:
        raise UsageError(f"--sampler {name} cannot search a Pareto front (one objective only); use "
                         f"{', '.join(n for n, s in SAMPLER_TABLE.items() if s.pareto)}, "
                         "or objective.mode constrained/weighted")
    with quiet_optuna():
        return spec.build(seed, constraints)


def sampler_constraints(objective: Objective) -> Callable[[FrozenTrial], Sequence[float]]:
    """The `constraints_func` handed to the samplers that model constraints (TPE, GP, NSGA-II)."""

    def constraints(trial: FrozenTrial) -> Sequence[float]:
        return constraints_of(trial.user_attrs, objective)

    return constraints


def worker_seed(seed: int, created: bool) -> int:
    """The study's creator uses `seed`; a worker joining (or resuming) it mixes in its host and process id so two
    workers never draw the same candidates from the same history."""
    if created:
        return seed
    import hashlib

    digest = hashlib.sha256(f"{seed}:{socket.gethostname()}:{os.getpid()}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


# -- creating or joining a study ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    name: str
    lam: float
    params: dict[str, float]


def open_study(storage: optuna.storages.RDBStorage, name: str, *, directions: list[str], metadata: dict[str, Any],
               baselines: Sequence[Baseline], make: Callable[[bool], optuna.samplers.BaseSampler],
               wait_s: float = 60.0, metric_names: Sequence[str] | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> tuple[optuna.Study, bool]:
    """Create the study (and enqueue its baselines) or join the existing one. Returns (study, created).

    Only the process whose `create_study` succeeds enqueues baselines, then marks the study ready; a joiner
    waits for that mark, so baselines are enqueued once however many workers start together or resume.
    `pruner` decides the rung promotions of multi-fidelity trials (it keeps its state in the storage, so every
    worker's pruner sees every trial's rungs).
    """
    pruner = pruner or optuna.pruners.NopPruner()
    with quiet_optuna():
        try:
            study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=make(True),
                                        pruner=pruner)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=storage, sampler=make(False), pruner=pruner)
            created = False
    if created:
        if metric_names:  # what Optuna's dashboard labels the objective values with
            with quiet_optuna():
                study.set_metric_names(list(metric_names))
        study.set_user_attr(METADATA_KEY, metadata)
        for b in baselines:
            study.enqueue_trial(b.params, user_attrs={"baseline": b.name, "baseline_lambda": b.lam})
        study.set_user_attr(READY_KEY, True)
        return study, True
    deadline = time.monotonic() + wait_s
    while not study.user_attrs.get(READY_KEY):
        if time.monotonic() > deadline:
            raise InputError(f"study {name!r} exists but was never initialised by `graft search` (its creator "
                             "stopped early, or another tool made it); delete it or choose another --study")
        time.sleep(0.2)
    _check_metadata(study, metadata)
    return study, False


# The parts of a study that must match for a worker to join it (anything else may differ per worker).
_MUST_MATCH = ("space", "objective", "tasks", "sampler", "num_layers")


def _normalised(key: str, value: Any) -> Any:
    """A stored objective with the current defaults filled in: a field added by a later graft (at its default)
    must not make an older study unjoinable."""
    if key == "objective" and isinstance(value, dict):
        with suppress(ValueError):
            return Objective.model_validate(value).model_dump()
    if key == "space" and isinstance(value, dict):
        from .space import SearchSpace

        with suppress(ValueError):
            return SearchSpace.model_validate(value).model_dump(mode="json")
    return value


def _check_metadata(study: optuna.Study, metadata: Mapping[str, Any]) -> None:
    stored = study.user_attrs.get(METADATA_KEY, {})
    for key in _MUST_MATCH:
        if _normalised(key, stored.get(key)) != _normalised(key, metadata.get(key)):
            raise UsageError(f"study {study.study_name!r} was created with another {key.replace('_', ' ')} "
                             f"({_short(stored.get(key))}, now {_short(metadata.get(key))}); resume it with the "
                             "same --space, --eval and --sampler, or start a new study: another output folder "
                             "(--out DIR, run_search(out=...)) or another name in this storage (--study NAME, "
                             "run_search(study=...))")


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the worker loop ------------------------------------------------------------------------------------------------
class Heartbeat:
    """Records the trial's heartbeat every interval while it runs (as Optuna's own optimize loop does)."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval() or 60
        while True:
            # A lost connection: the next beat retries; staleness is judged by the database server's clock.
            with suppress(Exception):
                self.storage.record_heartbeat(self.trial_id)
            if self._stop.wait(interval):
                return

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class BudgetState:
    finished: int
    live: list[FrozenTrial]  # not FAILed, by number

    def rank(self, number: int) -> int:
        return [t.number for t in self.live].index(number)


def budget_state(study: optuna.Study) -> BudgetState:
    trials = study.get_trials(deepcopy=False)
    live = sorted((t for t in trials if t.state != TrialState.FAIL), key=lambda t: t.number)
    return BudgetState(sum(t.state in FINISHED for t in live), live)


def fail_stale(study: optuna.Study) -> None:
    with quiet_optuna():
        optuna.storages.fail_stale_trials(study)
        _fail_silent_trials(study)


def _fail_silent_trials(study: optuna.Study) -> None:
    """A worker killed between `ask()` and its first heartbeat leaves a RUNNING trial with no heartbeat row, which
    Optuna never finds stale (it only compares heartbeats): a resumed study would wait on it forever. Such a trial
    older than the grace period is failed here, and retried through the same callback as a stale one."""
    storage = study_storage(study)
    backend = rdb_backend(storage)
    interval = backend.get_heartbeat_interval() if hasattr(backend, "get_heartbeat_interval") else None
    if not interval:
        return
    silent = running_trials_without_heartbeat(study, timedelta(seconds=backend.grace_period or 2 * interval))
    callback = getattr(backend, "get_heartbeat_stale_trial_callback", None)
    callback = callback() if callback else backend.get_failed_trial_callback()
    for silent_id in silent:
        if not storage.set_trial_state_values(silent_id, state=TrialState.FAIL):
            continue  # another worker got there first
        if callback is not None:
            callback(study, storage.get_trial(silent_id))


@contextmanager
def _claim_lock(storage: optuna.storages.RDBStorage):
    """Serialise claims on an SQLite study. SQLite's Python driver runs SELECTs outside a transaction, so Optuna's
    "take the WAITING trial" check-then-set is not atomic there: two workers asking at the same moment could both
    take the same enqueued trial (measured: 6 races in 20 tries). A file lock beside the database makes the claim
    atomic for every process on the machine (an SQLite file is only ever shared by one machine); server databases
    lock the row themselves."""
    url = str(getattr(storage, "url", ""))
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if not path or path == ":memory:":
        yield
        return
    import fcntl

    with open(f"{path}.claim-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def claim(study: optuna.Study, storage: optuna.storages.RDBStorage, budget: int,
          budget_items: int | None = None) -> optuna.Trial | str:
    """A trial to run, or 'done' (the budget is reached) or 'wait' (the rest of the budget is running elsewhere).
    `budget_items`: also 'done' once the finished trials have scored that many items (a trial running elsewhere
    still finishes, so a study may overshoot by a trial a worker)."""
    with _claim_lock(storage):
        return _claim(study, storage, budget, budget_items)


def items_spent(trials: Sequence[FrozenTrial]) -> int:
    """Item evaluations of the finished trials (each trial's items on the last rung it reached)."""
    return sum(int(t.user_attrs.get("items") or 0) for t in trials if t.state in FINISHED)


def _claim(study: optuna.Study, storage: optuna.storages.RDBStorage, budget: int,
           budget_items: int | None = None) -> optuna.Trial | str:
    fail_stale(study)
    state = budget_state(study)
    if state.finished >= budget:
        return "done"
    if budget_items is not None and items_spent(state.live) >= budget_items:
        return "done"
    inside = state.live[:budget]
    if len(state.live) >= budget and not any(t.state == TrialState.WAITING for t in inside):
        return "wait"
    with quiet_optuna():
        trial = study.ask()
    storage.record_heartbeat(trial_id(trial))  # at once: a trial with no heartbeat is never found stale
    if budget_state(study).rank(trial.number) < budget:
        return trial
    release(study, storage, trial)
    return "wait"


def tell(study: optuna.Study, trial: optuna.Trial, values: Sequence[float] | None = None,
         state: TrialState | None = None) -> None:
    with quiet_optuna():
        study.tell(trial, values, state=state)


def release(study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial) -> None:
    """Give back a trial claimed past the budget; if it carried fixed parameters (a baseline, a retry), they go
    back into the queue under a new number."""
    frozen = storage.get_trial(trial_id(trial))
    trial.set_user_attr("released", True)
    tell(study, trial, state=TrialState.FAIL)
    if frozen.params or "fixed_params" in frozen.system_attrs or frozen.user_attrs:
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            user_attrs=frozen.user_attrs, system_attrs=frozen.system_attrs))


def retry_later(study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.Trial) -> None:
    """An interrupted trial (Ctrl-C): fail it and queue its parameters again, as the heartbeat callback would."""
    tell(study, trial, state=TrialState.FAIL)
    getter = getattr(storage, "get_heartbeat_stale_trial_callback", None) or storage.get_failed_trial_callback
    callback = getter()
    if callback is not None:
        with quiet_optuna():
            callback(study, storage.get_trial(trial_id(trial)))


def taken_over(storage: optuna.storages.RDBStorage, trial: optuna.Trial) -> bool:
    """Whether the trial was finished behind this worker's back (failed as stale by another one, which has
    queued its parameters again): this worker's result for it is then dropped."""
    return storage.get_trial(trial_id(trial)).state.is_finished()


CONSTRAINTS_KEY = "constraints"  # where Optuna (its samplers, best_trials, the dashboard) reads a trial's constraints


def show_constraints(storage: optuna.storages.BaseStorage, trial: optuna.Trial) -> None:
    """Record the trial's constraints where Optuna's own tools read them, whatever the sampler (CMA-ES and random
    take no `constraints_func`, so Optuna would not record them): the dashboard then marks infeasible trials."""
    values = trial.user_attrs.get("constraints")
    if values is not None and not taken_over(storage, trial):
        storage.set_trial_system_attr(trial_id(trial), CONSTRAINTS_KEY, [float(v) for v in values])


@dataclass
class WorkerReport:
    ran: list[int]  # trial numbers this worker finished (COMPLETE or PRUNED)


def run_worker(study: optuna.Study, storage: optuna.storages.RDBStorage,
               objective: Callable[[optuna.Trial], Sequence[float]], budget: int, *, poll_s: float = 1.0,
               on_trial: Callable[[FrozenTrial], None] | None = None, worker: str | None = None,
               record_constraints: bool = False, budget_items: int | None = None) -> WorkerReport:
    """Run trials until the study has `budget` finished ones (or, with `budget_items`, has scored that many
    items). Exceptions other than screening stops fail the trial and propagate (a bug or a broken input should
    stop the worker, not burn the budget).
    `record_constraints`: store each trial's constraints where Optuna's tools read them (`show_constraints`)."""
    report = WorkerReport([])
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    while True:
        claimed = claim(study, storage, budget, budget_items)
        if claimed == "done":
            return report
        if isinstance(claimed, str):
            time.sleep(poll_s)
            continue
        trial = claimed
        trial.set_user_attr("worker", worker)
        state, values = TrialState.COMPLETE, None
        with Heartbeat(storage, trial_id(trial)):
            try:
                values = list(objective(trial))
            except Pruned:
                state = TrialState.PRUNED
            except KeyboardInterrupt:
                if not taken_over(storage, trial):
                    retry_later(study, storage, trial)
                raise
            except BaseException:
                if taken_over(storage, trial):
                    continue  # another worker found its heartbeat stale and queued it again; go on
                tell(study, trial, state=TrialState.FAIL)
                raise
        if record_constraints:
            show_constraints(storage, trial)
        try:
            tell(study, trial, values, state=None if state == TrialState.COMPLETE else state)
        except ValueError:
            if not taken_over(storage, trial):
                raise
            continue
        report.ran.append(trial.number)
        if on_trial is not None:
            on_trial(storage.get_trial(trial_id(trial)))


__all__ = ["Baseline", "budget_state", "claim", "items_spent", "make_sampler", "open_storage", "open_study",
           "run_worker"]
