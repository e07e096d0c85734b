"""Scale-out against a real PostgreSQL server that this test starts (initdb + pg_ctl in a temp folder, on a free
loopback port): `graft search` worker processes share one study and one trial budget; a worker SIGKILLed
mid-trial has its trial failed by the heartbeat check and run again by another; after every worker is dead, a new
one resumes the study and finishes exactly the budget. (Two workers racing to the end of a budget are tested
on SQLite in test_search.py.)

Skipped when the PostgreSQL server binaries or a psycopg driver are missing, unless GRAFT_REQUIRE_POSTGRES=1
(scripts/test.sh sets it where scripts/setup.sh installs the server), where that is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from graft.search.study import storage_url
from tests.test_search import FIXTURE_DATA, SMALL

REQUIRED = os.environ.get("GRAFT_REQUIRE_POSTGRES") == "1"
BUDGET = 10
HEARTBEAT = 2  # seconds; a trial silent for 2 × this is stale


def _unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason}; GRAFT_REQUIRE_POSTGRES=1 makes this a failure (install postgresql and psycopg: "
                    "bash scripts/setup.sh as root)")
    pytest.skip(reason)


def _server_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bindir = _server_bin()
    if bindir is None or not (bindir / "pg_ctl").exists():
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
    if not (importlib.util.find_spec("psycopg") or importlib.util.find_spec("psycopg2")):
        _unavailable("no PostgreSQL driver for Python (pip install 'psycopg[binary]')")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="graft-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the `postgres` account
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            _unavailable("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "server.log", _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    started = subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                              "-w", "-t", "30", "start"], capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr + (log.read_text() if log.exists() else "")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _wait_until(condition: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.1)


def test_workers_share_one_postgres_study_survive_sigkill_and_resume(make_world, postgres_url: str,
                                                                     tmp_path: Path) -> None:
    world = make_world("causal")
    space = tmp_path / "space.yaml"
    space.write_text(SMALL)
    evals = tmp_path / "eval.yaml"
    evals.write_text(yaml.safe_dump({"graft_search_eval": 1, "data": str(FIXTURE_DATA), "safety": ["catqa"],
                                     "medical": ["pubmedqa"], "limit": 1, "max_new_tokens": 4}))
    workers: dict[str, subprocess.Popen] = {}

    def start(name: str) -> subprocess.Popen:
        log = (tmp_path / f"{name}.log").open("w")
        workers[name] = subprocess.Popen(
            [sys.executable, "-m", "graft.cli", "search", "--target", str(world.target), "--vector",
             str(world.vector), "--space", str(space), "--eval", str(evals), "--trials", str(BUDGET),
             "--storage", postgres_url, "--study", "scale-out", "--out", str(tmp_path / name), "--dtype", "float32",
             "--heartbeat", str(HEARTBEAT)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        return workers[name]

    def logs() -> str:
        return "\n".join(f"--- {n} (exit {p.poll()}):\n{(tmp_path / f'{n}.log').read_text()[-3000:]}"
                         for n, p in workers.items())

    storage = optuna.storages.RDBStorage(storage_url(postgres_url))  # one connection pool for all the polling

    def trials() -> list[optuna.trial.FrozenTrial]:
        try:
            study_id = storage.get_study_id_from_name("scale-out")
        except KeyError:  # not created yet
            return []
        return storage.get_all_trials(study_id, deepcopy=False)

    def done() -> list[optuna.trial.FrozenTrial]:
        return [t for t in trials() if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]

    def by(proc: subprocess.Popen) -> str:
        return f"{socket.gethostname()}:{proc.pid}"

    def finished_by(proc: subprocess.Popen) -> int:
        return sum(t.user_attrs.get("worker") == by(proc) for t in done())

    def kill_mid_trial(proc: subprocess.Popen) -> int:
        """Freeze the worker, and SIGKILL it only while one of its trials is RUNNING; its trial number."""
        for _ in range(400):
            os.kill(proc.pid, signal.SIGSTOP)
            running = [t for t in trials()
                       if t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("worker") == by(proc)]
            if running:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                return running[0].number
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.03)
        pytest.fail(f"worker {proc.pid} never seen mid-trial\n{logs()}")

    try:
        a, b = start("a"), start("b")
        _wait_until(lambda: finished_by(a) >= 1 and finished_by(b) >= 1, 240, "both workers to finish a trial", logs)
        killed_a = kill_mid_trial(a)
        b_before = finished_by(b)
        _wait_until(lambda: finished_by(b) > b_before, 120, "worker b to carry on alone", logs)
        killed_b = kill_mid_trial(b)
        assert len(done()) < BUDGET, "both workers were killed only after the budget was reached; raise BUDGET"

        c = start("c")  # every worker is dead: a new one resumes the study where it stopped
        assert c.wait(240) == 0, logs()
    finally:
        for proc in workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    all_trials = trials()
    finished = done()
    baselines = sorted(t.user_attrs["baseline"] for t in finished if t.user_attrs.get("baseline"))
    assert baselines == ["lambda0", "uniform_0.5", "uniform_1"]  # enqueued once by the study's creator
    # exactly the budget of searched trials, shared by three workers, on top of the baselines
    assert len(finished) == BUDGET + len(baselines), logs()
    numbers = [t.number for t in all_trials]
    assert len(numbers) == len(set(numbers))
    contributors = {t.user_attrs["worker"] for t in finished}
    assert contributors == {by(a), by(b), by(c)}
    for killed in (killed_a, killed_b):  # failed by the heartbeat check, then run again under a new number
        assert all_trials[killed].state == optuna.trial.TrialState.FAIL
        retries = [t for t in finished if killed in t.system_attrs.get("retry_history", [])]
        # The same parameters (none yet when it was killed before drawing them: then the retry draws afresh).
        assert len(retries) == 1, logs()
        assert all(retries[0].params[k] == v for k, v in all_trials[killed].params.items())
    storage.engine.dispose()
    summary = yaml.safe_load((tmp_path / "c" / "summary.json").read_text())
    assert summary["counts"].get("COMPLETE", 0) + summary["counts"].get("PRUNED", 0) == BUDGET + len(baselines)
    assert summary["storage"].startswith("postgresql://postgres@127.0.0.1")
