"""Training objectives: how bios and QA become (input_ids, labels) for each kind of backbone.

Labels are aligned with the logits: ``labels[t]`` is the target of ``logits[t]`` and -100
means "no loss here". The causal objective shifts its labels itself, so the trainer
computes one loss for every backbone, ``cross_entropy(logits, labels)``, and knows
nothing about which kind it trains.

- `CausalLM`: documents joined by end-of-text and packed into windows of ``context``
  tokens; position ids restart at every document, which transformers turns into a
  block-diagonal causal mask (no attention across documents). QA is packed the same
  way with loss on the answer tokens and the end-of-text after them only.
- `MaskedLM`: one bio per row; whole-word masking is drawn afresh in every batch, with
  word boundaries from the byte-level pre-tokenizer (each word keeps its leading space),
  not from WordPiece ``##`` pieces. QA: the question, then as many mask tokens as the
  answer has tokens (the paper's rule), loss on those only.
  Variants (``masking.rate``, ``masking.span``): a per-bio rate drawn from U(0, 1) (MLM-U) and
  masking of whole attribute values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from datasets import Dataset, Features, Sequence, Value
from transformers import PreTrainedTokenizerFast

from bidirect.config import MaskingConfig
from bidirect.tokenizer import qa_ids, value_token_span

IGNORE = -100
MASKED_FEATURES = Features(
    {"input_ids": Sequence(Value("int32")), "word_ids": Sequence(Value("int32")), "labels": Sequence(Value("int64"))}
)
VALUE_FEATURES = Features({**MASKED_FEATURES, "value_ids": Sequence(Value("int32"))})  # masking.span: attribute


def tokenize_bios(bios: Dataset, tokenizer: PreTrainedTokenizerFast, values: bool = False) -> Dataset:
    """Token ids and word ids of every bio (word ids drive whole-word masking).

    ``values``: also ``value_ids``, the attribute index of each token inside an attribute value
    (-1 elsewhere), from the bios' character spans, with the same tokens as `value_token_span`
    (for attribute-span masking)."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["text"], add_special_tokens=False, return_offsets_mapping=values)
        word_ids = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(batch["text"]))]
        out = {"input_ids": enc["input_ids"], "word_ids": word_ids}
        if values:
            out["value_ids"] = []
            for offsets, starts, ends in zip(enc["offset_mapping"], batch["value_start"], batch["value_end"]):
                value_ids = [-1] * len(offsets)
                for a, (start, end) in enumerate(zip(starts, ends)):
                    i, j = value_token_span(offsets, start, end)
                    value_ids[i:j] = [a] * (j - i)
                out["value_ids"].append(value_ids)
        return out

    return bios.map(encode, batched=True, remove_columns=["text"], keep_in_memory=True, desc="tokenize bios")


def encode_qa(qa: Dataset, tokenizer: PreTrainedTokenizerFast) -> Dataset:
    """Question and answer token ids, separately, so the answer is the same ids as in a bio."""

    def encode(batch: dict[str, list]) -> dict[str, list[list[int]]]:
        q, a = qa_ids(tokenizer, batch["question"], batch["answer"])
        return {"question_ids": q, "answer_ids": a}

    return qa.map(encode, batched=True, keep_in_memory=True, desc="tokenize QA")


def _pack(docs: Iterator[tuple[list[int], list[int]]], context: int) -> dict[str, list[list[int]]]:
    """Concatenate (ids, labels) documents into full windows of ``context`` tokens.

    Position ids restart at each document. A window that would start in the middle of a
    document starts at that document's beginning instead (the tail of the previous
    window is padded), so no fact is split from the name it belongs to.
    """
    windows: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []

    def flush() -> None:
        if ids:
            windows["input_ids"].append(ids[:])
            windows["labels"].append(labels[:])
            windows["position_ids"].append(pos[:])
            ids.clear(), labels.clear(), pos.clear()

    for doc_ids, doc_labels in docs:
        doc_ids, doc_labels = doc_ids[:context], doc_labels[:context]
        if len(ids) + len(doc_ids) > context:
            flush()
        ids.extend(doc_ids)
        labels.extend(doc_labels)
        pos.extend(range(len(doc_ids)))
    flush()
    return windows


class CausalLM:
    kind = "causal"

    def __init__(self, tokenizer: PreTrainedTokenizerFast, context: int):
        self.tokenizer, self.context = tokenizer, context
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def bio_examples(self, bios: Dataset, seed: int) -> Dataset:
        """Bios (tokenized) shuffled once with ``seed`` and packed into windows."""
        order = bios.shuffle(seed=seed, keep_in_memory=True)

        def docs() -> Iterator[tuple[list[int], list[int]]]:
            for ids in order["input_ids"]:
                ids = ids + [self.eos]
                yield ids, ids[1:] + [IGNORE]  # next-token targets; nothing after the last eos

        return Dataset.from_dict(_pack(docs(), self.context))

    def qa_examples(self, qa: Dataset, seed: int) -> Dataset:
        """QA packed into windows; the loss covers the answer tokens and the eos after them."""
        order = qa.shuffle(seed=seed, keep_in_memory=True)

        def docs() -> Iterator[tuple[list[int], list[int]]]:
            for q, a in zip(order["question_ids"], order["answer_ids"]):
                ids = q + a + [self.eos]
                # logits at position t predict token t+1: the last question token predicts
                # the first answer token, the last answer token predicts eos.
                labels = [IGNORE] * (len(q) - 1) + a + [self.eos] + [IGNORE]
                yield ids, labels

        return Dataset.from_dict(_pack(docs(), self.context))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return _pad(items, self.pad, with_positions=True)

    __call__ = collate


class MaskedLM:
    kind = "masked"

    def __init__(self, tokenizer: PreTrainedTokenizerFast, context: int, masking: MaskingConfig, seed: int = 0):
        self.tokenizer, self.context, self.masking, self.seed, self.epoch = tokenizer, context, masking, seed, 0
        self.mask, self.pad, self.eos = tokenizer.mask_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)
        self.special = set(tokenizer.all_special_ids)
        self.values = masking.span == "attribute"  # examples carry value_ids (see tokenize_bios)
        self.features = VALUE_FEATURES if self.values else MASKED_FEATURES

    def bio_examples(self, bios: Dataset, seed: int) -> Dataset:
        # Every example has the same columns (three, or four with value_ids), so that bios and QA can share a stream
        # (the mixed protocol); ``word_ids`` non-empty means "mask me in the collator".
        def keep(row: dict[str, Any]) -> dict[str, list[int]]:
            n = self.context
            out = {"input_ids": row["input_ids"][:n], "word_ids": row["word_ids"][:n], "labels": []}
            if self.values:
                out["value_ids"] = row["value_ids"][:n]
            return out

        cols = [c for c in bios.column_names if c not in self.features]
        out = bios.map(keep, remove_columns=cols, features=self.features, keep_in_memory=True)
        return out.shuffle(seed=seed, keep_in_memory=True)

    def qa_examples(self, qa: Dataset, seed: int) -> Dataset:
        def encode(row: dict[str, Any]) -> dict[str, list[int]]:
            q, a = row["question_ids"], row["answer_ids"]
            ids = q + [self.mask] * len(a) + [self.eos]
            labels = [IGNORE] * len(q) + a + [IGNORE]
            out = {"input_ids": ids[: self.context], "labels": labels[: self.context], "word_ids": []}
            if self.values:
                out["value_ids"] = []
            return out

        out = qa.map(encode, remove_columns=qa.column_names, features=self.features, keep_in_memory=True)
        return out.shuffle(seed=seed, keep_in_memory=True)

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at each pass over the stream, like a sampler's set_epoch."""
        self.epoch = epoch

    def mask_words(self, ids: list[int], word_ids: list[int], rng: torch.Generator | None = None,
                   value_ids: list[int] | None = None) -> tuple[list[int], list[int]]:
        """Whole-word masking. ``word_ids[t]`` is the word of token t (-1: none); special
        tokens are never masked.

        ``masking.rate: uniform`` draws this bio's probability from U(0, 1) first (MLM-U).
        ``value_ids`` (``masking.span: attribute``): the attribute value of each token (-1: none);
        a value with a chosen word is chosen whole, with one fate (its first word's) for all of it.
        """
        p = self.masking.probability
        if self.masking.rate == "uniform":
            p = float(torch.rand((), generator=rng))
        words = sorted({w for w in word_ids if w >= 0})
        draws = torch.rand(2 * len(words) + 1, generator=rng).tolist()
        chosen = {w for w, r in zip(words, draws) if r < p}
        if not chosen and words:  # a bio with no masked word teaches nothing; mask one
            chosen = {words[int(draws[-1] * len(words))]}
        fate = dict(zip(words, draws[len(words):]))  # one fate per word: masked, kept or replaced whole
        unit = {w: w for w in words}  # the word whose choice and fate a word follows
        if value_ids:
            first: dict[int, int] = {}
            for w, v in zip(word_ids, value_ids):
                if w >= 0 and v >= 0:
                    unit[w] = first.setdefault(v, w)
            chosen = {unit[w] for w in chosen}
        out, labels = list(ids), [IGNORE] * len(ids)
        for t, w in enumerate(word_ids):
            if w < 0 or unit[w] not in chosen or ids[t] in self.special:
                continue
            labels[t] = ids[t]
            r = fate[unit[w]]
            if r < self.masking.replace_mask:
                out[t] = self.mask
            elif r < self.masking.replace_mask + self.masking.replace_random:
                out[t] = int(torch.randint(len(self.special), self.vocab_size, (), generator=rng))
        return out, labels

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a batch, masking bios afresh.

        The masks of an example are drawn from a generator seeded by (seed, epoch, row
        index), not from the global RNG: they do not depend on the batch the example
        lands in, on how many processes share the stream, or on how far ahead the data
        loader prefetched when a checkpoint was taken, so a resumed run is bit-identical.
        """
        rows = []
        for item in items:
            row = dict(item)
            if item["word_ids"]:
                rng = None
                if "index" in item:
                    rng = torch.Generator().manual_seed(hash((self.seed, self.epoch, item["index"])) & (2**63 - 1))
                row["input_ids"], row["labels"] = self.mask_words(item["input_ids"], item["word_ids"], rng,
                                                                  item.get("value_ids"))
            rows.append(row)
        return _pad(rows, self.pad, with_positions=False)

    __call__ = collate


def _pad(items: list[dict[str, Any]], pad_id: int, with_positions: bool) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item; padding never carries a label.

    Packed causal windows get position ids instead of an attention mask: transformers
    builds the block-diagonal causal mask from where positions restart, and the padding
    at a window's tail, numbered as a segment of its own, is never attended to by the
    real tokens before it.
    """
    length = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(items), length), dtype=torch.long)
    positions = torch.arange(length).repeat(len(items), 1)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        ids[i, :n] = torch.tensor(it["input_ids"])
        labels[i, :n] = torch.tensor(it["labels"])
        attention[i, :n] = 1
        if with_positions:
            positions[i, :n] = torch.tensor(it["position_ids"])
            positions[i, n:] = torch.arange(length - n)
    batch = {"input_ids": ids, "labels": labels}
    if with_positions:
        batch["position_ids"] = positions
    else:
        batch["attention_mask"] = attention
    if "index" in items[0]:  # row numbers in the stream, to name the examples of a failing batch
        batch["index"] = torch.tensor([it["index"] for it in items])
    return batch


def make_objective(kind: str, tokenizer: PreTrainedTokenizerFast, context: int, masking: MaskingConfig,
                   seed: int = 0) -> CausalLM | MaskedLM:
    """The objective that goes with a backbone's kind. It is also the collate function."""
    if kind == "causal":
        return CausalLM(tokenizer, context)
    if kind == "masked":
        return MaskedLM(tokenizer, context, masking, seed)
    raise ValueError(f"unknown backbone kind {kind!r}; allowed: 'causal', 'masked'")
