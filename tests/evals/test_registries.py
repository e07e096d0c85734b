"""The extension points: the benchmark registry (tasks, suites, data.yaml keys, prompts derived from declarations),
the judge registry, the sampler table and the GenerationBackend seam under `evaluate`."""

from __future__ import annotations

from pathlib import Path

import pytest

from graft.errors import UsageError
from graft.evals import evaluate, fixture_data
from graft.evals.answers import ABSTRACT_YES_NO_MAYBE, LETTERED
from graft.evals.backend import GenerationBackend
from graft.evals.benchmarks import (
    BENCHMARKS,
    SUITES,
    TASKS,
    Benchmark,
    benchmark,
    register_benchmark,
    unregister_benchmark,
)
from graft.evals.config import FIXTURES, DataConfig
from graft.evals.generation import HFBackend
from graft.evals.judges import (
    JUDGES,
    JudgeConfig,
    JudgeEntry,
    KeywordJudge,
    judge_entry,
    make_judge,
    register_judge,
    unregister_judge,
)
from graft.evals.loaders import Item, load_catqa, load_pubmedqa
from graft.evals.scoring import extract_choice, mc_context, mc_targets
from graft.evals.sources import HubSource

# What graft evaluated before the registry existed, in this order (--help, results and suites list them so).
GRAFT_TASKS = ["catqa", "hexphi", "medsafetybench", "catqa-figstep", "hexphi-figstep", "medsafetybench-figstep",
               "benign", "benign-figstep", "pubmedqa", "medqa", "medbullets4", "medbullets5", "vqarad"]


@pytest.fixture
def scratch_registry():
    """Benchmarks and judges registered in a test are gone afterwards."""
    benchmarks, judges = dict(BENCHMARKS), dict(JUDGES)
    yield
    for name in [n for n in BENCHMARKS if n not in benchmarks]:
        unregister_benchmark(name)
    for name in [n for n in JUDGES if n not in judges]:
        unregister_judge(name)


# -- benchmarks -------------------------------------------------------------------------------------------------
def test_tasks_and_suites_are_derived_unchanged():
    assert list(TASKS) == GRAFT_TASKS
    assert SUITES["safety"] == GRAFT_TASKS[:8] and SUITES["medical"] == GRAFT_TASKS[8:]
    assert SUITES["all"] == GRAFT_TASKS
    assert [(t.benchmark, t.kind, t.figstep) for t in (TASKS["benign-figstep"], TASKS["vqarad"])] == [
        ("benign", "benign", True), ("vqarad", "vqa", False)]


def test_every_declaration_loads_its_fixture_with_its_own_name():
    data = fixture_data()
    for name, bench in BENCHMARKS.items():
        items = bench.load(data.source(name))
        assert items and {it.benchmark for it in items} == {name}
        assert bench.about  # shown to whoever reads the registry


def test_a_new_benchmark_is_one_declaration(scratch_registry):
    register_benchmark(Benchmark("harmbench", "safety", load_catqa, figstep=True))
    assert TASKS["harmbench"].kind == "safety" and TASKS["harmbench-figstep"].figstep
    # grouped with the safety tasks, text before FigStep; the other suites keep their order
    assert SUITES["safety"] == [*GRAFT_TASKS[:3], "harmbench", *GRAFT_TASKS[3:6], "harmbench-figstep",
                                *GRAFT_TASKS[6:8]]
    assert SUITES["medical"] == GRAFT_TASKS[8:]
    cfg = DataConfig.from_mapping({"harmbench": "x.json", "catqa": "y.json"})
    assert cfg.source("harmbench") == cfg.harmbench
    unregister_benchmark("harmbench")
    assert list(TASKS) == GRAFT_TASKS
    with pytest.raises(UsageError, match="harmbench: unknown field"):
        DataConfig.from_mapping({"harmbench": "x.json"})


def test_prompts_and_reply_parsing_follow_the_declaration_not_the_name(scratch_registry):
    """A benchmark declared with PubMedQA's format is asked and read like PubMedQA; one declared lettered, by
    letters. Scoring has no per-name branch."""
    register_benchmark(Benchmark("yesno", "mc", load_pubmedqa, choices=ABSTRACT_YES_NO_MAYBE))
    register_benchmark(Benchmark("lettered", "mc", load_pubmedqa, choices=LETTERED))
    a = Item("yesno", "y1", "yes", "Does it work?", choices=("yes", "no", "maybe"), answer="yes", context="Ctx.")
    b = Item("lettered", "l1", "all", "Does it work?", choices=("yes", "no", "maybe"), answer="A", context="Ctx.")
    assert mc_context(a) == "Abstract: Ctx.\nQuestion: Does it work?\nAnswer:"
    assert mc_targets(a) == ["yes", "no", "maybe"] and extract_choice("Maybe, yes.", a) == "maybe"
    assert mc_context(b) == "Question: Does it work?\nA. yes\nB. no\nC. maybe\nAnswer:"
    assert mc_targets(b) == ["A", "B", "C"] and extract_choice("The answer is B.", b) == "B"
    # graft's own: PubMedQA by words, MedQA by letters
    assert benchmark("pubmedqa").choices is ABSTRACT_YES_NO_MAYBE and benchmark("medqa").choices is LETTERED


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"name": "Bad Name", "kind": "safety"}, "lower-case letters"),
    ({"name": "figstep", "kind": "safety"}, "not figstep"),
    ({"name": "x", "kind": "essay"}, "kind 'essay' is not one of safety, benign, mc, vqa"),
    ({"name": "x", "kind": "mc"}, "needs `choices`"),
    ({"name": "x", "kind": "safety", "choices": LETTERED}, "needs `choices`, and only it"),
    ({"name": "x", "kind": "mc", "choices": LETTERED, "figstep": True}, "FigStep variants are for safety"),
    ({"name": "x", "kind": "safety", "answer": lambda item, reply: {}}, "`answer` scores VQA replies"),
])
def test_a_wrong_declaration_is_one_line(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Benchmark(load=load_catqa, **kwargs)


def test_registering_a_taken_name_is_refused(scratch_registry):
    with pytest.raises(UsageError, match="benchmark 'catqa' is already registered"):
        register_benchmark(Benchmark("catqa", "safety", load_catqa))
    with pytest.raises(UsageError, match="unknown benchmark 'nope'; known: catqa, hexphi"):
        benchmark("nope")


# -- data.yaml ------------------------------------------------------------------------------------------------------
def test_data_yaml_keeps_its_layout():
    shipped = fixture_data()
    assert shipped.catqa == FIXTURES / "catqa" / "catqa_english.json" and shipped.figstep is None
    dumped = shipped.model_dump()
    assert set(dumped) == set(BENCHMARKS) | {"figstep"}
    assert DataConfig.model_validate(dumped) == shipped
    partial = DataConfig.from_mapping({"medqa": {"hub": "o/n", "split": "test"}, "figstep": "imgs"})
    # An entry left out reads the benchmark's public source; `partial.catqa` is data.yaml's own entry (none).
    assert partial.get("catqa") == BENCHMARKS["catqa"].public and partial.catqa is None
    assert partial.medqa == HubSource(hub="o/n")
    assert partial.paths() == [Path("imgs")]
    with pytest.raises(UsageError, match=r"add a line 'medbullets4: PATH' to a data.yaml and pass it with --data "
                                         r"\(PATH: medbullets_op4.csv"):
        partial.source("medbullets4")  # no public copy: the declaration says which published file to point at


@pytest.mark.parametrize(("raw", "message"), [
    ({"catqaa": "a.json"}, "data config: catqaa: unknown field; known benchmarks: catqa, hexphi, medsafetybench, "
                           "benign, pubmedqa, medqa, medbullets4, medbullets5, vqarad (and figstep"),
    ({"catqa": 5}, "data config: catqa: expected a path or a hub source"),
    ({"catqa": {"hub": "a/b", "splits": "x"}}, "data config: catqa: splits: unknown field"),
])
def test_a_wrong_data_yaml_entry_is_one_line(raw, message):
    with pytest.raises(UsageError) as err:
        DataConfig.from_mapping(raw)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# -- judges ---------------------------------------------------------------------------------------------------------
def test_graft_judges_are_registered_by_name():
    assert list(JUDGES)[:3] == ["keyword", "guard", "openai"]
    assert not judge_entry("keyword").reads_whole_reply and judge_entry("guard").reads_whole_reply
    judge = make_judge(JudgeConfig.parse("keyword"))
    assert isinstance(judge, KeywordJudge) and judge.describe()["version"] == KeywordJudge.version
    with pytest.raises(UsageError, match="unknown judge 'nope'; known: keyword, guard:PATH, openai:MODEL@BASE_URL"):
        judge_entry("nope")
    with pytest.raises(ValueError, match="unknown judge 'nope'"):
        JudgeConfig(kind="nope")


def test_a_registered_judge_is_found_by_config_and_cli_form(scratch_registry):
    class Always:
        name, version = "always", "2"

        def describe(self):
            return {"name": self.name, "version": self.version}

        def judge(self, prompts, responses):
            return KeywordJudge().judge(prompts, ["Sure."] * len(responses))

    register_judge(JudgeEntry("always", "always", lambda config, device: Always()))
    assert make_judge(JudgeConfig.parse("always")).describe() == {"name": "always", "version": "2"}
    with pytest.raises(UsageError, match="'always'"):  # takes no argument: the accepted forms are listed
        JudgeConfig.parse("always:x")
    with pytest.raises(UsageError, match="judge 'always' is already registered"):
        register_judge(JudgeEntry("always", "always", lambda config, device: Always()))


# -- samplers -------------------------------------------------------------------------------------------------------
def test_samplers_are_one_table():
    import optuna

    from graft.search.samplers import SAMPLER_TABLE, SAMPLERS
    from graft.search.study import make_sampler

    assert SAMPLERS == ("cmaes", "tpe", "gp", "nsga2", "random")
    classes = {"cmaes": optuna.samplers.CmaEsSampler, "tpe": optuna.samplers.TPESampler,
               "gp": optuna.samplers.GPSampler, "nsga2": optuna.samplers.NSGAIISampler,
               "random": optuna.samplers.RandomSampler}
    for name in SAMPLER_TABLE:
        assert type(make_sampler(name, seed=3, mode="constrained", constraints=None)) is classes[name]
    assert [n for n, s in SAMPLER_TABLE.items() if not s.pareto] == ["cmaes"]
    with pytest.raises(UsageError, match=r"^--sampler bayes: expected one of cmaes, tpe, gp, nsga2, random$"):
        make_sampler("bayes", seed=0, mode="constrained", constraints=None)


# -- generation backend ---------------------------------------------------------------------------------------------
class Delegating:
    """A backend that is not an HFBackend: exactly the protocol's members, forwarded. The suite must need no more."""

    def __init__(self, engine: HFBackend):
        self._engine = engine
        self.name, self.batch_size, self.model = "delegating", engine.batch_size, engine.model
        self.calls: list[str] = []

    is_multimodal = property(lambda self: self._engine.is_multimodal)
    has_chat_template = property(lambda self: self._engine.has_chat_template)
    device = property(lambda self: self._engine.device)

    def generate(self, requests, max_new_tokens=64, batch_size=None, stop_when=None):
        self.calls.append("generate")
        return self._engine.generate(requests, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     stop_when=stop_when)

    def loglikelihood(self, pairs, batch_size=None):
        self.calls.append("loglikelihood")
        return self._engine.loglikelihood(pairs, batch_size=batch_size)

    def fingerprint(self):
        return self._engine.fingerprint()

    def describe(self):
        return {**self._engine.describe(), "path": self.name}


def test_the_suite_talks_to_the_model_only_through_the_backend_protocol(tiny_llama):
    engine = HFBackend.load(tiny_llama, device="cpu")
    assert isinstance(engine, GenerationBackend)
    backend = Delegating(engine)
    assert isinstance(backend, GenerationBackend)
    kwargs = {"tasks": "catqa,benign,medqa,pubmedqa", "data": fixture_data(), "limit": 3, "max_new_tokens": 6}
    direct, through = evaluate(engine, **kwargs), evaluate(backend, **kwargs)
    assert through.benchmarks == direct.benchmarks
    assert [s["response"] for s in through.samples] == [s["response"] for s in direct.samples]
    assert set(backend.calls) == {"generate", "loglikelihood"}
    assert through.model["path"] == "delegating" and through.model["class"] == direct.model["class"]
