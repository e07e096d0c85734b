"""Benchmark of the evaluation engine, all measured in one run on the same model and items:

- generation (the safety path, keyword-judge cap): graft's batched engine (with and without the keyword
  judge's stop at the first refusal phrase) vs a plain per-prompt `model.generate` loop vs lm-eval's
  HFLM.generate_until; items/s and generated tokens/s;
- multiple-choice log-likelihood (PubMedQA + MedQA prompts): graft vs lm-eval's HFLM.loglikelihood; items/s.

It also checks that the three generation paths produce the same replies and that the log-likelihoods agree.

    python bench/eval.py                                   # a random 4-layer Llama (hidden 256) built on the fly
    python bench/eval.py --model /models/Qwen2-7B-Instruct --device cuda --n 256 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import torch

from graft.evals import HFBackend, Request, fixture_data
from graft.evals.benchmarks import BENCHMARKS
from graft.evals.judges import KeywordJudge
from graft.evals.scoring import mc_context, mc_targets


def build_toy_model(folder: Path, hidden: int, layers: int, seed: int) -> Path:
    """A random Llama with a word-level tokenizer over the fixtures and a chat template (no downloads)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from graft.evals.config import FIXTURES

    special = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
    files = [p for p in FIXTURES.rglob("*") if p.suffix in (".json", ".csv", ".jsonl")]
    text = " ".join(p.read_text(errors="ignore") for p in files)
    words = sorted(set(re.findall(r"\w+|[^\w\s]+", text.lower())) - set(special))
    vocab = {w: i for i, w in enumerate(special + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=special[4:])
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
                         "{% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}")
    torch.manual_seed(seed)  # seed for the benchmark model's random weights
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      num_key_value_heads=max(1, hidden // 128), max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def safety_prompts(data, n: int) -> list[str]:
    base = [it.prompt for name in ("catqa", "hexphi", "medsafetybench")
            for it in BENCHMARKS[name].load(data.source(name))]
    return [base[i % len(base)] + ("" if i < len(base) else f" (variant {i // len(base)})") for i in range(n)]


def mc_pairs(data, n: int) -> tuple[list[tuple[str, str]], int]:
    items = [it for name in ("pubmedqa", "medqa") for it in BENCHMARKS[name].load(data.source(name))]
    items = [items[i % len(items)] for i in range(n)]
    pairs = []
    for i, it in enumerate(items):
        ctx = mc_context(it) if i < len(set(items)) else mc_context(it).replace("Question:", f"Question ({i}):")
        pairs += [(ctx, " " + t) for t in mc_targets(it)]
    return pairs, len(items)


def timed(fn):
    """(result, wall time); each path is warmed up before it is timed."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def same(gens, texts: list[str]) -> float:
    """Share of prompts where two paths produced the same reply text."""
    return sum(g.text == t for g, t in zip(gens, texts, strict=True)) / len(texts)


def per_prompt_loop(engine: HFBackend, prompts: list[str], cap: int) -> list[tuple[str, int]]:
    tok, model = engine.tokenizer, engine.model
    eos = tok.eos_token_id
    out = []
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False).to(engine.device)
        seq = model.generate(**ids, max_new_tokens=cap, do_sample=False, pad_token_id=tok.pad_token_id)
        new = seq[0, ids["input_ids"].shape[1]:].tolist()
        cut = new.index(eos) + 1 if eos in new else len(new)
        out.append((tok.decode(new[:cut], skip_special_tokens=True).strip(), cut))
    return out


def lm_eval_generate(lm, engine: HFBackend, prompts: list[str], cap: int) -> list[str]:
    from lm_eval.api.instance import Instance

    tok = engine.tokenizer
    reqs = []
    for i, p in enumerate(prompts):
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        reqs.append(Instance("generate_until", {}, (text, {"until": [tok.eos_token], "max_gen_toks": cap,
                                                            "do_sample": False}), i))
    return [s.strip() for s in lm.generate_until(reqs, disable_tqdm=True)]


def lm_eval_loglik(lm, pairs):
    from lm_eval.api.instance import Instance

    reqs = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    return lm.loglikelihood(reqs, disable_tqdm=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model folder (default: a random toy Llama built on the fly)")
    ap.add_argument("--data", type=Path, help="data.yaml (default: the shipped fixtures, repeated to --n)")
    ap.add_argument("--n", type=int, default=48, help="generation prompts (and MC items)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--toy-hidden", type=int, default=256)
    ap.add_argument("--toy-layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1, help="timings per path (interleaved); best kept")
    ap.add_argument("--skip-loop", action="store_true", help="skip the per-prompt loop (slow on big models)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from lm_eval.models.huggingface import HFLM

    from graft.evals.config import DataConfig

    tmp = tempfile.TemporaryDirectory()
    model_path = args.model or build_toy_model(Path(tmp.name), args.toy_hidden, args.toy_layers, seed=0)
    data = DataConfig.from_yaml(args.data) if args.data else fixture_data()
    engine = HFBackend.load(model_path, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    prompts = safety_prompts(data, args.n)
    cap = args.max_new_tokens
    lm = HFLM(pretrained=engine.model, tokenizer=engine.tokenizer, batch_size=args.batch_size,
              max_length=engine.max_length())
    # Warm every path up on one batch first: first calls pay one-off kernel and allocator costs.
    warm = prompts[: args.batch_size]
    engine.generate([Request(p) for p in warm], max_new_tokens=cap)
    lm_eval_generate(lm, engine, warm, cap)
    if not args.skip_loop:
        per_prompt_loop(engine, warm[:2], cap)
    pairs, n_items = mc_pairs(data, args.n)
    engine.loglikelihood(pairs[: 4 * args.batch_size])
    lm_eval_loglik(lm, pairs[: 4 * args.batch_size])

    kw = KeywordJudge()
    paths = {
        "generate: graft batched": lambda: engine.generate([Request(p) for p in prompts], max_new_tokens=cap),
        "generate: graft batched + refusal stop": lambda: engine.generate(
            [Request(p) for p in prompts], max_new_tokens=cap, stop_when=lambda t: kw.phrase(t) is not None),
        "generate: per-prompt loop": lambda: per_prompt_loop(engine, prompts, cap),
        "generate: lm-eval generate_until": lambda: lm_eval_generate(lm, engine, prompts, cap),
        "loglik: graft": lambda: engine.loglikelihood(pairs),
        "loglik: lm-eval HFLM": lambda: lm_eval_loglik(lm, pairs),
    }
    if args.skip_loop:
        del paths["generate: per-prompt loop"]
    # Interleave the repeats (A B C A B C ...) so load from other processes hits every path alike.
    outputs, best = {}, dict.fromkeys(paths, float("inf"))
    for _ in range(args.repeats):
        for name, fn in paths.items():
            outputs[name], t = timed(fn)
            best[name] = min(best[name], t)

    gens = outputs["generate: graft batched"]
    rows = {name: {"seconds": t, "items_per_s": (n_items if name.startswith("loglik") else len(prompts)) / t}
            for name, t in best.items()}
    for name in ("generate: graft batched", "generate: graft batched + refusal stop"):
        rows[name]["tokens_per_s"] = sum(g.n_tokens for g in outputs[name]) / best[name]
    fast = outputs["generate: graft batched + refusal stop"]
    rows["generate: graft batched + refusal stop"]["same_verdicts"] = sum(
        (kw.refusal(a.text) is None) == (kw.refusal(b.text) is None) for a, b in zip(gens, fast, strict=True)
    ) / len(prompts)
    if "generate: per-prompt loop" in outputs:
        loop = outputs["generate: per-prompt loop"]
        rows["generate: per-prompt loop"]["tokens_per_s"] = sum(n for _, n in loop) / best["generate: per-prompt loop"]
        rows["generate: per-prompt loop"]["same_replies"] = same(gens, [b for b, _ in loop])
    rows["generate: lm-eval generate_until"]["same_replies"] = same(gens, outputs["generate: lm-eval generate_until"])
    ours, theirs = outputs["loglik: graft"], outputs["loglik: lm-eval HFLM"]
    rows["loglik: lm-eval HFLM"]["max_abs_diff_vs_graft"] = max(
        abs(a - b) for (a, _), (b, _) in zip(ours, theirs, strict=True))

    dev = torch.cuda.get_device_name() if engine.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model: {model_path} ({type(engine.model).__name__}, {sum(p.numel() for p in engine.model.parameters()):,}"
          f" params, {next(engine.model.parameters()).dtype}) on {dev}")
    print(f"{len(prompts)} generation prompts, max_new_tokens={cap}, batch_size={args.batch_size}; "
          f"{n_items} MC items ({len(pairs)} option continuations)")
    for name, r in rows.items():
        extra = "  ".join(f"{k}={v:.3g}" for k, v in r.items() if k not in ("seconds", "items_per_s", "tokens_per_s"))
        tps = f"{r['tokens_per_s']:9.1f} tok/s" if "tokens_per_s" in r else " " * 15
        print(f"{name:40s} {r['seconds']:8.2f} s  {r['items_per_s']:8.2f} items/s  {tps}  {extra}")
    g = rows["generate: graft batched"]["items_per_s"]
    if "generate: per-prompt loop" in rows:
        print(f"batched / per-prompt loop: {g / rows['generate: per-prompt loop']['items_per_s']:.2f}x")
    print(f"batched / lm-eval generate_until: {g / rows['generate: lm-eval generate_until']['items_per_s']:.2f}x")
    ratio = rows["loglik: graft"]["items_per_s"] / rows["loglik: lm-eval HFLM"]["items_per_s"]
    print(f"loglik graft / lm-eval: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"device": dev, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
