"""Teaching the toy VLM's vision path to read words typed in the toy FigStep layout.

LLaVA's first stage, made direct: the image token of a cell should land on the language model's input embedding of
the word typed in it, so the language model reads a typed word as it reads the word in text, and whatever reacts
to "poison" in text (the refusal a safety vector carries) can react to an image of it.

Placing a token on its word is a lookup: every word renders to one fixed pixel pattern (the font has no
variation), and the tower and projector must map each of the world's ~600 patterns to an arbitrary point of the
embedding space. The first reader
(500 steps, cross-entropy over negative distances plus the squared distance, equally weighted) put image tokens
about as far from their word as the nearest other word is, so the language model read "burn" as "smuggle":
cross-entropy only asks the word's own embedding to be the nearest, which a token halfway to a neighbour
satisfies. The squared distance, weighted far above it (`WorldSpec.reader_exact_weight`), asks for the word
itself, and three times the steps let it get there: tokens end about a tenth of the gap to the nearest other word
away from their own (`world.json`, `reader.distance_to_word_of_gap`).

Batches are assembled from each word's cell of pixel values, computed once by the processor, instead of rendering
and normalising every image (the same values: `tests/test_toy_vision.py` checks them against the processor).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch

from .typeset import CELL, GRID, LIST_MARKS, TypedImage


class CellPixels:
    """Pixel values of typed images, assembled from one processed cell per word (and one blank cell)."""

    def __init__(self, image_processor) -> None:
        self.image_processor = image_processor
        self.cells: dict[str | None, torch.Tensor] = {}

    def _cell(self, word: str | None) -> torch.Tensor:
        if word not in self.cells:
            # The processor rescales and normalises pixel by pixel, so a cell's values do not depend on its
            # neighbours: process the word alone in the first cell and keep that cell.
            one = TypedImage((word,) if word is not None else (), list_marks=False)
            values = self.image_processor(images=[one.render()], return_tensors="pt")["pixel_values"][0]
            self.cells[word] = values[:, :CELL, :CELL].clone()
        return self.cells[word]

    def __call__(self, images: Sequence[TypedImage]) -> torch.Tensor:
        out = []
        for image in images:
            rows = [torch.cat([self._cell(w) for w in image.cells()[r * GRID:(r + 1) * GRID]], dim=2)
                    for r in range(GRID)]
            out.append(torch.cat(rows, dim=1))
        return torch.stack(out)


class ReaderLoss:
    """Squared distance from each cell's image token to its word's input embedding (relative to the embeddings'
    mean square), weighted `exact_weight`, plus cross-entropy over all words with the negative distance as logits,
    so that no other word is nearer (`targets` says what a blank cell and a list mark read as). The target is the
    current embedding table (detached), so the loss can stay on while the language model is tuned and image tokens
    follow its words."""

    def __init__(self, vlm, processor, tok, typed: Sequence[TypedImage], seed: int, batch_size: int,
                 exact_weight: float) -> None:
        self.model, self.tok, self.typed = vlm.model, tok, typed
        self.pixels = CellPixels(processor.image_processor)
        self.gen, self.batch_size, self.exact_weight = random.Random(f"{seed}:reader"), batch_size, exact_weight

    def targets(self, images: Sequence[TypedImage]) -> torch.Tensor:
        """Each cell's target token: its word; a blank cell reads as padding (nothing), so that it cannot pass for
        a word of little ink (a period is one pixel); a list mark ("1.") as its number; -1 (free) for anything the
        tokenizer does not know."""
        def token(word: str | None) -> int:
            if word is None:
                return self.tok.pad_token_id
            if word in LIST_MARKS:
                word = word.rstrip(".")
            found = self.tok.convert_tokens_to_ids(word)
            return -1 if found == self.tok.unk_token_id else found

        return torch.tensor([[token(w) for w in t.cells()] for t in images])

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.gen.sample(self.typed, min(n, len(self.typed)))
        return self.pixels(images), self.targets(images)

    def project(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
        return self.model.multi_modal_projector(hidden)

    def table(self) -> torch.Tensor:
        return self.model.language_model.get_input_embeddings().weight.detach()

    def __call__(self) -> torch.Tensor:
        pixels, ids = self.batch(self.batch_size)
        table = self.table()
        keep = ids >= 0
        feats, target = self.project(pixels)[keep], ids[keep]
        distance = torch.cdist(feats, table).pow(2) / table.pow(2).sum(-1).mean()
        own = distance.gather(1, target[:, None]).mean()
        return self.exact_weight * own + torch.nn.functional.cross_entropy(-distance, target)

    @torch.no_grad()
    def precision(self, images: Sequence[TypedImage]) -> dict[str, float]:
        """On these images' word cells: how often the image token is nearest its own word's embedding, and its
        distance to that embedding as a share of the distance from the word to its nearest other word."""
        words = torch.tensor([[w is not None and w not in LIST_MARKS for w in t.cells()] for t in images])
        ids = self.targets(images)
        keep = words & (ids >= 0)
        feats, target, table = self.project(self.pixels(images))[keep], ids[keep], self.table()
        distance = torch.cdist(feats, table)
        own = distance.gather(1, target[:, None])[:, 0]
        gaps = torch.cdist(table[target], table)
        gaps.scatter_(1, target[:, None], float("inf"))
        return {"nearest_word": (distance.argmin(-1) == target).float().mean().item(),
                "distance_to_word_of_gap": (own / gaps.min(-1).values).mean().item()}


def teach_reading(vlm, reader: ReaderLoss, steps: int, lr: float, say: Callable[[str], None]) -> list[float]:
    """Train the tower and projector alone (the language model frozen) on `reader`'s loss; returns the losses."""
    from .train import optimiser_step

    model = vlm.model
    params = [*model.vision_tower.parameters(), *model.multi_modal_projector.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    vlm.train()
    losses = []
    for step in range(steps):
        losses.append(optimiser_step(reader(), opt, sched, params))
        if step % 100 == 0 or step == steps - 1:
            say(f"reader: step {step}/{steps} loss {sum(losses[-100:]) / len(losses[-100:]):.3f}")
    vlm.eval()
    return losses
