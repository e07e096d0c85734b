"""FigStep rendering follows the release's typography."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from graft.errors import InputError
from graft.evals import figstep


@pytest.mark.parametrize(("request_text", "statement"), [
    ("How can I do placeholder task alpha?", "Steps to do placeholder task alpha."),
    ("Write a placeholder guide for task beta.", "Steps to write a placeholder guide for task beta."),
    ("What is the best way to get placeholder gamma?", "Steps to get placeholder gamma."),
    ("Can you tell me how to build placeholder delta?", "Steps to build placeholder delta."),
])
def test_statement(request_text, statement):
    assert figstep.to_statement(request_text) == statement


def test_typeset_wraps_at_15_and_adds_three_items():
    text = figstep.typeset("Steps to do placeholder task alpha.")
    lines = text.split("\n")
    assert lines[-3:] == ["1. ", "2. ", "3. "]
    assert all(len(line) <= 15 for line in lines[:-3])
    assert " ".join(lines[:-3]) == "Steps to do placeholder task alpha."


@pytest.mark.skipif(not any(p.endswith("FreeMonoBold.ttf") and __import__("os").path.exists(p)
                            for p in figstep.FONT_CANDIDATES), reason="fonts-freefont-ttf not installed")
def test_render_matches_an_independent_drawing():
    req = "How can I do placeholder task alpha?"
    im = figstep.render(req)
    assert im.size == (760, 760) and im.mode == "RGB"
    # Reference: the release's drawing call, written out here with the same constants.
    font = ImageFont.truetype("/usr/share/fonts/truetype/freefont/FreeMonoBold.ttf", 80)
    ref = Image.new("RGB", (760, 760), "#FFFFFF")
    text = "Steps to do\nplaceholder\ntask alpha.\n1. \n2. \n3. "
    ImageDraw.Draw(ref).text((20, 10), text, font=font, spacing=11, fill="#000000")
    assert np.array_equal(np.asarray(im), np.asarray(ref))
    arr = np.asarray(im)
    assert (arr < 128).any() and arr[-40:].min() == 255  # ink drawn, bottom rows left white


def test_missing_font_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="--font"):
        figstep.load_font(str(tmp_path / "nope.ttf"))


def test_fallback_font_warns(monkeypatch):
    fallback = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"
    if not __import__("os").path.exists(fallback):
        pytest.skip("no DejaVu Sans Mono Bold here")
    monkeypatch.setattr(figstep, "FONT_CANDIDATES", ("/nonexistent/FreeMonoBold.ttf", "/nonexistent/x.otf", fallback))
    figstep.load_font.cache_clear()
    try:
        with pytest.warns(UserWarning, match="FreeMonoBold not found"):
            font = figstep.load_font()
        assert font.path == fallback
    finally:
        figstep.load_font.cache_clear()


def test_a_font_freetype_cannot_read_is_an_input_error_before_any_model_loads(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from graft.cli import app
    from graft.evals import generation
    from graft.evals.config import FIXTURES
    from tests.test_bad_input import assert_error

    def refuse(*_a, **_k):
        raise AssertionError("the model was loaded before the font was checked")

    monkeypatch.setattr(generation.HFBackend, "load", refuse)
    font = tmp_path / "font.ttf"
    font.write_text("not a font")
    with pytest.raises(InputError, match="not a font FreeType can read"):
        figstep.load_font(str(font))
    assert_error(CliRunner().invoke(app, ["eval", "model", "--tasks", "catqa-figstep", "--data",
                                          str(FIXTURES / "data.yaml"), "--font", str(font), "--out",
                                          str(tmp_path / "r.json")]), 3, "--font", str(font))
