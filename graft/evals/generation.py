"""One loaded model, two jobs: batched greedy generation and log-likelihood of continuations.

Generation: chat template from the model folder, left padding, length-sorted batches, images through the
processor, a `max_new_tokens` cap, greedy decoding with a fresh `GenerationConfig` (the folder's sampling
defaults are ignored, so results are deterministic). Log-likelihood follows lm-eval's HFLM exactly (pair
encoding, right padding, no attention mask), so multiple-choice scores equal lm-eval's on the same model.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import StoppingCriteria

from graft.core.dtypes import ALIASES, CAST_NAMES, torch_dtype_named
from graft.errors import IncompatibleError, InputError, UsageError
from graft.io.devices import resolve_device
from graft.schema import load_json_file

from . import llava_med
from .backend import Generation, Request
from .vlm_inputs import load_processor


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":  # bf16 where it is fast, fp32 on CPU (bf16 matmuls there are slow and lossy)
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if ALIASES.get(dtype, dtype) not in CAST_NAMES:
        raise UsageError(f"--dtype {dtype}: expected auto, float32, bfloat16 or float16")
    return torch_dtype_named(dtype)


class _StopWhen(StoppingCriteria):
    """Per-row early stop on the decoded reply so far; remembers how many tokens each row had then."""

    def __init__(self, tokenizer, prompt_len: int, predicate: Callable[[str], bool]):
        self.tokenizer, self.prompt_len, self.predicate = tokenizer, prompt_len, predicate
        self.stopped_at: dict[int, int] = {}

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        rows = [r for r in range(input_ids.shape[0]) if r not in self.stopped_at]
        if rows:
            new = input_ids[rows, self.prompt_len:].tolist()
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)  # one call: the Rust side batches
            for r, ids, text in zip(rows, new, texts, strict=True):
                if self.predicate(text):
                    self.stopped_at[r] = len(ids)
        done = [r in self.stopped_at for r in range(input_ids.shape[0])]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFBackend:
    """A model with its tokenizer (and processor for image-text models), ready to generate and score: the
    transformers implementation of graft.evals.backend.GenerationBackend."""

    def __init__(self, model, tokenizer, processor=None, batch_size: int = 8, name: str = "in-memory"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor
        self.batch_size = batch_size
        self.name = name
        if tokenizer.pad_token_id is None:
            # Pad id only fills masked positions; eos is the usual choice for models shipped without one.
            tokenizer.pad_token = tokenizer.eos_token
        self.has_chat_template = bool(getattr(processor or tokenizer, "chat_template", None))

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, device: str = "auto", dtype: str = "auto", batch_size: int | None = None,
             trust_remote_code: bool = False, text_only: bool = False) -> HFBackend:
        """Model, tokenizer and (image-text models) processor from one folder: the one place graft loads a model.

        `text_only` skips the processor of an image-text model (text prompts work, image prompts are refused), for
        text-only evaluation or a folder whose processor cannot be loaded.
        """
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        from graft.io.checkpoint import Checkpoint
        from graft.io.hub import resolve_model
        from graft.regular_files import containment_root

        path = resolve_model(path, role="model")
        if not path.is_dir():
            raise InputError(f"{path}: the model must be a model folder, not a file")
        config_file = path / "config.json"
        if not os.path.lexists(config_file):
            raise InputError(f"{path}: no config.json (expected a Hugging Face model folder)")
        # graft's own header check first: pickled-only weights, FIFOs, links out of the folder and corrupt shards are
        # refused here, in one line, before transformers sees the folder (which would unpickle a .bin).
        Checkpoint.open(path, role="model").close()
        config = load_json_file(config_file, "config.json", within=containment_root(path))
        if not isinstance(config, dict):
            raise InputError(f"{config_file}: must be a JSON object of settings, got a {type(config).__name__}")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        # On CUDA, load straight onto the device (no full copy in host memory first).
        placement = {"device_map": str(dev)} if dev.type == "cuda" else {}
        if llava_med.is_original_llava(config):
            model, tokenizer, processor = llava_med.load(path, config, dtype=dt, placement=placement,
                                                         text_only=text_only)
            model.to(dev)
            return cls(model, tokenizer, processor, batch_size=batch_size or (32 if dev.type == "cuda" else 8),
                       name=str(path))
        multimodal = "vision_config" in config
        auto = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
        try:
            model = auto.from_pretrained(path, dtype=dt, trust_remote_code=trust_remote_code, use_safetensors=True,
                                         **placement)
        except ValueError as e:
            arch = ", ".join(config.get("architectures") or ["unknown"])
            raise IncompatibleError(
                f"{path}: {arch} cannot be loaded with {auto.__name__} ({str(e).splitlines()[0]})"
            ) from e
        model.to(dev)
        processor = load_processor(path, config, trust_remote_code) if multimodal and not text_only else None
        tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code)
        if batch_size is None:
            batch_size = 32 if dev.type == "cuda" else 8
        return cls(model, tokenizer, processor, batch_size=batch_size, name=str(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_multimodal(self) -> bool:
        return self.processor is not None and getattr(self.processor, "image_processor", None) is not None

    def describe(self) -> dict:
        """What results.json records about the model (GenerationBackend.describe)."""
        return {"path": self.name, "class": type(self.model).__name__,
                "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
                "device": str(self.device), "multimodal": self.is_multimodal, "chat_template": self.has_chat_template}

    def fingerprint(self) -> str:
        """Content hash of the weights (names, dtypes, shapes, bytes): the key for cached verdicts."""
        h = hashlib.blake2b(digest_size=16)
        for name, t in sorted(self.model.state_dict().items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.detach().contiguous().view(-1).view(torch.uint8).cpu().numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ prompts
    def _chat_text(self, req: Request) -> str:
        owner = self.processor if self.is_multimodal else self.tokenizer
        if req.raw:
            return req.prompt
        if not self.has_chat_template:
            return f"{req.system}\n\n{req.prompt}" if req.system else req.prompt
        if self.is_multimodal:
            content = ([{"type": "image"}] if req.image is not None else []) + [{"type": "text", "text": req.prompt}]
            system = [{"type": "text", "text": req.system}] if req.system else None
        else:
            content, system = req.prompt, req.system
        turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        return owner.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)

    def _encode_batch(self, reqs: Sequence[Request]) -> dict[str, torch.Tensor]:
        texts = [self._chat_text(r) for r in reqs]
        images = [r.image for r in reqs if r.image is not None]
        if images and not self.is_multimodal:
            raise IncompatibleError(f"{self.name}: a text-only model cannot take image prompts")
        self.tokenizer.padding_side = "left"
        # A chat template writes its own BOS; plain prompts get the tokenizer's special tokens.
        special = not self.has_chat_template and not any(r.raw for r in reqs)
        if self.is_multimodal:
            self.processor.tokenizer.padding_side = "left"
            enc = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt",
                                 add_special_tokens=special)
        else:
            enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=special)
        dtype = next(self.model.parameters()).dtype
        # Pixel values follow the model's dtype (bf16 on GPU); ids and masks keep theirs.
        return {k: v.to(self.device, dtype=dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in enc.items()}

    # ------------------------------------------------------------------ generation
    @torch.inference_mode()
    def generate(self, requests: Sequence[Request], max_new_tokens: int = 64, batch_size: int | None = None,
                 stop_when: Callable[[str], bool] | None = None) -> list[Generation]:
        """Greedy replies, in the order of `requests`. Batches are sorted by prompt length to limit padding.

        `stop_when(reply_so_far)` ends a reply early once it returns True (checked after every token); a batch
        ends when all its replies have. The keyword judge uses it: once a refusal phrase appears the verdict
        cannot change, so the rest of the reply need not be generated.
        """
        from transformers import GenerationConfig, StoppingCriteriaList

        if max_new_tokens < 1:
            raise UsageError("--max-new-tokens must be at least 1")
        bs = batch_size or self.batch_size
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        gen_config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos)
        # Group image and text prompts apart (processors want a consistent batch), longest first.
        order = sorted(range(len(requests)),
                       key=lambda i: (requests[i].image is not None, -len(requests[i].prompt), i))
        out: list[Generation | None] = [None] * len(requests)
        start = 0
        while start < len(order):
            has_image = requests[order[start]].image is not None
            chunk = []
            while start < len(order) and len(chunk) < bs and (requests[order[start]].image is not None) == has_image:
                chunk.append(order[start])
                start += 1
            enc = self._encode_batch([requests[i] for i in chunk])
            prompt_len = enc["input_ids"].shape[1]
            stop = _StopWhen(self.tokenizer, prompt_len, stop_when) if stop_when else None
            seqs = self.model.generate(**enc, generation_config=gen_config,
                                       stopping_criteria=StoppingCriteriaList([stop]) if stop else None)
            new = seqs[:, prompt_len:].tolist()
            for row, (i, toks) in enumerate(zip(chunk, new, strict=True)):
                cut = next((j + 1 for j, t in enumerate(toks) if t in eos_ids), len(toks))
                if stop is not None and row in stop.stopped_at:
                    cut = min(cut, stop.stopped_at[row])
                text = self.tokenizer.decode(toks[:cut], skip_special_tokens=True)
                out[i] = Generation(text=text.strip(), n_tokens=cut)
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ log-likelihood (lm-eval HFLM semantics)
    def _tok_encode(self, text: str) -> list[int]:
        tok = self.tokenizer
        bos = tok.bos_token
        special = not (bos and text.startswith(bos))  # HFLM: no second BOS when the string has one
        return tok.encode(text, add_special_tokens=special)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self._tok_encode(context + continuation)
        ctx = self._tok_encode(context)
        return ctx, whole[len(ctx):]

    def max_length(self) -> int:
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        for attr in ("max_position_embeddings", "n_positions", "seq_length"):
            if getattr(cfg, attr, None):
                return int(getattr(cfg, attr))
        return 2048

    @torch.inference_mode()
    def loglikelihood(self, pairs: Sequence[tuple[str, str]], batch_size: int | None = None
                      ) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy one) for each pair."""
        bs = batch_size or self.batch_size
        max_len = self.max_length()
        encoded = []
        for ctx, cont in pairs:
            if not ctx:  # HFLM's prefix token: BOS when there is one, else EOS
                prefix = self.tokenizer.bos_token_id
                c_enc = [prefix if prefix is not None else self.tokenizer.eos_token_id]
                k_enc = self._tok_encode(cont)
            else:
                c_enc, k_enc = self.encode_pair(ctx, cont)
            if not k_enc:
                raise UsageError(f"continuation {cont!r} encodes to no tokens")
            inp = (c_enc + k_enc)[-(max_len + 1):][:-1]
            encoded.append((tuple(inp), k_enc))
        # One forward per distinct input: options that differ only in their last token share it.
        uniq = sorted({inp for inp, _ in encoded}, key=lambda t: (-len(t), t))
        logprobs: dict[tuple[int, ...], torch.Tensor] = {}
        need: dict[tuple[int, ...], int] = {}
        for inp, k_enc in encoded:
            need[inp] = max(need.get(inp, 0), len(k_enc))
        for s in range(0, len(uniq), bs):
            chunk = uniq[s:s + bs]
            width = len(chunk[0])
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, inp in enumerate(chunk):
                ids[r, :len(inp)] = torch.tensor(inp)
            # Right padding and no mask (as HFLM): real positions never attend to the padding on their right.
            keep = width - min(len(inp) - need[inp] for inp in chunk)
            try:
                logits = self.model(input_ids=ids.to(self.device), logits_to_keep=keep).logits
            except TypeError:  # a model class without `logits_to_keep`: keep every position
                keep = width
                logits = self.model(input_ids=ids.to(self.device)).logits
            lp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for r, inp in enumerate(chunk):
                n = need[inp]
                end = len(inp) - (width - keep)
                logprobs[inp] = lp[r, end - n:end]  # the last n real positions
        results = []
        for inp, k_enc in encoded:
            rows = logprobs[inp][-len(k_enc):]
            target = torch.tensor(k_enc)
            total = rows.gather(1, target[:, None]).sum().item()
            greedy = bool((rows.argmax(-1) == target).all())
            results.append((total, greedy))
        return results



def __getattr__(name: str):
    # `Engine` was this class's name until 0.1 (it clashed with the graft.engines package): kept for one release.
    if name == "Engine":
        warnings.warn("graft.evals.generation.Engine is now HFBackend (graft.evals.HFBackend); the old name goes in "
                      "the next release", DeprecationWarning, stacklevel=2)
        return HFBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
