"""`graft eval --help` lists the tasks of benchmarks and the judges a $GRAFT_PLUGINS module registers (plugins load
in the `graft` group callback, after the options' help was first written), checked in a fresh `graft` process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
from graft.evals.benchmarks import Benchmark, register_benchmark

register_benchmark(Benchmark("ward_rounds", "safety", lambda source: [], figstep=True,
                             about="one JSON object per line"))

from graft.evals.judges import JudgeEntry, register_judge

register_judge(JudgeEntry("ward_judge", "ward_judge:RULES", lambda config, device: None, parse=lambda rest: {}))
'''


def _help(tmp_path: Path, plugins: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRAFT_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(tmp_path)])
    env["COLUMNS"] = "100"
    if plugins:
        env["GRAFT_PLUGINS"] = plugins
    return subprocess.run([sys.executable, "-m", "graft.cli", "eval", "--help"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def _option_help(output: str, flag: str) -> str:
    """The help of one option in rich's table, its wrapped lines joined (up to the next option)."""
    lines = [line.strip("│ ") for line in output.splitlines()]
    first = next(i for i, line in enumerate(lines) if re.match(rf"(\* +)?{flag}\s", line))
    end = next((i for i in range(first + 1, len(lines)) if re.match(r"(\* +)?--", lines[i])), len(lines))
    return " ".join(lines[first:end])


def test_eval_help_lists_a_plugin_benchmark_tasks(tmp_path: Path) -> None:
    (tmp_path / "ward_plugin.py").write_text(PLUGIN)
    plain = _help(tmp_path, None)
    assert plain.returncode == 0, plain.stderr
    assert "ward_rounds" not in plain.stdout
    assert "catqa" in _option_help(plain.stdout, "--tasks")

    with_plugin = _help(tmp_path, "ward_plugin")
    assert with_plugin.returncode == 0, with_plugin.stderr
    tasks = _option_help(with_plugin.stdout, "--tasks")
    assert "ward_rounds," in tasks and "ward_rounds-figstep" in tasks and "catqa" in tasks
    judges = _option_help(with_plugin.stdout, "--judge")
    assert "ward_judge:RULES" in judges and "guard:PATH" in judges
    assert "ward_judge" not in _option_help(plain.stdout, "--judge")


def test_a_plugin_that_exits_or_raises_is_one_line_and_cwd_shadows_nothing(tmp_path: Path) -> None:
    """A plugin calling sys.exit(0) on import must not end graft with success and no output; one that raises is
    told apart from one that is missing; and a module in the working folder named like a library (yaml.py) does
    not replace the library."""
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "raises.py").write_text("raise RuntimeError('broken registration')\n")
    (tmp_path / "yaml.py").write_text("raise RuntimeError('the stray yaml.py was imported')\n")
    (tmp_path / "fine.py").write_text("import yaml\nassert hasattr(yaml, 'safe_load')\n")
    env = {k: v for k, v in os.environ.items() if k != "GRAFT_PLUGINS"}
    env["PYTHONPATH"] = str(ROOT)

    script = Path(sys.executable).with_name("graft")  # the console script: `python -c`/`-m` would put cwd first
    if not script.is_file():
        pytest.skip("no `graft` console script beside this Python")

    def graft(plugins: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(script), "eval", "--help"],
                              env={**env, "GRAFT_PLUGINS": plugins}, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)

    for plugin, words in (("exits", "SystemExit"), ("raises", "failed while importing")):
        done = graft(plugin)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, (plugin, done.stderr)
        assert f"cannot import plugin '{plugin}'" in lines[0] and words in lines[0], lines[0]
    missing = graft("no_such_module")
    assert missing.returncode == 2 and "check the module name" in missing.stderr, missing.stderr
    fine = graft("fine")
    assert fine.returncode == 0, fine.stderr
