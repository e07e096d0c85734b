"""Supervised training for the toy world: loss on the answer tokens only, AdamW, one seeded generator.

Examples are encoded once (chat examples through the tokenizer's chat template, image examples through the LLaVA
processor, which expands `<image>` into the patch tokens) and batched with right padding.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .corpus import Example

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None = None  # (3, H, W)


def _chat_prefix(tokenizer, prompt: str, image: bool) -> str:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": prompt}]
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


def encode(examples: Sequence[Example], tokenizer, processor=None) -> list[Encoded]:
    """Token ids with labels masked to the target (plus the end-of-turn token for chat examples)."""
    out = []
    for ex in examples:
        if ex.chat:
            prefix = _chat_prefix(tokenizer, ex.prompt, ex.image is not None)
            target = f"{ex.target} {tokenizer.eos_token}"
        else:
            prefix, target = ex.prompt, ex.target
        pixel = None
        if ex.image is not None:
            enc = processor(text=[prefix], images=[ex.image.render()], return_tensors="pt")
            prefix_ids = enc["input_ids"][0].tolist()
            pixel = enc["pixel_values"][0]
        else:
            prefix_ids = tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []
        target_ids = tokenizer(" " + target, add_special_tokens=False).input_ids
        out.append(Encoded(prefix_ids + target_ids, [IGNORE] * len(prefix_ids) + target_ids, pixel))
    return out


def train(model: torch.nn.Module, data: Sequence[Encoded], *, steps: int, lr: float, batch_size: int, seed: int,
          pad_id: int, trainable: Callable[[str], bool] | None = None, warmup: int = 20, decay: bool = True,
          auxiliary: Callable[[], torch.Tensor] | None = None,
          log: Callable[[int, float], None] | None = None) -> list[float]:
    """Train in place for `steps` steps (warmup, then a cosine decay to 0, or a constant rate when `decay` is
    off); returns the loss of every step. `auxiliary`, when given, is a second loss added at every step (the
    reader's alignment, kept while the VLM is tuned)."""
    gen = random.Random(seed)
    params = [p for n, p in model.named_parameters() if trainable is None or trainable(n)]
    for n, p in model.named_parameters():
        p.requires_grad_(trainable is None or trainable(n))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
                                                     if decay else 1.0))
    model.train()
    losses = []
    batches: list[list[int]] = []
    for step in range(steps):
        if not batches:
            batches = _length_buckets(data, batch_size, gen)
        batch = [data[i] for i in batches.pop()]
        loss = model(**_collate(batch, pad_id)).loss
        if auxiliary is not None:
            loss = loss + auxiliary()
        losses.append(optimiser_step(loss, opt, sched, params))
        if log and (step % 50 == 0 or step == steps - 1):
            log(step, sum(losses[-50:]) / len(losses[-50:]))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


def optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer, sched, params: Sequence[torch.Tensor]) -> float:
    """One clipped step (gradient norm 1) and a scheduler step; returns the loss. Every toy stage steps this way."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    return loss.item()


def _length_buckets(data: Sequence[Encoded], batch_size: int, gen: random.Random, window: int = 16
                    ) -> list[list[int]]:
    """One epoch of batches: shuffle, sort each window of `window` batches by length, cut, shuffle the batches.
    Examples of similar length share a batch, so short ones are not padded to a long neighbour's length (the
    toy's sequences run from a few tokens to a typed image's 36 patches plus a prompt)."""
    order = list(range(len(data)))
    gen.shuffle(order)
    span = batch_size * window
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: len(data[i].input_ids))
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    gen.shuffle(batches)
    return batches


def _collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, e in enumerate(batch):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids)
        labels[r, :n] = torch.tensor(e.labels)
        mask[r, :n] = 1
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    pixels = [e.pixel_values for e in batch if e.pixel_values is not None]
    if pixels:
        out["pixel_values"] = torch.stack(pixels)
    return out
