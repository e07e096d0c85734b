"""Match donor (safety-vector) tensor names to target tensor names from headers alone.

The donor is usually a text LLM (`model.layers.N.*`, `lm_head.*`); the target is often a VLM whose language
backbone carries the same tensors under another prefix (`language_model.model.`, `model.language_model.`...), next
to vision towers whose own `encoder.layers.N.*` may even have the same shapes. So the backbone is found by scoring:
every prefix in the target that precedes a `layers.N.` container is tried, and the one under which the most donor
tensors exist *with the donor's shapes* wins. Head-like tensors that live outside the backbone (`lm_head`) are looked
up under the backbone's ancestors. Explicit rules (regex substitutions) override all of this.

Architecture knowledge lives in the tables below, so a new family is a new row, not new code.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

# Containers that hold numbered transformer blocks, across HF families (Llama/Qwen/Mistral/Gemma: layers; GPT-2,
# Falcon, BLOOM: h; MPT, vision towers: blocks).
LAYER_CONTAINERS = ("layers", "h", "blocks", "block")
_BODY_SPLIT = re.compile(rf"^(?P<prefix>(?:[\w-]+\.)*?)(?P<rel>(?:{'|'.join(LAYER_CONTAINERS)})\.\d+\..+)$")
_LAYER_INDEX = re.compile(rf"^(?:{'|'.join(LAYER_CONTAINERS)})\.(\d+)\.")

# Embedding tensor names relative to a backbone: the one that tells the language model from a vision tower.
EMBEDDING_NAMES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight",
                   "tok_embeddings.weight")

Group = Literal["attn", "mlp", "norm", "embed", "head", "vision", "other"]
GROUPS: tuple[Group, ...] = ("attn", "mlp", "norm", "embed", "head", "vision", "other")

# First match wins; tested on the name relative to the backbone (or the full name outside it).
GROUP_PATTERNS: tuple[tuple[Group, re.Pattern[str]], ...] = (
    ("vision", re.compile(r"(^|\.)(visual|vision_tower|vision_model|vision_encoder|mm_projector|"
                          r"multi_modal_projector|vision_projection|image_newline|audio_tower)(\.|$)")),
    ("embed", re.compile(r"(^|\.)(embed_tokens|wte|wpe|word_embeddings|embed_in|tok_embeddings|"
                         r"embed_positions)\.")),
    ("head", re.compile(r"(^|\.)(lm_head|embed_out|output)\.(weight|bias)$")),
    ("norm", re.compile(r"(norm|ln_\w+|ln\d*|layernorm)[^.]*\.(weight|bias|scale)$")),
    ("attn", re.compile(r"(^|\.)(self_attn|attention|attn|cross_attn|self_attention)\.")),
    ("mlp", re.compile(r"(^|\.)(mlp|feed_forward|ffn|block_sparse_moe|experts|moe)\.")),
)


# Config keys (at the top level or in text_config) listing decoder layers a family *inserts* into the donor's stack:
# the donor's layer k is then the target's k-th layer that is not in the list. Llama-3.2-Vision (mllama) inserts
# cross-attention layers into Llama-3.1's decoder this way. A new family that declares inserted layers is a row here.
INSERTED_LAYER_KEYS = ("cross_attention_layers",)


def inserted_layers(config: Mapping[str, object]) -> tuple[str, list[int]] | None:
    """(the config key, the inserted layer indices) when the config declares any, else None."""
    text = config.get("text_config")
    for node, prefix in ((text, "text_config."), (config, "")):
        if not isinstance(node, Mapping):
            continue
        for key in INSERTED_LAYER_KEYS:
            value = node.get(key)
            if value:
                if not isinstance(value, list) or not all(type(v) is int and v >= 0 for v in value):
                    raise ValueError(f"{prefix}{key} must be a list of layer indices, got {value!r}")
                return prefix + key, sorted(set(value))
    return None


def donor_layer_map(inserted: Sequence[int], total_layers: int) -> dict[int, int]:
    """Donor layer k -> the target's k-th layer that is not an inserted one."""
    skip = set(inserted)
    return dict(enumerate(i for i in range(total_layers) if i not in skip))


def relocate(relative_name: str, layer_map: Mapping[int, int] | None) -> str:
    """'layers.3.mlp.up_proj.weight' with {3: 4} -> 'layers.4.mlp.up_proj.weight' (names outside layers unchanged)."""
    if not layer_map:
        return relative_name
    match = _LAYER_INDEX.match(relative_name)
    if not match or int(match.group(1)) not in layer_map:
        return relative_name
    start, stop = match.span(1)
    return f"{relative_name[:start]}{layer_map[int(match.group(1))]}{relative_name[stop:]}"


def layer_suffix(relative_name: str) -> str | None:
    """'layers.3.mlp.up_proj.weight' -> 'mlp.up_proj.weight': what a tensor is within its layer."""
    match = _LAYER_INDEX.match(relative_name)
    return relative_name[match.end():] if match else None


def module_group(relative_name: str) -> Group:
    for group, pattern in GROUP_PATTERNS:
        if pattern.search(relative_name):
            return group
    return "other"


def layer_index(relative_name: str) -> int | None:
    match = _LAYER_INDEX.match(relative_name)
    return int(match.group(1)) if match else None


def split_backbone(name: str) -> tuple[str, str] | None:
    """'language_model.model.layers.3.mlp.up_proj.weight' -> ('language_model.model.', 'layers.3.mlp...')."""
    match = _BODY_SPLIT.match(name)
    return (match.group("prefix"), match.group("rel")) if match else None


def ancestors(prefix: str) -> list[str]:
    """Proper dotted prefixes, longest first, ending with '': 'a.b.' -> ['a.', '']."""
    parts = prefix.split(".")[:-1]
    return [".".join(parts[:i]) + "." if i else "" for i in range(len(parts) - 1, -1, -1)]


def find_backbone_prefix(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """The language model's prefix in one checkpoint: a block-container prefix that also holds an embedding.

    Falls back to the prefix with the most block tensors (a donor with no embedding, e.g. a pruned vector).
    """
    counts = Counter(split[0] for name in shapes if (split := split_backbone(name)))
    if not counts:
        return ""
    with_embedding = [p for p in counts if any(p + e in shapes for e in EMBEDDING_NAMES)]
    candidates = with_embedding or list(counts)
    return max(candidates, key=lambda p: (counts[p], -len(p)))


@dataclass(frozen=True)
class Rule:
    """An explicit donor->target name rewrite: `re.sub(match, replace, donor_name, count=1)`."""

    match: str
    replace: str

    def apply(self, name: str) -> str | None:
        new, n = re.subn(self.match, self.replace, name, count=1)
        return new if n else None


@dataclass(frozen=True)
class Pair:
    """A donor tensor matched to a target tensor; `rows` < the target's first dim for a grown vocabulary."""

    donor: str
    target: str
    relative: str  # name relative to the backbone: what groups and layers are read from
    layer: int | None
    group: Group
    rows: int | None  # None = all rows


@dataclass(frozen=True)
class Mismatch:
    donor: str
    target: str
    donor_shape: tuple[int, ...]
    target_shape: tuple[int, ...]


@dataclass(frozen=True)
class NameMatch:
    """Result of matching: pairs, donor tensors with no partner, and pairs whose shapes cannot be grafted."""

    donor_prefix: str
    target_prefix: str
    pairs: tuple[Pair, ...]
    unmatched_donor: tuple[str, ...]
    mismatches: tuple[Mismatch, ...]

    def by_target(self) -> dict[str, Pair]:
        return {p.target: p for p in self.pairs}


def match_names(
    donor: Mapping[str, tuple[int, ...]],
    target: Mapping[str, tuple[int, ...]],
    rules: Sequence[Rule] = (),
    layer_map: Mapping[int, int] | None = None,
) -> NameMatch:
    """Pair every donor tensor with the target tensor that carries the same weights, from names and shapes.

    `layer_map` sends donor layer k to another target layer (a target that inserts layers into the donor's
    stack); the pair keeps the donor's layer index, which is what λ is indexed by."""
    donor_prefix = find_backbone_prefix(donor)
    donor_root = ancestors(donor_prefix)[0] if donor_prefix else ""
    relative = {name: _relative(name, donor_prefix, donor_root) for name in donor}
    placed = {name: relocate(rel, layer_map) for name, rel in relative.items()}
    target_prefix = _best_target_prefix(placed, donor, target)

    pairs: list[Pair] = []
    unmatched: list[str] = []
    mismatches: list[Mismatch] = []
    taken: set[str] = set()
    for name, rel in relative.items():
        candidate = _ruled(name, rules) if rules else None
        if candidate is None or candidate not in target:
            candidate = _auto_target(name, placed[name], donor_prefix, target_prefix, target)
        if candidate is None or candidate in taken:
            unmatched.append(name)
            continue
        taken.add(candidate)
        rows = _graftable_rows(donor[name], target[candidate], module_group(rel))
        if rows is False:
            mismatches.append(Mismatch(name, candidate, tuple(donor[name]), tuple(target[candidate])))
            continue
        pairs.append(Pair(name, candidate, rel, layer_index(rel), module_group(rel), rows))
    return NameMatch(donor_prefix, target_prefix, tuple(pairs), tuple(unmatched), tuple(mismatches))


def _relative(name: str, body: str, root: str) -> str:
    if body and name.startswith(body):
        return name[len(body):]
    if name.startswith(root):
        return name[len(root):]
    return name


def _ruled(name: str, rules: Sequence[Rule]) -> str | None:
    for rule in rules:
        new = rule.apply(name)
        if new is not None:
            return new
    return None


def _best_target_prefix(
    relative: Mapping[str, str], donor: Mapping[str, tuple[int, ...]], target: Mapping[str, tuple[int, ...]]
) -> str:
    """The target prefix under which the most donor block tensors exist with compatible shapes."""
    candidates = {split[0] for name in target if (split := split_backbone(name))} | {""}

    def score(prefix: str) -> tuple[int, int, int]:
        """Shape-compatible hits first; name-only hits break ties, so a wrong-sized target reports mismatches."""
        named = [name for name, rel in relative.items() if (prefix + rel) in target]
        fitting = sum(1 for name in named
                      if _graftable_rows(donor[name], target[prefix + relative[name]], "other") is not False)
        return fitting, len(named), -len(prefix)

    return max(sorted(candidates), key=score)


def _auto_target(
    name: str, rel: str, donor_prefix: str, target_prefix: str, target: Mapping[str, tuple[int, ...]]
) -> str | None:
    if (donor_prefix and name.startswith(donor_prefix)) or not donor_prefix:
        inside = target_prefix + rel
        if inside in target:
            return inside
    # Outside the backbone (lm_head, or a donor VLM's own vision tensors): look under the target's ancestors.
    for base in [target_prefix, *ancestors(target_prefix)] if target_prefix else [""]:
        if base + rel in target:
            return base + rel
    return None


def _graftable_rows(donor_shape: Sequence[int], target_shape: Sequence[int], group: Group) -> int | bool | None:
    """None: same shape. int: graft only the donor's rows (a grown vocabulary). False: cannot be grafted."""
    donor_shape, target_shape = tuple(donor_shape), tuple(target_shape)
    if donor_shape == target_shape:
        return None
    grown_vocab = (
        group in ("embed", "head")
        and len(donor_shape) == len(target_shape) >= 1
        and donor_shape[1:] == target_shape[1:]
        and target_shape[0] > donor_shape[0]
    )
    return donor_shape[0] if grown_vocab else False
