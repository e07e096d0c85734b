"""The toy world's word-level tokenizer (the `tokenizers` library) and its chat template.

Case is kept (the keyword judge matches "I cannot" case-sensitively) and punctuation splits off, so decoded replies
read "Sure , here is ...". The template is ChatML (as Qwen2's) and renders image content parts as `<image>`, which
the LLaVA processor expands into the vision tower's patch tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    " <|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
WORD = re.compile(r"\w+|[^\w\s]")


def words(texts: Iterable[str]) -> list[str]:
    """The sorted distinct words (and punctuation marks) in `texts`, as the pre-tokenizer splits them."""
    return sorted({w for t in texts for w in WORD.findall(t)})


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(SPECIAL + [w for w in words(texts) if w not in SPECIAL])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Exactly WORD's pieces: "can't" -> can ' t, "Answer:" -> Answer :
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(WORD.pattern), behavior="removed", invert=True)
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>",
                                  additional_special_tokens=["<|im_start|>", "<|endoftext|>", "<image>"],
                                  model_max_length=512, clean_up_tokenization_spaces=False)
    tok.chat_template = CHAT_TEMPLATE
    return tok
