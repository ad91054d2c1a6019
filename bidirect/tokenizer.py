"""The one tokenizer every backbone of a study shares.

Trained on the generated corpus with the `tokenizers` library and wrapped as a
`PreTrainedTokenizerFast`, so that `AutoTokenizer.from_pretrained(RUN_DIR / "tokenizer")`
loads it back without any hub access.

Both kinds split text with the byte-level pre-tokenizer, which keeps a word's leading
space inside the word, and which adds a space before a text's first word. So a word is the
same token ids wherever it appears: an attribute value after a question or inside a biography,
and a person's name at the very start of a biography ("Louis Vaughn Chase was born...") or
inside a question ("...birth date of Louis Vaughn Chase?"). Without the added space the first
word of a biography is another token (``Louis``, not `` Louis``), and with a word-level
vocabulary the question's name token may never occur in that person's biographies at all.
That is the property QA extraction depends on, and `answer_ids` relies on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, MASK, EOS, UNK = "<|pad|>", "<|mask|>", "<|endoftext|>", "<|unk|>"
SPECIAL_TOKENS = [PAD, MASK, EOS, UNK]


def train_tokenizer(texts: Iterable[str], kind: str = "bpe", vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a BPE (default) or word-level tokenizer on ``texts``."""
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token=UNK))
        trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, show_progress=False)
    else:
        raise ValueError(f"tokenizer.kind: unknown kind {kind!r}; allowed: 'bpe', 'word'")
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, mask_token=MASK, eos_token=EOS, bos_token=EOS, unk_token=UNK
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer at {path} (expected {path / 'tokenizer.json'})")
    # The class itself, not AutoTokenizer: a received tokenizer_config.json could name code saved beside it
    # (auto_map), which the Auto class would offer to run.
    return PreTrainedTokenizerFast.from_pretrained(str(path))


def qa_text(question: str, answer: str) -> str:
    """A QA example as one string: the question, one space, the answer."""
    return f"{question} {answer}"


def qa_ids(tokenizer: PreTrainedTokenizerFast, questions: Sequence[str], answers: Sequence[str]
           ) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of questions and of their answers, batched. An answer is encoded as it follows
    a question or sits inside a biography: after a space (which the pre-tokenizer would add too)."""
    q = tokenizer(list(questions), add_special_tokens=False)["input_ids"] if questions else []
    a = tokenizer([" " + x for x in answers], add_special_tokens=False)["input_ids"] if answers else []
    return q, a


def question_ids(tokenizer: PreTrainedTokenizerFast, question: str) -> list[int]:
    return qa_ids(tokenizer, [question], [])[0][0]


def answer_ids(tokenizer: PreTrainedTokenizerFast, answer: str) -> list[int]:
    """Token ids of an answer as it follows a question or sits inside a biography."""
    return qa_ids(tokenizer, [], [answer])[1][0]


def decode_answer(tokenizer: PreTrainedTokenizerFast, ids: Iterable[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def value_token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Token range [i, j) of the value at characters [start, end) of an encoded text.

    The space before the value belongs to its first word (byte-level pre-tokenization),
    and with a small vocabulary it can be a token of its own, so the range starts at
    the first token that overlaps [start - 1, end). These are exactly `answer_ids`.
    """
    inside = [t for t, (s, e) in enumerate(offsets) if s < end and e > start - 1]
    return inside[0], inside[-1] + 1


def mention_token_spans(offsets: list[tuple[int, int]], text: str, name: str) -> list[tuple[int, int]]:
    """Token ranges of every mention of ``name`` in the encoded ``text``, in order, as `value_token_span`."""
    spans, at = [], text.find(name)
    while at >= 0:
        spans.append(value_token_span(offsets, at, at + len(name)))
        at = text.find(name, at + len(name))
    return spans
