"""The parts of Optuna graft uses that Optuna does not publish, in one place.

graft runs its own trial loop (a shared budget across workers, heartbeats sent by the worker, silent trials
failed), so it needs a trial's storage id, a study's storage and id, and a query on Optuna's heartbeat table.
Optuna keeps these private; every use goes through this module, so an Optuna upgrade that moves them breaks
one file, and `tests/test_search.py` exercises each function through the worker loop.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.trial import TrialState


def trial_id(trial: optuna.Trial) -> int:
    """The storage's id of a live trial (what every storage call takes; `trial.number` is per study)."""
    return trial._trial_id


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study talks to (possibly Optuna's caching wrapper around an RDBStorage)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def rdb_backend(storage: optuna.storages.BaseStorage) -> Any:
    """The RDBStorage under Optuna's cache wrapper (or the storage itself)."""
    return getattr(storage, "_backend", storage)


def running_trials_without_heartbeat(study: optuna.Study, older_than: timedelta) -> list[int]:
    """Storage ids of the study's RUNNING trials that never recorded a heartbeat and started more than
    `older_than` ago (by the starting worker's clock, as Optuna records `datetime_start`). Empty for storages
    without a heartbeat table."""
    backend = rdb_backend(study_storage(study))
    if not hasattr(backend, "scoped_session"):
        return []
    from optuna.storages._rdb import models  # the heartbeat table has no public query

    now = datetime.now()
    session = backend.scoped_session()
    try:
        return [t.trial_id for t in session.query(models.TrialModel)
                .filter(models.TrialModel.study_id == study_id(study))
                .filter(models.TrialModel.state == TrialState.RUNNING).all()
                if not t.heartbeats and t.datetime_start is not None and now - t.datetime_start > older_than]
    finally:
        session.close()


__all__ = ["rdb_backend", "running_trials_without_heartbeat", "study_id", "study_storage", "trial_id"]
