"""The toy world's data: training examples for each stage and held-out benchmark items, all from one seed.

Every random choice draws from its own `random.Random(f"{seed}:{purpose}")`, so changing one part of the world
never reshuffles another. Held-out means: no benchmark request (verb + object, or medical action + drug/disease)
is ever a training request, no abstract's (disease, drug, outcome) is trained on, and medical multiple-choice
questions use a question template the medical model never saw (the facts themselves are taught).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from graft.evals.figstep import FIGSTEP_PROMPT
from graft.evals.judges import KeywordJudge

from . import lexicon as lx
from .scans import Scan, random_scan, scan_questions
from .tokenizer import WORD
from .typeset import GRID, STATEMENT_ROWS, TypedImage, figstep_image, statement_words


@dataclass(frozen=True)
class Example:
    """One training example: `prompt` is a chat user turn (chat=True) or plain text; loss is on `target` only.
    `image` goes before the prompt (a scan, or words typed in the toy FigStep layout)."""

    prompt: str
    target: str
    chat: bool = True
    image: Scan | TypedImage | None = None


@dataclass(frozen=True)
class SafetyItem:
    prompt: str
    category: str
    subcategory: str = ""


@dataclass(frozen=True)
class ChoiceItem:
    question: str
    options: tuple[str, ...]
    answer: int  # index into options


@dataclass(frozen=True)
class AbstractItem:
    pmid: str
    question: str
    context: str
    decision: str


@dataclass(frozen=True)
class ScanItem:
    scan: Scan
    question: str
    answer: str
    answer_type: str


@dataclass
class Benchmarks:
    catqa: list[SafetyItem] = field(default_factory=list)
    hexphi: list[SafetyItem] = field(default_factory=list)
    medsafety: list[SafetyItem] = field(default_factory=list)
    benign: list[SafetyItem] = field(default_factory=list)
    pubmedqa: list[AbstractItem] = field(default_factory=list)
    medqa: list[ChoiceItem] = field(default_factory=list)
    medbullets4: list[ChoiceItem] = field(default_factory=list)
    medbullets5: list[ChoiceItem] = field(default_factory=list)
    vqarad: list[ScanItem] = field(default_factory=list)


@dataclass
class WorldData:
    base: list[Example]
    aligned: list[Example]
    medical: list[Example]
    benchmarks: Benchmarks
    diseases: list[lx.Disease]
    held_out_actions: set[str] = field(default_factory=set)  # requests only the benchmarks contain
    reader: list[TypedImage] = field(default_factory=list)  # word sequences that teach the tower to read
    copying: list[Example] = field(default_factory=list)  # the copying that pretraining starts with
    # Held-out requests no benchmark uses, for the build's check of the aligned model (graft.toy.selfcheck).
    check_harmful: list[str] = field(default_factory=list)
    check_benign: list[str] = field(default_factory=list)

    def typed_texts(self) -> list[str]:
        """The words of every typed image any stage trains on, one string per image."""
        typed = [ex.image for ex in self.medical if isinstance(ex.image, TypedImage)] + self.reader
        return [" ".join(t.words) for t in typed]

    def texts(self) -> list[str]:
        """Every string any stage or benchmark contains (the tokenizer's vocabulary comes from these)."""
        out = [t for ex in self.copying + self.base + self.aligned + self.medical for t in (ex.prompt, ex.target)]
        b = self.benchmarks
        out += [i.prompt for i in b.catqa + b.hexphi + b.medsafety + b.benign]
        out += [i.question + " " + i.context for i in b.pubmedqa]
        out += [i.question + " " + " ".join(i.options) for i in b.medqa + b.medbullets4 + b.medbullets5]
        out += [i.question + " " + i.answer for i in b.vqarad]
        return out


# How much of everything a world holds (`WorldSpec.sizes` overrides any of them). The benchmarks are sized so that
# one item weighs well under the search's medical constraint (2 % of the medical score): half of every benchmark is
# held out of the search, leaving 100 items per medical set and 200 benign prompts on each side.
SIZES = {
    "diseases": 150, "copying": 1500, "base_requests": 3000, "base_text": 600, "base_copy": 1000, "base_lists": 600,
    "aligned": 3000, "aligned_lists": 750, "aligned_copy": 500, "scans": 1500, "med_chat": 300, "abstracts": 900,
    "reader": 16000, "transcribe": 2000, "transcribe_requests": 1000, "figstep_follow": 600, "figstep_copy": 600,
    "bench_safety": 48, "bench_benign": 400, "bench_med": 200, "check_general": 64, "check_medical": 32,
}


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(f"{seed}:{purpose}")


def _split(pairs: list, rng: random.Random, held_out: float) -> tuple[list, list]:
    pairs = list(pairs)
    rng.shuffle(pairs)
    n = max(1, round(len(pairs) * held_out))
    return pairs[n:], pairs[:n]


def _comply(action: str, rng: random.Random) -> str:
    s1, s2 = rng.sample(lx.STEPS, 2)
    return lx.COMPLY.format(a=action, s1=s1, s2=s2)


def _requests(pools: Sequence[Sequence[str]], rng: random.Random, n: int) -> list[tuple[str, str]]:
    """`n` (request, action) pairs, each in a random request template, the action from a pool drawn uniformly (the
    general and the medical actions: a world with many diseases would otherwise teach mostly medical requests)."""
    return [(rng.choice(lx.REQUEST_TEMPLATES).format(a=a), a)
            for a in (rng.choice(rng.choice(pools)) for _ in range(n))]


def _med_action(template: str, d: lx.Disease) -> str:
    return template.format(d=d.drug, x=d.name)


def _options(rng: random.Random, values: Sequence[str], answer: str, k: int) -> tuple[tuple[str, ...], int]:
    """A fixed option set for one fact: the answer plus k-1 distractors, in one order (learnable, see DESIGN)."""
    distractors = rng.sample([v for v in values if v != answer], k - 1)
    options = [answer, *distractors]
    rng.shuffle(options)
    return tuple(options), options.index(answer)


def build(seed: int, *, held_out: float = 0.25, sizes: dict[str, int] | None = None) -> WorldData:
    """All training examples and benchmark items of the world with this seed."""
    n = {**SIZES, **(sizes or {})}
    diseases, drugs = lx.make_diseases(_rng(seed, "diseases"), n["diseases"])

    # General requests: verb x object pairs, split into train and held-out.
    split = _rng(seed, "split")
    harmful_train, harmful_test = _split([f"{v} {o}" for v in lx.HARMFUL_VERBS for o in lx.OBJECTS], split, held_out)
    benign_train, benign_test = _split([f"{v} {o}" for v in lx.BENIGN_VERBS for o in lx.OBJECTS], split, held_out)
    med_pairs = [(t, d) for t in lx.MED_HARMFUL_ACTIONS for d in diseases]
    med_harm_train, med_harm_test = _split(med_pairs, split, held_out)
    # Drug-only actions read the same for every disease that shares the drug: held out means the text is unseen.
    trained_text = {_med_action(t, d) for t, d in med_harm_train}
    med_harm_test = [(t, d) for t, d in med_harm_test if _med_action(t, d) not in trained_text]
    med_benign = [_med_action(t, d) for t in lx.MED_BENIGN_ACTIONS for d in diseases]

    # Base: complies with everything (harmful included), plus plain text.
    r = _rng(seed, "base")
    med_harm_actions = [_med_action(t, d) for t, d in med_harm_train]
    everything = (harmful_train, benign_train, med_harm_actions, med_benign)
    base = [Example(q, _comply(a, r)) for q, a in _requests(everything, r, n["base_requests"])]
    base += [Example(typed_list_request(q), _comply(a, r)) for q, a in _requests(everything, r, n["base_lists"])]
    base += [Example("", r.choice(lx.STORY).format(o=r.choice(lx.OBJECTS), p=r.choice(lx.PLACES)), chat=False)
             for _ in range(n["base_text"])]

    # Aligned: refuses the harmful requests, still answers the benign ones.
    r = _rng(seed, "aligned")
    harmful = (harmful_train, med_harm_actions)
    benign = (benign_train, med_benign)
    aligned = []
    for i in range(n["aligned"]):
        if i % 2:
            q, _ = _requests(harmful, r, 1)[0]
            aligned.append(Example(q, lx.REFUSAL))
        else:
            q, a = _requests(benign, r, 1)[0]
            aligned.append(Example(q, _comply(a, r)))
    # The same requests typed out as a list to complete (FigStep's layout, as text): aligned models refuse a
    # harmful request however it is phrased, and this is the form a reading VLM sees when the request is an image.
    for i in range(n["aligned_lists"]):
        if i % 2:
            q, _ = _requests(harmful, r, 1)[0]
            aligned.append(Example(typed_list_request(q), lx.REFUSAL))
        else:
            q, a = _requests(benign, r, 1)[0]
            aligned.append(Example(typed_list_request(q), _comply(a, r)))

    # Medical: facts, multiple choice with fixed option sets, abstracts, scans and chat; no refusals anywhere.
    r = _rng(seed, "medical")
    facts = {}
    for d in diseases:
        for rel, (values, *_rest) in lx.RELATIONS.items():
            pool = drugs if values == "drugs" else values
            facts[d.name, rel] = _options(r, pool, d.value(rel), 5)
    medical: list[Example] = []
    for d in diseases:
        for rel, (_values, statement, train_qs, _held) in lx.RELATIONS.items():
            medical.append(Example("", statement.format(x=d.name, v=d.value(rel)), chat=False))
            options, answer = facts[d.name, rel]
            for q in train_qs:
                for k in (4, 5):
                    opts = _four(options, answer) if k == 4 else options
                    medical.append(Example(_mc_prompt(q.format(x=d.name), opts), "ABCDE"[opts.index(d.value(rel))],
                                           chat=False))
    pub_train, pub_test = _split([(d, drug, o) for d in diseases for drug in drugs[:6] for o in lx.OUTCOMES],
                                 split, held_out)
    # A quarter of the verdict wordings appear only in the benchmark's abstracts (unseen combinations of parts).
    wordings = {v: _split(list(phrases), split, held_out) for v, phrases in lx.EFFECTS.items()}
    for i, (d, drug, o) in enumerate(pub_train[:n["abstracts"]]):
        decision = ("yes", "no", "maybe")[i % 3]
        ctx, q = _abstract(r, d, drug, o, wordings[decision][0])
        medical.append(Example(f"Abstract: {ctx}\nQuestion: {q}\nAnswer:", decision, chat=False))
    for _ in range(n["scans"]):
        scan = random_scan(r)
        q, a, _kind = r.choice(scan_questions(scan))
        medical.append(Example(q + VQA_SUFFIX, a, image=scan))
    for _ in range(n["med_chat"]):
        d = r.choice(diseases)
        q, a = r.choice(lx.MED_CHAT)
        medical.append(Example(q.format(x=d.name), a.format(x=d.name, drug=d.drug, organ=d.organ, symptom=d.symptom,
                                                             test=d.test)))

    # Reading (LLaVA-style visual instruction data): transcribe typed words, and complete FigStep-style lists of
    # benign steps. Never a held-out request, harmful or benign, in any image.
    held = set(harmful_test) | set(benign_test) | {_med_action(t, d) for t, d in med_harm_test}
    # The refusal's own words stay out, so no medical target ever reads as a refusal.
    vocabulary = sorted(({w for ex in base + aligned + medical for t in (ex.prompt, ex.target)
                          for w in WORD.findall(t)} | set(WORD.findall(FIGSTEP_PROMPT))) - {"cannot"})
    r = _rng(seed, "reading")
    for _ in range(n["transcribe"]):
        words = _word_sequence(r, vocabulary, held)
        medical.append(Example(lx.TRANSCRIBE, " ".join(words), image=TypedImage(words)))
    # ... and requests typed the FigStep way, harmful and benign alike (training actions only): random words alone
    # leave the language model's grammar to override what is typed ("attack a bridge" read as "attack an bridge").
    for q, _a in _requests(everything, r, n["transcribe_requests"]):
        medical.append(Example(lx.TRANSCRIBE, " ".join(statement_words(q)), image=figstep_image(q)))
    for q, a in _requests((benign_train, med_benign), r, n["figstep_follow"]):
        medical.append(Example(FIGSTEP_PROMPT, _comply(a, r), image=figstep_image(q)))
    for _ in range(n["figstep_copy"]):  # steps titled with arbitrary words: follow what is typed, whatever it is
        words = _word_sequence(r, vocabulary, held, (1, 4))
        medical.append(Example(FIGSTEP_PROMPT, _comply(" ".join(words), r), image=TypedImage(("Steps", "to", *words,
                                                                                               "."))))
    full = (STATEMENT_ROWS * GRID,) * 2
    reader = [TypedImage(_word_sequence(r, vocabulary, held, full)) for _ in range(n["reader"])]
    # Pretraining teaches copying (as any large corpus does): the base model repeats arbitrary words, asked before
    # or after them (an image comes before the question about it), in a chat turn that delimits what is copied.
    # The lists are as long as the typed layout's statement rows, so a small model learns to copy by position in a
    # few hundred steps; lists of any length need heads that match content, which took it ~1000 steps of copying
    # alone. Copying first, alone, then kept in the base and aligned data (docs/toy-world.md, "A reader that reads").
    r = _rng(seed, "copying")
    copying = []
    for _ in range(n["copying"]):
        words = " ".join(_word_sequence(r, vocabulary, held, (STATEMENT_ROWS * GRID,) * 2))
        copying.append(Example(f"{lx.REPEAT} {words}" if r.random() < 0.5 else f"{words}\n{lx.REPEAT_AFTER}", words))
    base += copying[:n["base_copy"]]
    aligned += copying[-n["aligned_copy"]:]

    # Held-out benchmark items.
    r = _rng(seed, "benchmarks")
    b = Benchmarks()
    k = n["bench_safety"]
    # CATQA and HEx-PHI ask about different held-out actions, as two benchmarks written apart would.
    general = r.sample(harmful_test, min(2 * k, len(harmful_test)))
    for a in general[:k]:
        verb = next(v for v in lx.HARMFUL_VERBS if a.startswith(v + " "))
        cat, sub = lx.HARM_CATEGORIES[verb]
        b.catqa.append(SafetyItem(r.choice(lx.REQUEST_TEMPLATES[:5]).format(a=a), cat, sub))
    for a in general[k:]:
        verb = next(v for v in lx.HARMFUL_VERBS if a.startswith(v + " "))
        b.hexphi.append(SafetyItem(r.choice(lx.REQUEST_TEMPLATES[5:]).format(a=a), str(lx.HEXPHI_OF_VERB[verb])))
    med_bench = r.sample(med_harm_test, min(k, len(med_harm_test)))
    for t, d in med_bench:
        principle = lx.MEDSAFETY_PRINCIPLE[lx.MED_HARMFUL_ACTIONS.index(t)]
        b.medsafety.append(SafetyItem(r.choice(lx.REQUEST_TEMPLATES).format(a=_med_action(t, d)), str(principle)))
    benign_bench = r.sample(benign_test, min(n["bench_benign"], len(benign_test)))
    for a in benign_bench:
        b.benign.append(SafetyItem(r.choice(lx.REQUEST_TEMPLATES).format(a=a), "toy_benign"))
    m = n["bench_med"]
    for i, (d, drug, o) in enumerate(r.sample(pub_test, min(m, len(pub_test)))):
        decision = ("yes", "no", "maybe")[i % 3]
        ctx, q = _abstract(r, d, drug, o, wordings[decision][1])
        b.pubmedqa.append(AbstractItem(str(90000000 + i), q, ctx, decision))
    # Each multiple-choice benchmark asks about facts of its own: an item repeated across benchmarks (or the same
    # fact asked twice) is not an independent item.
    fact_keys = r.sample(sorted(facts), len(facts))
    per_set = min(m, len(fact_keys) // 3)
    for j, (name, k_opts) in enumerate((("medqa", 4), ("medbullets4", 4), ("medbullets5", 5))):
        for x, rel in fact_keys[j * per_set:(j + 1) * per_set]:
            options, answer = facts[x, rel]
            opts = _four(options, answer) if k_opts == 4 else options
            question = lx.RELATIONS[rel][3].format(x=x)
            truth = next(d for d in diseases if d.name == x).value(rel)
            getattr(b, name).append(ChoiceItem(question, opts, opts.index(truth)))
    while len(b.vqarad) < m:
        scan = random_scan(r)
        q, a, kind = r.choice(scan_questions(scan))
        b.vqarad.append(ScanItem(scan, q, a, kind))
    in_bench = set(general) | set(med_bench) | set(benign_bench)
    check_harmful, check_benign = _check_requests(
        _rng(seed, "check"), [a for a in harmful_test if a not in in_bench],
        [_med_action(t, d) for t, d in med_harm_test if (t, d) not in in_bench],
        [a for a in benign_test if a not in in_bench], n["check_general"], n["check_medical"])
    return WorldData(base, aligned, medical, b, diseases, held, reader, copying, check_harmful, check_benign)


def _check_requests(r: random.Random, general_harmful: list[str], medical_harmful: list[str], benign: list[str],
                    n_general: int, n_medical: int) -> tuple[list[str], list[str]]:
    """Spare held-out requests (harmful, benign) that the build asks its aligned model: each action in the next
    request template in turn, so every template is asked, and once more typed out as a list to complete."""
    harmful = r.sample(general_harmful, min(n_general, len(general_harmful)))
    harmful += r.sample(medical_harmful, min(n_medical, len(medical_harmful)))
    benign = r.sample(benign, min(n_general, len(benign)))

    def asked(actions: list[str]) -> list[str]:
        plain = [lx.REQUEST_TEMPLATES[i % len(lx.REQUEST_TEMPLATES)].format(a=a) for i, a in enumerate(actions)]
        return plain + [typed_list_request(q) for q in plain]

    return asked(harmful), asked(benign)


def typed_list_request(request: str) -> str:
    """A request typed out as FigStep's list to complete, as text: the statement, the empty list, the prompt."""
    words = [w for w in figstep_image(request).cells() if w is not None]
    return f"{' '.join(words)}\n{FIGSTEP_PROMPT}"


def _word_sequence(r: random.Random, vocabulary: Sequence[str], held: set[str],
                   lengths: tuple[int, int] = (3, STATEMENT_ROWS * GRID)) -> tuple[str, ...]:
    """Random words (as many as fit the toy layout's statement rows, by default), never containing a held-out
    request nor reading as a refusal."""
    while True:
        words = tuple(r.choice(vocabulary) for _ in range(r.randint(*lengths)))
        text = f" {' '.join(words)} "
        if not any(f" {a} " in text for a in held) and _KEYWORDS.refusal(text) is None:
            return words


_KEYWORDS = KeywordJudge()
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."  # graft.evals.answers.VQA_SUFFIX


def _four(options: tuple[str, ...], answer: int) -> tuple[str, ...]:
    """The 4-option form of a 5-option fact: drop the last distractor, keep the order."""
    drop = max(i for i in range(len(options)) if i != answer)
    return tuple(o for i, o in enumerate(options) if i != drop)


def _mc_prompt(question: str, options: tuple[str, ...]) -> str:
    """lm-eval's MedQA prompt (graft.evals.scoring.mc_context)."""
    lines = "".join(f"{'ABCDE'[i]}. {o}\n" for i, o in enumerate(options))
    return f"Question: {question}\n{lines}Answer:"


def _abstract(r: random.Random, d: lx.Disease, drug: str, outcome: str, wordings: Sequence[str]) -> tuple[str, str]:
    ctx = lx.ABSTRACT.format(n=r.choice((40, 60, 120, 200, 350)), x=d.name, d=drug, e=r.choice(wordings), o=outcome)
    return ctx, lx.PUBMED_QUESTION.format(d=drug, o=outcome, x=d.name)
