"""Synthetic "scans" for the toy VQA-RAD: a body outline with two lung fields and at most one lesion.

A lesion has a side (left/right of the image), a shape (circle/square/triangle) and a size (small/large); the
questions are VQA-RAD's two kinds: closed (yes/no) and open (one word).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE = 48  # pixels; the processor scales a scan up to the tower's 120 x 120 (6 x 6 patches)


@dataclass(frozen=True)
class Scan:
    side: str | None  # None: a normal scan
    shape: str = "circle"
    size: str = "small"
    dx: int = 0  # jitter of the lesion centre, pixels
    dy: int = 0
    noise_seed: int = 0

    def render(self) -> Image.Image:
        img = Image.new("L", (SIZE, SIZE), 20)
        draw = ImageDraw.Draw(img)
        draw.ellipse((3, 2, SIZE - 4, SIZE - 3), fill=90)  # body
        draw.ellipse((7, 8, SIZE // 2 - 3, SIZE - 9), fill=45)  # left lung field
        draw.ellipse((SIZE // 2 + 2, 8, SIZE - 8, SIZE - 9), fill=45)  # right lung field
        if self.side is not None:
            cx = (SIZE // 4 + 1 if self.side == "left" else 3 * SIZE // 4 - 1) + self.dx
            cy = SIZE // 2 + self.dy
            r = 4 if self.size == "small" else 8
            box = (cx - r, cy - r, cx + r, cy + r)
            if self.shape == "circle":
                draw.ellipse(box, fill=230)
            elif self.shape == "square":
                draw.rectangle(box, fill=230)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=230)
        rng = random.Random(self.noise_seed)
        px = img.load()
        for _ in range(60):  # speckle, so no two scans are identical
            x, y = rng.randrange(SIZE), rng.randrange(SIZE)
            px[x, y] = max(0, min(255, px[x, y] + rng.choice((-25, 25))))
        return img.convert("RGB")

    def png(self) -> bytes:
        buf = io.BytesIO()
        self.render().save(buf, format="PNG")
        return buf.getvalue()


def random_scan(rng: random.Random) -> Scan:
    if rng.random() < 0.2:
        return Scan(None, noise_seed=rng.randrange(1 << 30))
    return Scan(rng.choice(("left", "right")), rng.choice(("circle", "square", "triangle")),
                rng.choice(("small", "large")), rng.randint(-2, 2), rng.randint(-3, 3), rng.randrange(1 << 30))


def scan_questions(scan: Scan) -> list[tuple[str, str, str]]:
    """(question, answer, closed|open) pairs this scan answers."""
    yes = scan.side is not None
    out = [("Is there a lesion in this scan ?", "yes" if yes else "no", "closed"),
           ("Is this scan normal ?", "no" if yes else "yes", "closed")]
    if yes:
        other = "right" if scan.side == "left" else "left"
        out += [(f"Is the lesion on the {scan.side} side ?", "yes", "closed"),
                (f"Is the lesion on the {other} side ?", "no", "closed"),
                ("Is the lesion large ?", "yes" if scan.size == "large" else "no", "closed"),
                ("Which side is the lesion on ?", scan.side, "open"),
                ("What shape is the lesion ?", scan.shape, "open"),
                ("What size is the lesion ?", scan.size, "open")]
    return out
