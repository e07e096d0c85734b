"""The seam under the evaluation suite: what `evaluate`, its tasks, the guard judge and the search's resident graft
ask of a loaded model. `graft.evals.generation.HFBackend` (transformers, batched) is the one implementation; the
suite and the search talk to it only through this protocol. docs/architecture.md states the contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass(frozen=True)
class Request:
    """A single-turn user message, optionally with one image."""

    prompt: str
    image: Image.Image | None = None
    raw: bool = False  # prompt is already formatted (e.g. a guard model's own template): send as is
    system: str | None = None  # optional system turn before the user turn


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int  # generated tokens, up to and including the first end-of-sequence token


@runtime_checkable
class GenerationBackend(Protocol):
    """A loaded model that answers and scores prompts.

    - `generate`: one greedy reply per request, in request order, each at most `max_new_tokens` tokens;
      `stop_when(reply_so_far)` may end a reply early (the reply then ends where it first returned True).
    - `loglikelihood`: for each (context, continuation), the summed log-probability of the continuation's tokens
      after the context and whether greedy decoding would produce exactly them (lm-eval's contract).
    - `fingerprint`: a content hash of the weights as they are now (the verdict cache's key when no cheaper
      identity is given).
    - `describe`: what results.json's `model` records (path, class, dtype, device, multimodal, chat_template).
    - `model`: the live `torch.nn.Module`. The resident graft writes grafted parameters into its tensors in place
      between calls; a backend must read its weights from those tensors on every call (no copy it keeps, no
      cache of anything computed from the weights across calls), so the next call sees the new weights.
    """

    name: str
    batch_size: int
    model: torch.nn.Module

    @property
    def is_multimodal(self) -> bool: ...

    @property
    def has_chat_template(self) -> bool: ...

    @property
    def device(self) -> torch.device: ...

    def generate(self, requests: Sequence[Request], max_new_tokens: int = 64, batch_size: int | None = None,
                 stop_when: Callable[[str], bool] | None = None) -> list[Generation]: ...

    def loglikelihood(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None
                      ) -> list[tuple[float, bool]]: ...

    def fingerprint(self) -> str: ...

    def describe(self) -> dict: ...


__all__ = ["GenerationBackend"]
