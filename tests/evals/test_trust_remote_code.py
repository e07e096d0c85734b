"""`graft eval --trust-remote-code`: off unless asked, passed to transformers when asked, with a warning."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from graft.cli import app
from graft.errors import UsageError
from graft.evals.config import FIXTURES
from graft.evals.generation import HFBackend


@pytest.mark.parametrize("flag", [False, True])
def test_trust_remote_code_is_opt_in(tiny_llama, monkeypatch, tmp_path, flag: bool) -> None:
    seen = {}

    def load(cls, path, **kwargs):
        seen.update(kwargs)
        raise UsageError("stopped after the model load call")

    monkeypatch.setattr(HFBackend, "load", classmethod(load))
    argv = ["eval", str(tiny_llama), "--data", str(FIXTURES / "data.yaml"), "--tasks", "pubmedqa",
            "--out", str(tmp_path / "results.json")] + (["--trust-remote-code"] if flag else [])
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2 and "stopped after the model load call" in result.output, result.output
    assert seen["trust_remote_code"] is flag
    warned = [line for line in result.output.splitlines() if "--trust-remote-code" in line]
    assert len(warned) == (1 if flag else 0) and (not flag or str(tiny_llama) in warned[0])
