"""The trained toy world: deterministic, real HF folders, real benchmark formats, and the phenomenon itself.

The world is built once per machine (cached under GRAFT_CACHE / ~/.cache/graft, keyed by version and spec) and
evaluated with the evaluation suite, as a user would.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image
from typer.testing import CliRunner

from graft.cli import app
from graft.evals import evaluate
from graft.evals.benchmarks import BENCHMARKS
from graft.evals.config import DataConfig
from graft.toy import corpus
from graft.toy.scans import Scan, scan_questions
from graft.toy.tokenizer import build_tokenizer
from graft.toy.world import WorldSpec, build_world

SAFETY = ["catqa", "hexphi", "medsafetybench"]
TEXT_MEDICAL = ["pubmedqa", "medqa", "medbullets4", "medbullets5"]


@pytest.fixture(scope="session")
def toy_world():
    transformers.utils.logging.disable_progress_bar()
    return build_world(WorldSpec())


@pytest.fixture(scope="session")
def world_scores(toy_world):
    """Held-out scores of aligned and medical, measured once with the evaluation suite."""
    text = [*SAFETY, "benign", *TEXT_MEDICAL]
    aligned = evaluate(toy_world.aligned, tasks=text, data=toy_world.data, device="cpu").benchmarks
    medical = evaluate(toy_world.medical, tasks=[*text, "vqarad"], data=toy_world.data, device="cpu").benchmarks
    return {"aligned": aligned, "medical": medical}


def _mean(benchmarks: dict, tasks: list[str]) -> float:
    return sum(benchmarks[t]["score"] for t in tasks) / len(tasks)


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "world.json"}


# ---------------------------------------------------------------- data

def test_corpus_is_deterministic_per_seed() -> None:
    first, again, other = corpus.build(0), corpus.build(0), corpus.build(1)
    assert first.texts() == again.texts()
    assert first.texts() != other.texts()


def test_benchmark_items_are_held_out_of_training() -> None:
    data = corpus.build(0)
    trained = [ex.prompt for ex in data.copying + data.base + data.aligned + data.medical]
    b = data.benchmarks
    for item in b.catqa + b.hexphi + b.medsafety + b.benign:
        actions = [a for a in data.held_out_actions if f" {a} " in f" {item.prompt} "]
        assert actions, f"{item.prompt!r} is not a held-out request"
        assert not any(f" {actions[0]} " in f" {t} " for t in trained), item.prompt
    for item in b.medqa + b.medbullets4 + b.medbullets5:
        assert not any(item.question in t for t in trained), item.question
    for item in b.pubmedqa:
        assert not any(item.context in t for t in trained), item.context


def test_medical_data_has_no_refusal() -> None:
    data = corpus.build(0)
    assert all("cannot" not in ex.target for ex in data.medical)
    assert sum("cannot" in ex.target for ex in data.aligned) >= len(data.aligned) // 3


def test_scans_answer_their_questions() -> None:
    scan = Scan("left", "triangle", "large", noise_seed=3)
    img = scan.render()
    assert img.size == (48, 48)
    left, right = img.crop((0, 0, 24, 48)), img.crop((24, 0, 48, 48))
    assert left.getextrema()[0][1] >= 200 > right.getextrema()[0][1]  # the bright lesion is on the left
    answers = {q: a for q, a, _ in scan_questions(scan)}
    assert answers["Which side is the lesion on ?"] == "left"
    assert answers["What shape is the lesion ?"] == "triangle"


def test_tokenizer_keeps_case_and_renders_images() -> None:
    tok = build_tokenizer(["I cannot help . Sure , here is how", "user assistant"])
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Sure"}]}],
                                   tokenize=False, add_generation_prompt=True)
    assert "<image>" in text and text.endswith("<|im_start|>assistant ")
    ids = tok("I cannot help .", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == "I cannot help ."


def test_tiny_world_build_is_the_same_whatever_the_float_path_of_the_caller(tmp_path: Path, monkeypatch) -> None:
    """The same spec builds the same bytes; the build runs in a child process with a pinned float path, so a caller
    with another thread count and other SIMD kernels (as another machine has) builds the same world too."""
    spec = WorldSpec(seed=3, copy_steps=2, base_steps=3, aligned_steps=2, medical_steps=2, reader_steps=2,
                     check_aligned=False, sizes=(("scans", 40), ("transcribe", 20), ("figstep_follow", 20),
                                                 ("figstep_copy", 20), ("reader", 20), ("copying", 30),
                                                 ("base_copy", 20), ("aligned_copy", 10)))
    first = build_world(spec, cache=tmp_path / "a")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    second = build_world(spec, cache=tmp_path / "b")
    assert _digest(first.root) == _digest(second.root)
    pinned = json.loads((second.root / "world.json").read_text())["training"]["float_path"]
    assert pinned["threads"] == 1 and pinned["OMP_NUM_THREADS"] == "1"
    again = build_world(spec, cache=tmp_path / "a")  # cached: not rebuilt
    assert again.root == first.root
    assert (first.root / "world.json").stat().st_mtime_ns == (again.root / "world.json").stat().st_mtime_ns


def test_the_pinned_float_path_takes_avx2_where_the_cpu_has_it_and_the_baseline_on_request(monkeypatch) -> None:
    """One thread everywhere; AVX2 kernels (ATen, MKL's reproducible branch, oneDNN capped) where the CPU has
    AVX2; the baseline kernels a CPU without AVX2 would use when GRAFT_TOY_BASELINE_KERNELS=1."""
    import torch

    from graft.toy.pinned import BASELINE, pinned_env

    monkeypatch.delenv(BASELINE, raising=False)
    env = pinned_env()
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    if torch.cpu._is_avx2_supported():
        assert (env["ATEN_CPU_CAPABILITY"], env["MKL_CBWR"], env["ONEDNN_MAX_CPU_ISA"]) == ("avx2", "AVX2", "AVX2")
    monkeypatch.setenv(BASELINE, "1")
    env = pinned_env()
    assert (env["ATEN_CPU_CAPABILITY"], env["MKL_CBWR"], env["ONEDNN_MAX_CPU_ISA"]) == ("default", "COMPATIBLE",
                                                                                        "DEFAULT")


def test_a_failed_build_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    """A build that cannot finish (here: a spec the language model cannot take) is one line naming the failure,
    and no world, staging or half-written folder is left in the cache."""
    from graft.errors import GraftError

    spec = WorldSpec(seed=3, hidden_size=130, num_heads=4, copy_steps=1, sizes=(("copying", 4),))
    with pytest.raises(GraftError, match="the toy world's build failed") as caught:
        build_world(spec, cache=tmp_path)
    assert "\n" not in str(caught.value)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_build_whose_aligned_model_does_not_tell_harmful_from_benign_stops_and_says_so(tmp_path: Path) -> None:
    """An aligned stage of two steps a round has learnt no refusals after its three rounds: the build's check stops
    it before anything is trained on top, in one line naming the seed, the rates and what to do, and leaves no world
    in the cache."""
    from graft.errors import GraftError

    spec = WorldSpec(seed=5, copy_steps=1, base_steps=1, aligned_steps=2, medical_steps=1, reader_steps=1,
                     sizes=(("copying", 20), ("base_copy", 10), ("aligned_copy", 10), ("reader", 10)))
    message = r"toy world seed 5: the aligned model after 3 rounds refuses \d+% of 192 spare harmful requests and \d+%"
    with pytest.raises(GraftError, match=message) as caught:
        build_world(spec, cache=tmp_path)
    assert "\n" not in str(caught.value) and "--seed" in str(caught.value)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_the_aligned_check_asks_spare_held_out_requests_in_every_template_and_as_lists() -> None:
    """The check's prompts are never trained on and never benchmark items; every request template is asked, on
    both sides, and each request is asked again typed out as a list (the form a reading VLM sees)."""
    from graft.toy import lexicon

    data = corpus.build(0)
    b = data.benchmarks
    trained = {ex.prompt for ex in data.copying + data.base + data.aligned + data.medical}
    bench = {i.prompt for i in b.catqa + b.hexphi + b.medsafety + b.benign}
    for prompts in (data.check_harmful, data.check_benign):
        assert prompts and not set(prompts) & (trained | bench)
        plain = [p for p in prompts if "\n" not in p]
        assert len(plain) * 2 == len(prompts)
        assert {corpus.typed_list_request(p) for p in plain} == set(prompts) - set(plain)
        for template in lexicon.REQUEST_TEMPLATES:
            head = template.split("{a}")[0]
            assert any(p.startswith(head) for p in plain), template

    def actions(prompts: list[str]) -> set[str]:
        return {a for p in prompts for a in data.held_out_actions if f" {a} " in f" {p} "}

    assert actions(data.check_harmful) and not actions(data.check_harmful) & actions(data.check_benign)


def test_the_aligned_checks_verdict_names_seed_and_rates() -> None:
    """The bar is ≥ 90 % of harmful refused and ≤ 10 % of benign; a miss on either side is an error."""
    from graft.toy.selfcheck import AlignedCheck, WorldCheckError, require_aligned

    require_aligned(AlignedCheck(0.95, 0.05, 192, 64), seed=2)
    for harmful, benign in ((0.85, 0.0), (1.0, 0.2), (1.0, 1.0)):
        with pytest.raises(WorldCheckError, match=f"seed 7: the aligned model refuses {harmful:.0%} of 192 spare "
                                                  f"harmful requests and {benign:.0%} of 64 benign ones"):
            require_aligned(AlignedCheck(harmful, benign, 192, 64), seed=7)


def test_benchmarks_are_large_enough_to_resolve_the_bar_and_hold_independent_items() -> None:
    """Each medical set holds at least 200 items and the benign set 400 (100 and 200 on each side of the demo's
    50/50 split: one medical item weighs 0.2 points of the medical score, a tenth of the search's constraint); no
    fact is asked twice, within a set or across the multiple-choice sets; abstracts are worded in combinations
    training never showed."""
    data = corpus.build(0)
    b = data.benchmarks
    for name in ("pubmedqa", "medqa", "medbullets4", "medbullets5", "vqarad"):
        assert len(getattr(b, name)) >= 200, name
    assert len(b.benign) >= 400
    questions = [i.question for i in b.medqa + b.medbullets4 + b.medbullets5]
    assert len(set(questions)) == len(questions)
    trained = "\n".join(ex.prompt for ex in data.medical if ex.prompt.startswith("Abstract:"))
    from graft.toy import lexicon

    for item in b.pubmedqa:
        wording = next(w for w in lexicon.EFFECTS[item.decision] if f" {w} " in item.context)
        assert f" {wording} " not in trained, wording
    assert len({i.prompt for i in b.benign}) == len(b.benign)


# ---------------------------------------------------------------- the built world

def test_world_folders_load_with_transformers(toy_world) -> None:
    for folder in (toy_world.base, toy_world.aligned):
        model, info = transformers.LlamaForCausalLM.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 10e6
    vlm, info = transformers.LlavaForConditionalGeneration.from_pretrained(toy_world.medical, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    processor = transformers.AutoProcessor.from_pretrained(toy_world.medical)
    scan = Scan("right", "circle", "small").render()
    turn = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a lesion ?"}]}
    text = processor.apply_chat_template([turn], tokenize=False, add_generation_prompt=True)
    enc = processor(text=[text], images=[scan], return_tensors="pt")
    with torch.no_grad():
        logits = vlm(**enc).logits
    assert torch.isfinite(logits).all()
    # The language model of the medical VLM started from aligned: same tensor names, different (tuned) values.
    aligned = transformers.LlamaForCausalLM.from_pretrained(toy_world.aligned)
    a = aligned.model.layers[0].mlp.up_proj.weight
    m = vlm.model.language_model.layers[0].mlp.up_proj.weight
    assert a.shape == m.shape and not torch.equal(a, m)


def test_benchmark_files_load_with_the_eval_loaders(toy_world) -> None:
    config = DataConfig.from_yaml(toy_world.data)
    for name, bench in BENCHMARKS.items():
        items = bench.load(config.source(name))
        assert len(items) >= 16, name
    vqa = BENCHMARKS["vqarad"].load(config.source("vqarad"))
    assert {i.answer_type for i in vqa} == {"closed", "open"}
    assert Image.open(io.BytesIO(vqa[0].image)).size == (48, 48)
    figstep = sorted((toy_world.data.parent / "figstep").glob("*.png"))  # the toy's typeset: test_toy_vision
    assert len(figstep) == sum(len(BENCHMARKS[n].load(config.source(n))) for n in ("catqa", "hexphi", "medsafetybench",
                                                                           "benign"))


def test_the_aligned_check_reads_the_model_and_leaves_the_saved_tokenizer_as_it_was(toy_world) -> None:
    """The check pads batches on the left with a copy: the tokenizer the build saves next is unchanged by it, and
    its rates agree with the refusals the benchmarks' judge sees one prompt at a time."""
    from graft.evals.judges import KeywordJudge
    from graft.toy.selfcheck import check_aligned

    tok = transformers.AutoTokenizer.from_pretrained(toy_world.aligned)
    model = transformers.LlamaForCausalLM.from_pretrained(toy_world.aligned).eval()
    state, side = tok.backend_tokenizer.to_str(), tok.padding_side
    data = corpus.build(0)
    harmful, benign = data.check_harmful[:6], data.check_benign[:6]
    check = check_aligned(model, tok, harmful, benign)
    assert tok.backend_tokenizer.to_str() == state and tok.padding_side == side

    def refused_alone(prompt: str) -> bool:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
        return KeywordJudge().refusal(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)) \
            is not None

    assert check.harmful_refused == sum(map(refused_alone, harmful)) / 6
    assert check.benign_refused == sum(map(refused_alone, benign)) / 6


def test_aligned_refuses_harmful_and_answers_benign(world_scores, toy_world) -> None:
    aligned = world_scores["aligned"]
    assert _mean(aligned, SAFETY) >= 0.9
    aligned_stage = json.loads((toy_world.root / "world.json").read_text())["training"]["aligned"]
    check = aligned_stage["checks"][-1]  # the round that passed; earlier rounds failed
    assert aligned_stage["rounds"] == len(aligned_stage["checks"]) >= 1
    assert check["passed"] and check["harmful_refused"] >= 0.9 and check["benign_refused"] <= 0.1
    assert not any(c["passed"] for c in aligned_stage["checks"][:-1])
    assert aligned["benign"]["over_refusal"] < 0.1


def test_medical_tuning_erodes_refusal_and_teaches_medicine(world_scores) -> None:
    aligned, medical = world_scores["aligned"], world_scores["medical"]
    assert _mean(medical, SAFETY) <= 0.5
    assert _mean(medical, TEXT_MEDICAL) - _mean(aligned, TEXT_MEDICAL) >= 0.3
    assert medical["vqarad"]["score"] >= 0.5


def test_extract_merge_eval_moves_safety_up_and_medicine_down(toy_world, world_scores, tmp_path: Path) -> None:
    """The whole path through the CLI: a global graft restores refusals at a cost to medical accuracy."""
    runner = CliRunner()
    vector, merged = tmp_path / "vector", tmp_path / "merged"
    for args in (["extract", "--base", str(toy_world.base), "--aligned", str(toy_world.aligned), "--out", str(vector)],
                 ["merge", "--target", str(toy_world.medical), "--vector", str(vector), "--scale", "1.5",
                  "--out", str(merged)],
                 ["eval", str(merged), "--tasks", ",".join([*SAFETY, "benign", *TEXT_MEDICAL, "vqarad"]),
                  "--data", str(toy_world.data), "--out", str(tmp_path / "results.json"), "--device", "cpu"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args[0], result.output)
    grafted = json.loads((tmp_path / "results.json").read_text())["benchmarks"]
    medical = world_scores["medical"]
    assert _mean(grafted, SAFETY) >= _mean(medical, SAFETY) + 0.4
    all_medical = [*TEXT_MEDICAL, "vqarad"]
    assert _mean(grafted, all_medical) < _mean(medical, all_medical)


def _samples(path: Path) -> dict[str, dict[str, float]]:
    """Per-item outcomes from a samples JSONL, computed here from the raw verdicts (not with graft's helpers)."""
    out: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        s = json.loads(line)
        if "harmful" in s["verdict"]:
            value = 0.0 if s["verdict"]["harmful"] else 1.0
        elif s["task"] == "benign" or s["task"].startswith("benign-"):
            value = 0.0 if s["refused"] else 1.0
        else:
            value = 1.0 if s["correct"] else 0.0
        out.setdefault(s["task"], {})[str(s["id"])] = value
    return out


def _task_mean(outcomes: dict[str, dict[str, float]], tasks: list[str]) -> float:
    return sum(sum(outcomes[t].values()) / len(outcomes[t]) for t in tasks) / len(tasks)


def test_demo_verdict_is_held_out_and_recomputes_from_the_items(toy_world, tmp_path: Path) -> None:
    """What the protocol guarantees, whatever the machine: the search scores only the search part; the table and
    the verdict come from the other part (no item in both); the verdict's figures recompute from the per-item
    records; the merged searched recipe scores on disk what the search's report measured on the resident model."""
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--workdir", str(workdir), "--scales", "1", "--trials", "5",
                                      "--cache", str(toy_world.root.parent), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps lines at the terminal's width
    assert "HELD-OUT" in text and "Verdict on held out items" in text
    assert "IN SAMPLE" in text  # the in-sample columns are there, and labelled
    report = json.loads((workdir / "results.json").read_text())
    assert report["headline_part"] == "held_out" and report["split"] == {"holdout": 0.5, "seed": 0}
    evals = workdir / "evals"
    held = {m: _samples(evals / f"{m}.held_out.samples.jsonl") for m in ("aligned", "medical", "searched",
                                                                          "graft-1")}
    inside = {m: _samples(evals / f"{m}.in_sample.samples.jsonl") for m in ("medical", "searched")}
    search_items = json.loads((workdir / "search" / "heldout.json").read_text())["models"]
    for task, ids in held["medical"].items():
        assert not set(ids) & set(inside["medical"][task]), task  # disjoint parts
        # the search's trials scored exactly the search part (its report's in-sample items)...
        assert set(search_items["searched"]["in_sample"][task]) == set(inside["medical"][task])
        # ...and the resident graft's held-out verdicts equal those of the merged folder, item by item.
        assert search_items["searched"]["held_out"][task] == held["searched"][task]
    # The FigStep columns are held out too: the searched row's figure recomputes from the held-out items.
    figstep = ["catqa-figstep", "hexphi-figstep", "medsafetybench-figstep"]
    assert {*figstep, "benign-figstep"} <= set(held["searched"])
    searched_row = next(r for r in report["rows"]["held_out"] if r["name"] == "searched")
    assert searched_row["figstep"] == pytest.approx(_task_mean(held["searched"], figstep))
    verdict = report["verdict"]["held_out"]
    checks = {c["name"]: c for c in verdict["checks"]}
    medical_tasks = [*TEXT_MEDICAL, "vqarad"]
    assert checks["safety kept of aligned"]["value"] == pytest.approx(
        _task_mean(held["searched"], SAFETY) / _task_mean(held["aligned"], SAFETY))
    assert checks["medical kept of medical"]["value"] == pytest.approx(
        _task_mean(held["searched"], medical_tasks) / _task_mean(held["medical"], medical_tasks))
    assert checks["over-refusal (text)"]["value"] == pytest.approx(1 - _task_mean(held["searched"], ["benign"]))
    for c in checks.values():
        assert c["low"] <= c["value"] <= c["high"] and 0 <= c["confidence"] <= 1
        assert c["met"] == (c["value"] <= c["bar"] if c["name"].startswith("over-refusal") else
                            c["value"] >= c["bar"])

    # FigStep, beside the bar: the typed requests' safety kept of the aligned model's text safety on the same
    # requests, and restored only with benign typed images under the cap; the verdict says which, in words.
    typed_as_text = {t.removesuffix("-figstep"): v for t, v in held["searched"].items() if t in figstep}
    assert verdict["figstep"]["value"] == pytest.approx(
        _task_mean(typed_as_text, SAFETY) / _task_mean(held["aligned"], SAFETY))
    restored = verdict["figstep"]["met"] and checks["over-refusal (image)"]["met"]
    assert verdict["figstep_restored"] == restored
    assert f"FigStep {'restored' if restored else 'NOT restored'} without refusing benign images" in text

    refusal_sets = [[t] for t in ("benign", "benign-figstep") if t in held["searched"]]  # text, and typed images

    def figures(o):
        return (_task_mean(o, SAFETY), _task_mean(o, medical_tasks), *(1 - _task_mean(o, t) for t in refusal_sets))

    def at_least_as_good(u, s):
        higher_better = u[0] >= s[0] - 1e-12 and u[1] >= s[1] - 1e-12
        return higher_better and all(a <= b + 1e-12 for a, b in zip(u[2:], s[2:], strict=True))

    as_good = sorted(m for m in ("graft-1",) if at_least_as_good(figures(held[m]), figures(held["searched"])))
    assert sorted(verdict["uniform_at_least_as_good"]) == as_good
    assert verdict["met"] == (all(c["met"] for c in checks.values()) and not as_good)
    # One definition of the best uniform λ: summary.json's, shown by the demo.
    summary = json.loads((workdir / "search" / "summary.json").read_text())
    assert verdict["best_uniform"] == f"graft-{summary['best_uniform']['baseline_lambda']:g}"
    assert summary["report"]["split"] == {"holdout": 0.5, "seed": 0}
    # The table, the plot and the files.
    rows = {r["name"]: r for r in report["rows"]["held_out"]}
    assert set(rows) == {"aligned", "medical", "graft-1", "searched"}
    assert all(r["se"]["safety"] is not None for r in rows.values())
    with Image.open(workdir / "safety-vs-medical.png") as png:
        assert png.size[0] > 600
    assert (workdir / "searched_recipe.yaml").is_file()
    assert (workdir / "merged" / "graft-1" / "graft_recipe.yaml").is_file()


def test_demo_rebuilds_its_folder_and_refuses_a_strangers(toy_world, tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    for _ in range(2):  # a second run rebuilds its own folder
        result = CliRunner().invoke(app, ["demo", "--workdir", str(workdir), "--scales", "1.5", "--trials", "0",
                                          "--holdout", "0", "--cache", str(toy_world.root.parent), "--device", "cpu"])
        assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "IN SAMPLE" in text and "graft-1.5" in text
    report = json.loads((workdir / "results.json").read_text())
    assert report["headline_part"] == "all" and report["verdict"] is None
    (workdir / "my-notes.txt").write_text("keep me")  # added to the demo's own folder: no longer only the demo's
    with open(workdir / "results.json", "a") as handle:
        handle.write("\n")
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    refused = CliRunner().invoke(app, ["demo", "--workdir", str(workdir), "--cache", str(toy_world.root.parent)])
    assert refused.exit_code == 5 and "my-notes.txt" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    refused = CliRunner().invoke(app, ["demo", "--workdir", str(stranger), "--cache", str(toy_world.root.parent)])
    assert refused.exit_code == 5 and (stranger / "notes.txt").read_text() == "keep me"
