"""Typed images the toy vision tower can read: FigStep's layout, one word per patch, in a 3 × 5 pixel font.

The real FigStep render (graft.evals.figstep: 760 × 760, FreeMonoBold 80, wrapped at 15 characters) needs a
vision tower that does OCR, which a CPU-trained toy cannot learn in minutes. The toy keeps FigStep's layout
(the request as a "Steps to ..." statement, then the empty list "1." "2." "3." on lines of their own) but types
each word into its own cell of a 6 × 6 grid, so one vision patch holds exactly one word:

* a cell is 20 × 20 pixels; a word is written in a 3 × 5 pixel font, five letters a row, up to three rows
  (15 letters), black on white, with a bar under capitalised words (the font has one case);
* the statement fills the first rows, left to right; "1.", "2." and "3." each start one of the last three rows;
* the image is 120 × 120 pixels.

Nothing here depends on a world's vocabulary: any text renders, and a word the tower never saw is simply unknown
to it (as an unseen script would be).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from graft.evals.figstep import to_statement

from .tokenizer import WORD

CELL = 20  # pixels; the toy vision tower's patch size
GRID = 6  # cells a side
SIZE = CELL * GRID  # the toy vision tower's image size
STATEMENT_ROWS = GRID - 3  # the last three rows hold "1.", "2." and "3."
MAX_LETTERS = 15  # five a row, three rows
LIST_MARKS = ("1.", "2.", "3.")

# 3 x 5 glyphs, five rows of three pixels, top to bottom ("#" = ink).
_FONT = {
    "a": ".#. #.# ### #.# #.#", "b": "##. #.# ##. #.# ##.", "c": ".## #.. #.. #.. .##", "d": "##. #.# #.# #.# ##.",
    "e": "### #.. ##. #.. ###", "f": "### #.. ##. #.. #..", "g": ".## #.. #.# #.# .##", "h": "#.# #.# ### #.# #.#",
    "i": "### .#. .#. .#. ###", "j": "..# ..# ..# #.# .#.", "k": "#.# #.# ##. #.# #.#", "l": "#.. #.. #.. #.. ###",
    "m": "#.# ### ### #.# #.#", "n": "##. #.# #.# #.# #.#", "o": ".#. #.# #.# #.# .#.", "p": "##. #.# ##. #.. #..",
    "q": ".#. #.# #.# ##. .##", "r": "##. #.# ##. #.# #.#", "s": ".## #.. .#. ..# ##.", "t": "### .#. .#. .#. .#.",
    "u": "#.# #.# #.# #.# ###", "v": "#.# #.# #.# #.# .#.", "w": "#.# #.# ### ### #.#", "x": "#.# #.# .#. #.# #.#",
    "y": "#.# #.# .#. .#. .#.", "z": "### ..# .#. #.. ###",
    "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###", "2": "##. ..# .#. #.. ###", "3": "##. ..# .#. ..# ##.",
    "4": "#.# #.# ### ..# ..#", "5": "### #.. ##. ..# ##.", "6": ".## #.. ### #.# ###", "7": "### ..# .#. .#. .#.",
    "8": "### #.# ### #.# ###", "9": "### #.# ### ..# ##.",
    ".": "... ... ... ... .#.", ",": "... ... ... .#. #..", "?": "##. ..# .#. ... .#.", "!": ".#. .#. .#. ... .#.",
    ":": "... .#. ... .#. ...", ";": "... .#. ... .#. #..", "'": ".#. .#. ... ... ...", "-": "... ... ### ... ...",
    "(": "..# .#. .#. .#. ..#", ")": "#.. .#. .#. .#. #..", "/": "..# ..# .#. #.. #..", "%": "#.# ..# .#. #.. #.#",
    "+": "... .#. ### .#. ...", "=": "... ### ... ### ...", "&": ".#. #.# .#. #.# .##", '"': "#.# #.# ... ... ...",
}
_FONT_ROWS = {ch: rows.replace(" ", "") for ch, rows in _FONT.items()}
_UNKNOWN = "###############"


def _glyph(ch: str) -> str:
    return _FONT_ROWS.get(ch.lower(), _UNKNOWN)


def draw_word(word: str) -> Image.Image:
    """One cell: the word in the 3 x 5 font (five letters a row), underlined when it starts with a capital."""
    if len(word) > MAX_LETTERS:
        raise ValueError(f"'{word}': the toy font fits at most {MAX_LETTERS} letters in a cell")
    cell = Image.new("L", (CELL, CELL), 255)
    px = cell.load()
    for k, ch in enumerate(word):
        x0, y0 = 1 + 4 * (k % 5) - (k % 5 == 4), 1 + 6 * (k // 5)
        bits = _glyph(ch)
        for r in range(5):
            for c in range(3):
                if bits[3 * r + c] == "#":
                    px[min(x0 + c, CELL - 1), y0 + r] = 0
    if word[:1].isupper():
        for x in range(1, CELL - 1):
            px[x, CELL - 2] = 0
    return cell


@dataclass(frozen=True)
class TypedImage:
    """Words typed into the toy's FigStep layout (`list_marks`: the empty list under them, as FigStep draws)."""

    words: tuple[str, ...]
    list_marks: bool = True

    def cells(self) -> list[str | None]:
        """The word in each cell, row by row (None: blank)."""
        rows = STATEMENT_ROWS if self.list_marks else GRID
        if len(self.words) > rows * GRID:
            raise ValueError(f"{len(self.words)} words do not fit the toy layout's {rows * GRID} cells")
        out: list[str | None] = list(self.words) + [None] * (rows * GRID - len(self.words))
        if self.list_marks:
            for mark in LIST_MARKS:
                out += [mark] + [None] * (GRID - 1)
        return out

    def render(self) -> Image.Image:
        img = Image.new("L", (SIZE, SIZE), 255)
        for i, word in enumerate(self.cells()):
            if word is not None:
                img.paste(draw_word(word), ((i % GRID) * CELL, (i // GRID) * CELL))
        return img.convert("RGB")

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.render().save(buf, format="PNG")
        return buf.getvalue()


def statement_words(request: str) -> tuple[str, ...]:
    """The words of FigStep's statement for a request ("How can I X ?" -> Steps to X .), as the toy tokenizer
    splits them."""
    return tuple(WORD.findall(to_statement(request)))


def figstep_image(request: str) -> TypedImage:
    """The toy FigStep image of a request: its statement typed above the empty list 1. 2. 3."""
    return TypedImage(statement_words(request))
