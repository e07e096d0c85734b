# ruff: noqa: F811  (fixtures imported from tests/test_bad_input.py are parameters here)
"""What reaches the terminal: text read from a checkpoint (tensor names, config values) is printed escaped, never
acted on by the terminal nor read as rich markup, in tables, warnings and errors alike; a name safetensors itself
refuses (a lone surrogate) is refused at parse time; and a stdout or stderr that is not UTF-8 never turns a message
into exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from graft.cli import app
from tests.hostile.io_checks import (  # noqa: F401  (fixtures are found by name)
    INDEX,
    Models,
    assert_error,
    built,
    cli,
    m,
    merge_args,
    outdir,
    plan_args,
)

ESCAPES = "\x1b[31m\x1b]0;pwned\x07\u202e"  # a colour, a window-title sequence, a right-to-left override
VISION = "vision_tower.post_layernorm.weight"  # a pass-through tensor of the llava target


def rename_tensor(folder: Path, old: str, new: str, *, in_index: bool = True) -> Path:
    """Rename one tensor in its shard's header and (unless told otherwise) in the index; bytes and offsets
    unchanged."""
    index = folder / INDEX
    weight_map = json.loads(index.read_text())
    shard = folder / weight_map["weight_map"][old]
    data = shard.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header[new] = header.pop(old)
    body = json.dumps(header).encode()  # ensure_ascii: controls and surrogates as \u escapes, as JSON allows
    shard.write_bytes(len(body).to_bytes(8, "little") + body + data[8 + n:])
    if in_index:
        weight_map["weight_map"][new] = weight_map["weight_map"].pop(old)
        index.write_text(json.dumps(weight_map))
    return shard


def _raw_control(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 32 and c not in "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]


def test_tensor_names_with_escape_codes_are_printed_escaped(m: Models, outdir: Path) -> None:
    hostile = f"vision_tower.[bold red]x[/]{ESCAPES}.weight"
    rename_tensor(m.target, VISION, hostile)
    result = CliRunner().invoke(app, list(map(str, plan_args(m.target, m.vector, "--list"))), env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert _raw_control(result.stdout) == [], "a control character reached the terminal"
    assert "\\x1b[31m" in result.stdout and "\\u202e" in result.stdout
    assert "[bold red]x[/]" in result.stdout  # taken literally, not as rich markup
    # The name is only escaped for the terminal: the merged output holds it as it is.
    out = outdir / "merged"
    assert cli(*merge_args(m.target, m.vector, out)).exit_code == 0
    assert any(hostile in load_file(shard) for shard in out.glob("*.safetensors"))


def test_escape_codes_in_errors_and_warnings_are_printed_escaped(m: Models, outdir: Path) -> None:
    config = json.loads((m.target / "config.json").read_text())
    config["text_config"]["model_type"] = f"gemma{ESCAPES}"  # the plan warns: not the vector's model family
    (m.target / "config.json").write_text(json.dumps(config))
    result = cli(*plan_args(m.target, m.vector, "-q"))
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "gemma\\x1b[31m" in result.stderr
    assert _raw_control(result.stderr) == []
    index = json.loads((m.target / INDEX).read_text())
    index["weight_map"][f"ghost{ESCAPES}"] = next(iter(index["weight_map"].values()))
    (m.target / INDEX).write_text(json.dumps(index))
    line = assert_error(cli(*plan_args(m.target, m.vector)), 3, str(m.target / INDEX), "ghost\\x1b[31m")
    assert _raw_control(line) == []


def test_a_tensor_name_holding_a_lone_surrogate_is_refused_at_parse_time(m: Models, outdir: Path) -> None:
    shard = rename_tensor(m.target, VISION, "vision_tower.\ud800.weight", in_index=False)  # the header is read first
    with pytest.raises(Exception):  # noqa: B017  (the oracle: safetensors itself refuses such a header)
        safe_open(str(shard), "pt")
    for args in (plan_args(m.target, m.vector), merge_args(m.target, m.vector, outdir / "merged")):
        line = assert_error(cli(*args), 3, str(shard), "lone surrogate", "\\ud800")
        assert _raw_control(line) == []
    assert not (outdir / "merged").exists()


@pytest.mark.parametrize("where", ["config", "index", "manifest"])
def test_a_lone_surrogate_in_a_config_or_index_is_refused(m: Models, where: str) -> None:
    path = {"config": m.target / "config.json", "index": m.target / INDEX, "manifest": m.vector / "vector.json"}[where]
    data = json.loads(path.read_text())
    if where == "config":
        data["architectures"] = ["Llava\ud83dForConditionalGeneration"]
    elif where == "index":
        data["weight_map"][next(iter(data["weight_map"]))] = "model-\udfff.safetensors"
    else:
        data["base"]["model_type"] = "llama\udc00"
    path.write_text(json.dumps(data))
    assert_error(cli(*plan_args(m.target, m.vector)), 3, str(path), "lone surrogate")


def _graft_bytes(*args: object, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """`graft ARGS` in a real process, its output kept as bytes (decoded by the test in the stream's encoding)."""
    code = "import sys; from graft.cli import main; sys.argv[0] = 'graft'; main()"
    environ = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **env}
    argv = [os.fsencode(sys.executable), b"-c", code.encode(), *(os.fsencode(str(a)) for a in args)]
    return subprocess.run(argv, capture_output=True, env=environ, timeout=120)


@pytest.mark.parametrize(("env", "encoding"), [({"PYTHONIOENCODING": "ascii"}, "ascii"),
                                               ({"PYTHONIOENCODING": "cp1252"}, "cp1252"),
                                               ({"LC_ALL": "C", "LANG": "C"}, "utf-8")],
                         ids=["ascii", "cp1252", "C-locale"])
def test_a_stream_that_is_not_utf8_never_makes_a_message_exit_1(m: Models, outdir: Path, env: dict[str, str],
                                                                encoding: str) -> None:
    proc = _graft_bytes(*plan_args(m.target, m.vector), env=env)
    assert proc.returncode == 0, proc.stderr
    stdout = proc.stdout.decode(encoding)  # every byte written is in the stream's own encoding
    assert "λ" in stdout or "\\u03bb" in stdout
    out = outdir / "merged-é-τ"
    proc = _graft_bytes(*merge_args(m.target, m.vector, out), env=env)  # -q: the path alone on stdout
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode(encoding).strip() in (str(out), str(out).replace("τ", "\\u03c4"),
                                                    str(out).replace("é", "\\xe9").replace("τ", "\\u03c4"))
    assert (out / "README.md").is_file() and (out / "graft_recipe.yaml").is_file()
    proc = _graft_bytes(*merge_args(m.target, m.vector, out), env=env)  # an error line naming that path
    assert proc.returncode == 5
    lines = proc.stderr.decode(encoding).splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "already exists" in lines[0], lines


def test_a_path_that_is_not_utf8_is_printed_as_its_bytes(m: Models, outdir: Path) -> None:
    """A file name's bytes that are not UTF-8 reach graft as lone surrogates (Python's surrogateescape); `-q`
    prints the path a script can use: the same bytes."""
    out = os.fsdecode(os.fsencode(outdir) + b"/merged-\xff")
    proc = _graft_bytes(*merge_args(m.target, m.vector, Path(out)), env={})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == os.fsencode(out)
    assert os.path.isdir(out)


def test_an_input_path_that_is_not_utf8_is_refused_before_any_work(m: Models, outdir: Path) -> None:
    """graft names its inputs by path in graft_recipe.yaml and vector.json (UTF-8 text): such a path used to fail
    with exit 1 once the whole merge was written."""
    target = os.fsdecode(os.fsencode(m.target.parent) + b"/target-\xff")
    os.rename(m.target, target)
    proc = _graft_bytes(*merge_args(Path(target), m.vector, outdir / "merged"), env={})
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "target-\\xff" in lines[0] and "not valid UTF-8" in lines[0]
    assert not (outdir / "merged").exists() and list(outdir.iterdir()) == []
    proc = _graft_bytes("extract", "-b", Path(target), "-a", m.aligned, "-o", outdir / "vec", "--no-hash", env={})
    assert proc.returncode == 3 and b"not valid UTF-8" in proc.stderr
