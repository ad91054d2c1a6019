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
  answer has tokens (the paper's rule), loss on those only; or (``masking.answer: window``)
  a fixed window of masks trained to read the answer, end-of-text, then a filler.
  Variants (``masking.rate``, ``masking.span``): a per-bio rate drawn from U(0, 1) (MLM-U), masked
  diffusion's 1/t weights, and masking of whole attribute values; ``masking.all_values``: a share of bios
  with every value masked at once, the name left as the only cue.
- Reverse training (``causal.reverse``): the causal objective on each bio and on its reversal,
  names and attribute values kept whole (`reverse_bio`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from datasets import Dataset, Features, Sequence, Value
from transformers import PreTrainedTokenizerFast

from bidirect.config import CausalConfig, MaskingConfig
from bidirect.protocol import answer_window, lay_out
from bidirect.tokenizer import mention_token_spans, qa_ids, value_token_span

IGNORE = -100
STATIC_BUCKET = 64
DIFFUSION_MIN_RATE = 0.05  # masked diffusion's t is floored here for its 1/t weight: a rarely masked bio weighs <= 20
MASKED_FEATURES = Features(
    {"input_ids": Sequence(Value("int32")), "word_ids": Sequence(Value("int32")), "labels": Sequence(Value("int64"))}
)
VALUE_FEATURES = Features({**MASKED_FEATURES, "value_ids": Sequence(Value("int32"))})  # masking.span: attribute


def _labelled(ids: list[int], where: list[int], want: list[int], fill: int = IGNORE) -> tuple[list[int], list[int]]:
    """A laid-out QA example (`protocol.lay_out`) as (input_ids, labels): each read position's token as its label,
    ``fill`` at the read positions after them (an answer window's tail), no loss elsewhere."""
    labels = [IGNORE] * len(ids)
    for k, at in enumerate(where):
        labels[at] = want[k] if k < len(want) else fill
    return ids, labels


def tokenize_bios(bios: Dataset, tokenizer: PreTrainedTokenizerFast, values: bool = False,
                  names: Mapping[int, str] | None = None) -> Dataset:
    """Token ids and word ids of every bio (word ids drive whole-word masking).

    ``values``: also ``value_ids``, the attribute index of each token inside an attribute value
    (-1 elsewhere), from the bios' character spans, with the same tokens as `value_token_span`
    (for attribute-span masking). ``names`` (individual id -> full name): also ``name_ids``, the
    number of the name's mention each token belongs to (-1 elsewhere), for reverse training."""
    offsets_needed = values or names is not None

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["text"], add_special_tokens=False, return_offsets_mapping=offsets_needed)
        word_ids = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(batch["text"]))]
        out = {"input_ids": enc["input_ids"], "word_ids": word_ids}
        if values:
            out["value_ids"] = [
                _span_ids(len(offsets), [value_token_span(offsets, s, e) for s, e in zip(starts, ends)])
                for offsets, starts, ends in zip(enc["offset_mapping"], batch["value_start"], batch["value_end"])]
        if names is not None:
            out["name_ids"] = [_span_ids(len(offsets), mention_token_spans(offsets, text, names[person]))
                               for offsets, text, person in zip(enc["offset_mapping"], batch["text"], batch["id"])]
        return out

    return bios.map(encode, batched=True, remove_columns=["text"], keep_in_memory=True, desc="tokenize bios")


def _span_ids(length: int, spans: list[tuple[int, int]]) -> list[int]:
    """For each of ``length`` tokens, the index of the token range in ``spans`` it lies in, else -1."""
    ids = [-1] * length
    for k, (i, j) in enumerate(spans):
        ids[i:j] = [k] * (j - i)
    return ids


def reverse_bio(ids: list[int], word_ids: list[int], value_ids: list[int], name_ids: list[int]) -> list[int]:
    """A bio's tokens in reversed word order, each name mention and attribute value kept whole and in its own
    order (entity-preserving reversal, Golovneva et al. 2024): the tokens of one word, value or name form a
    unit, and the units are read back to front."""
    units: list[tuple[tuple, list[int]]] = []
    for t, token in enumerate(ids):
        if name_ids[t] >= 0:
            key: tuple = ("name", name_ids[t])
        elif value_ids[t] >= 0:
            key = ("value", value_ids[t])
        else:
            key = ("word", word_ids[t]) if word_ids[t] >= 0 else ("token", t)
        if units and units[-1][0] == key:
            units[-1][1].append(token)
        else:
            units.append((key, [token]))
    return [token for _, tokens in reversed(units) for token in tokens]


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


class _Objective:
    """What both objectives share: the context and whether batches have static shapes."""

    static = False  # pad batches to a few lengths only (see _batch_length): torch.compile traces each shape once
    reverse = False  # bios also trained on reversed (CausalLM only)

    def with_static_shapes(self) -> _Objective:
        """A copy that pads every batch to one of a few lengths, for a compiled model."""
        other = copy.copy(self)
        other.static = True
        return other


class CausalLM(_Objective):
    kind = "causal"

    def __init__(self, tokenizer: PreTrainedTokenizerFast, context: int, reverse: bool = False):
        self.tokenizer, self.context, self.reverse = tokenizer, context, reverse
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def bio_examples(self, bios: Dataset, seed: int) -> Dataset:
        """Bios (tokenized) shuffled once with ``seed`` and packed into windows. With ``reverse`` (bios tokenized
        with ``values`` and ``names``), each bio's `reverse_bio` joins them before the shuffle."""
        if self.reverse:
            backwards = [reverse_bio(*row) for row in zip(bios["input_ids"], bios["word_ids"], bios["value_ids"],
                                                          bios["name_ids"])]
            bios = Dataset.from_dict({"input_ids": list(bios["input_ids"]) + backwards})
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
                # logits at position t predict token t+1: the last question token predicts
                # the first answer token, the last answer token predicts eos.
                yield _labelled(*lay_out(self.kind, q, a, self.eos, self.tokenizer.mask_token_id))

        return Dataset.from_dict(_pack(docs(), self.context))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return _pad(items, self.pad, with_positions=True, length=_batch_length(items, self.context, self.static))

    __call__ = collate


class MaskedLM(_Objective):
    kind = "masked"

    def __init__(self, tokenizer: PreTrainedTokenizerFast, context: int, masking: MaskingConfig, seed: int = 0):
        self.tokenizer, self.context, self.masking, self.seed, self.epoch = tokenizer, context, masking, seed, 0
        self.mask, self.pad, self.eos = tokenizer.mask_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)
        self.special = set(tokenizer.all_special_ids)
        self.values = masking.needs_values  # examples carry value_ids (see tokenize_bios)
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
        """The question, then one mask per answer token (``masking.answer: exact``), or an answer window
        whose targets are the answer, end-of-text and the filler (``window``): `protocol.lay_out`."""
        window = answer_window(self.masking.answer, max(len(a) for a in qa["answer_ids"]))
        fill = {"eos": self.eos, "pad": self.pad, "none": IGNORE}[self.masking.window_pad]

        def encode(row: dict[str, Any]) -> dict[str, list[int]]:
            ids, labels = _labelled(*lay_out(self.kind, row["question_ids"], row["answer_ids"], self.eos, self.mask,
                                             window), fill)
            out = {"input_ids": ids[: self.context], "labels": labels[: self.context], "word_ids": []}
            if self.values:
                out["value_ids"] = []
            return out

        out = qa.map(encode, remove_columns=qa.column_names, features=self.features, keep_in_memory=True)
        return out.shuffle(seed=seed, keep_in_memory=True)

    def reveal_answers(self, ids: torch.Tensor, labels: torch.Tensor, items: list[dict[str, Any]]) -> None:
        """``masking.window_rate: uniform``, in place on padded QA rows: each row draws t from U(0, 1) and keeps
        each labelled window position masked with probability t (at least one); the others show their target and
        carry no loss, as masked diffusion's fine-tuning trains every stage of a partly filled answer."""
        for row, item in enumerate(items):
            where = (labels[row] != IGNORE).nonzero().flatten()
            if not len(where):
                continue
            g = self._generator(item)
            t = float(torch.rand((), generator=g))
            u = torch.rand(len(where), generator=g)
            keep = u < t
            keep[int(u.argmin())] = True
            shown = where[~keep]
            ids[row, shown] = labels[row, shown]
            labels[row, shown] = IGNORE

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at each pass over the stream, like a sampler's set_epoch."""
        self.epoch = epoch

    def _generator(self, item: dict[str, Any]) -> torch.Generator:
        # Seeded by (seed, epoch, row index), not the global RNG: an example's masks do not depend on the batch it
        # lands in, on how many processes share the stream, on loader workers, or on how far ahead the loader
        # prefetched when a checkpoint was taken, so a resumed run is bit-identical. Without an index (a stream
        # outside the trainer) the global RNG seeds it.
        if "index" in item:
            seed = hash((self.seed, self.epoch, int(item["index"]))) & (2**63 - 1)
        else:
            seed = int(torch.randint(2**62, ()))
        return torch.Generator().manual_seed(seed)

    def mask_bios(self, ids: torch.Tensor, items: list[dict[str, Any]]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whole-word masking of padded bios ``ids`` (rows of ``items``): the masked ids, their labels, and each
        bio's mask rate (``probability``, or the bio's own draw under ``rate: uniform`` or ``diffusion``).

        A word (``word_ids``, -1: none) is chosen with probability ``masking.probability`` (``rate: uniform``:
        a per-bio probability drawn from U(0, 1) first, MLM-U), at least one per bio, and has one fate for all
        its tokens: mask token, a random token, or kept. ``value_ids`` (``span: attribute``): a value with a
        chosen word is chosen whole and follows its first word's fate. Special tokens are never labelled.
        ``all_values``: a bio drawn with that probability is masked otherwise: every token of every attribute
        value becomes the mask token and carries a label, and nothing else does.

        Each row draws its uniforms from its own generator (see `_generator`) in a fixed order: the rate, then
        one per word to choose it, one per word for its fate, one for the fallback word, then (``all_values``
        above 0 only, so that runs made without it keep their masks) one for the all-values draw; then one random
        token per replaced position, in order. Everything else is tensor arithmetic over the batch.
        """
        rows, length = ids.shape
        word = _rows(items, "word_ids", -1, length)
        value = _rows(items, "value_ids", -1, length) if self.values else torch.full((rows, length), -1)
        # Word ids rise along a bio (the pre-tokenizer splits left to right): a word's rank among the row's words
        # is the number of word starts up to it.
        in_word = word >= 0
        starts = in_word & (word != torch.cat([torch.full((rows, 1), -1), word[:, :-1]], 1))
        rank = torch.where(in_word, starts.cumsum(1) - 1, 0)
        n_words = starts.sum(1)
        width = max(int(n_words.max()), 1)

        generators = [self._generator(item) for item in items]
        p = torch.full((rows,), self.masking.probability, dtype=torch.float64)
        share = self.masking.all_values
        every_value = torch.zeros(rows, dtype=torch.bool)  # rows masked by the all-values rule
        draws = []
        for r, (g, w) in enumerate(zip(generators, n_words.tolist())):
            if self.masking.rate in ("uniform", "diffusion"):
                p[r] = float(torch.rand((), generator=g))
            draws.append(torch.rand(2 * w + 1, generator=g))
            if share > 0:
                every_value[r] = float(torch.rand((), generator=g)) < share
        # Row r's draws start at start[r]: its words' choices, then their fates, then the fallback's.
        flat = torch.cat(draws).double()  # compared in float64, as Python floats
        start = torch.cumsum(2 * n_words + 1, 0) - (2 * n_words + 1)
        k = torch.arange(width)
        in_row = k < n_words[:, None]
        choose = torch.where(in_row, flat[(start[:, None] + k).clamp(max=len(flat) - 1)], 2.0)  # 2: never chosen
        fate = flat[(start[:, None] + n_words[:, None] + k).clamp(max=len(flat) - 1)]
        fallback = flat[start + 2 * n_words]
        chosen = choose < p[:, None]
        lonely = ~chosen.any(1) & (n_words > 0)  # a bio with no masked word teaches nothing; mask one
        pick = (fallback * n_words).long().clamp(max=width - 1)
        chosen[lonely, pick[lonely]] = True

        unit = torch.arange(width).expand(rows, width).clone()  # the word whose choice and fate a word follows
        if self.masking.span == "attribute":  # a value is one unit of choice and fate
            in_value = in_word & (value >= 0)
            slots = int(value.max()) + 1 if in_value.any() else 1
            value_at = value.clamp(min=0)
            first = torch.full((rows, slots), width, dtype=torch.long)  # a value's first word
            first.scatter_reduce_(1, value_at, torch.where(in_value, rank, width), "amin")
            # A word follows the value of its last token inside a value (a word can end in punctuation).
            position = torch.arange(length).expand(rows, length)
            last = torch.full((rows, width), -1, dtype=torch.long)
            last.scatter_reduce_(1, rank, torch.where(in_value, position, -1), "amax")
            has = last >= 0
            unit[has] = first.gather(1, value_at.gather(1, last.clamp(min=0)))[has]
            chosen = torch.zeros((rows, width), dtype=torch.long).scatter_reduce_(1, unit, chosen.long(), "amax").bool()

        token_unit = unit.gather(1, rank)
        special = torch.isin(ids, torch.tensor(sorted(self.special)))
        labelled = in_word & chosen.gather(1, token_unit) & ~special
        r = fate.gather(1, token_unit)
        to_mask = labelled & (r < self.masking.replace_mask)
        to_random = labelled & ~to_mask & (r < self.masking.replace_mask + self.masking.replace_random)
        if share > 0:
            values = every_value[:, None] & (value >= 0) & ~special
            labelled = torch.where(every_value[:, None], values, labelled)
            to_mask = torch.where(every_value[:, None], values, to_mask)
            to_random &= ~every_value[:, None]
        out = torch.where(to_mask, self.mask, ids)
        for row, k in enumerate(to_random.sum(1).tolist()):
            if k:
                out[row, to_random[row]] = torch.randint(len(self.special), self.vocab_size, (k,),
                                                         generator=generators[row])
        return out, torch.where(labelled, ids, IGNORE), p

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a batch, masking its bios afresh (rows with ``word_ids``; QA rows come masked).

        ``rate: diffusion`` adds ``weights``, each labelled token's weight in the loss: 1/t for a bio masked at
        rate t (t floored at DIFFUSION_MIN_RATE), 1 for QA. The trainer takes the weighted mean over labelled
        tokens; a bio of L tokens masked at rate t has about tL of them, so its share is L times MDLM's
        per-position bound (1/(tL)) * (sum of its masked tokens' losses): the weighted mean is that bound
        averaged over the batch's positions."""
        batch = _pad(items, self.pad, with_positions=False, length=_batch_length(items, self.context, self.static))
        bios = [i for i, item in enumerate(items) if item["word_ids"]]
        rate = torch.ones(len(items), dtype=torch.float64)  # QA rows: weight 1
        if bios:
            ids, labels, rate[bios] = self.mask_bios(batch["input_ids"][bios], [items[i] for i in bios])
            batch["input_ids"][bios], batch["labels"][bios] = ids, labels
        qa = [i for i, item in enumerate(items) if not item["word_ids"]]
        if qa and self.masking.answer == "window" and self.masking.window_rate == "uniform":
            ids, labels = batch["input_ids"][qa], batch["labels"][qa]
            self.reveal_answers(ids, labels, [items[i] for i in qa])
            batch["input_ids"][qa], batch["labels"][qa] = ids, labels
        if self.masking.rate == "diffusion":
            weight = (1 / rate.clamp(min=DIFFUSION_MIN_RATE)).float()[:, None]
            batch["weights"] = torch.where(batch["labels"] != IGNORE, weight, 0.0)
        return batch

    __call__ = collate


def _batch_length(items: list[dict[str, Any]], context: int, static: bool) -> int:
    """The longest item; with ``static``, rounded up to a multiple of STATIC_BUCKET (at most ``context``): packed
    causal windows are nearly all full, so nearly every batch is ``context`` long, and bios fall in one or two
    buckets. Not the default: a batch padded further computes the same loss to float rounding only, and every
    committed result was trained with the longest-item rule."""
    longest = max(len(it["input_ids"]) for it in items)
    return min(context, -(-longest // STATIC_BUCKET) * STATIC_BUCKET) if static else longest


def _rows(items: list[dict[str, Any]], key: str, fill: int, length: int) -> torch.Tensor:
    """Column ``key`` of ``items`` right-filled to ``length``, in one tensor (one call, not one per row)."""
    return torch.tensor([list(it[key]) + [fill] * (length - len(it[key])) for it in items], dtype=torch.long)


def _pad(items: list[dict[str, Any]], pad_id: int, with_positions: bool, length: int) -> dict[str, torch.Tensor]:
    """Right-pad to ``length``; padding never carries a label.

    Packed causal windows get position ids instead of an attention mask: transformers
    builds the block-diagonal causal mask from where positions restart, and the padding
    at a window's tail, numbered as a segment of its own, is never attended to by the
    real tokens before it.
    """
    ids = _rows(items, "input_ids", pad_id, length)
    labels = _rows(items, "labels", IGNORE, length)  # bios have none yet: the masking draws them
    lengths = torch.tensor([len(it["input_ids"]) for it in items])
    attention = (torch.arange(length) < lengths[:, None]).long()
    if with_positions:
        positions = torch.tensor([list(it["position_ids"]) + list(range(length - len(it["position_ids"])))
                                  for it in items], dtype=torch.long)
    batch = {"input_ids": ids, "labels": labels}
    if with_positions:
        batch["position_ids"] = positions
    else:
        batch["attention_mask"] = attention
    if "index" in items[0]:  # row numbers in the stream, to name the examples of a failing batch
        batch["index"] = torch.tensor([it["index"] for it in items])
    return batch


def make_objective(kind: str, tokenizer: PreTrainedTokenizerFast, context: int, masking: MaskingConfig,
                   seed: int = 0, causal: CausalConfig | None = None) -> CausalLM | MaskedLM:
    """The objective that goes with a backbone's kind (``causal`` and ``masking`` configure each). It is also
    the collate function."""
    if kind == "causal":
        return CausalLM(tokenizer, context, reverse=causal is not None and causal.reverse)
    if kind == "masked":
        return MaskedLM(tokenizer, context, masking, seed)
    raise ValueError(f"unknown backbone kind {kind!r}; allowed: 'causal', 'masked'")
