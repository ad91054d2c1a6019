"""Knowledge capacity (STUDY.md, "Beyond the paper's table"; the paper's Part 3.3): bits stored per parameter.

For each trained model, on each individual's first biography, the model's cross-entropy in bits on

- each attribute value's tokens (the ids of `value_token_span`, leading space included), and
- the full name's tokens (its first occurrence in the biography),

is compared with what the generator drew at random for that individual (its entropy, `generator_entropy`):

====================  ===========================================================================
birth date            log2(12 months x 28 days x 200 years)
birth city            log2(#birth cities in the pool)
university, major     log2(#universities), log2(#majors)
company               log2(#companies)
company city          0: a function of the company
full name             log2 C(K, N) / N, K = #first x #middle x #last names: the N distinct names
                      drawn as a set, shared equally among the N individuals
====================  ===========================================================================

Bits stored = sum over individuals and fields of ``max(0, H - loss_bits)``: what the generator put in minus what
the model still does not know of it (the paper's lower-bound idea: a model whose loss on a fact is L bits has
stored at least H - L bits of it). ``aggregate_bits`` is the stricter ``max(0, N*H - sum of losses)`` per field,
where a confident mistake on one person cancels what was stored about another. Both are divided by the parameter
counts (`parameter_counts`: total, and without the embeddings).

How the loss is read:

- causal: one forward pass over the biography; token t costs ``-log2 p(x_t | x_<t)``. The biography's first token
  has no prediction (a packed training window never predicts a document's first token), so when a name starts the
  biography its first token is charged log2(vocabulary size): nothing is credited for it.
- masked: the field's tokens are all masked and filled left to right, each token read with the ones before it
  revealed and the ones after it masked, the rest of the biography intact (the chain rule over the field, given
  its length, as the bio-recall evaluation fills it). One forward pass per token position of the longest field.
  Every other mention of the field is masked too: under ``fullname`` the name is written in every sentence, and a
  masked model that could see the other mentions would copy the name rather than recall it (a causal model reads
  the first mention, before any other, so it can never copy).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.table import Table

from bidirect.analysis.cells import merge_cells, select_cells
from bidirect.data.generate import MONTHS, StudyData
from bidirect.data.pools import Pools, load_pools
from bidirect.evaluate import first_bio_spans, pad_rows, score_forward
from bidirect.models import backbone_kind, load_backbone, parameter_counts
from bidirect.ownership import check_analysis_target, writing
from bidirect.results import ATTRIBUTES
from bidirect.rundir import CAPACITY_FILE, RunFolder, read_tokenizer, write_json_atomic
from bidirect.tokenizer import mention_token_spans

FIELDS = (*ATTRIBUTES, "full_name")
DAYS, YEARS = 28, 200  # rng.randint(1, 28), rng.randint(1900, 2099) in draw_individuals


def log2_comb(n: int, k: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def generator_entropy(individuals: int, pools: Pools | None = None) -> dict[str, float]:
    """Bits the generator draws per individual, per field (see the module docstring)."""
    pools = pools or load_pools()
    names = len(pools.first) * len(pools.middle) * len(pools.last)
    return {
        "birth_date": math.log2(len(MONTHS) * DAYS * YEARS),
        "birth_city": math.log2(len(pools.birth_cities)),
        "university": math.log2(len(pools.universities)),
        "major": math.log2(len(pools.majors)),
        "company": math.log2(len(pools.companies)),
        "company_city": 0.0,
        "full_name": log2_comb(names, individuals) / individuals,
    }


# --------------------------------------------------------------------------- the model's loss


def field_spans(tokenizer, data: StudyData, augmentation: str
                ) -> tuple[list[int], list[list[int]], list[list[tuple]], list[list[tuple]]]:
    """Per individual (in id order): its id, first biography's token ids, the token span of each of FIELDS
    (the name's first mention), and per field the spans of its other mentions (the name's, under fullname)."""
    names = dict(zip(data.individuals["id"], data.individuals["full_name"], strict=True))
    bios = first_bio_spans(tokenizer, data.bios[augmentation])
    spans_out, others_out = [], []
    for bio in bios:
        mentions = mention_token_spans(bio.offsets, bio.text, names[bio.person])
        if not mentions:
            raise ValueError(f"individual {bio.person}: the full name is not in the first {augmentation} biography")
        spans_out.append([*bio.spans, mentions[0]])
        others_out.append([[] for _ in ATTRIBUTES] + [mentions[1:]])
    return [bio.person for bio in bios], [bio.ids for bio in bios], spans_out, others_out


@torch.no_grad()
def _causal_losses(model, ids: list[list[int]], spans: list[list[tuple]], pad: int, vocab: int,
                   batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    out = torch.zeros(len(ids), len(FIELDS))
    for lo in range(0, len(ids), batch_size):
        batch = ids[lo : lo + batch_size]
        x, attention = pad_rows(batch, pad, device)  # the targets are the padded ids themselves
        logits = score_forward(model, (x, attention), pad, device).logits.float()
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").cpu() / math.log(2)
        for b in range(len(batch)):
            for f, (i, j) in enumerate(spans[lo + b]):
                out[lo + b, f] = sum(float(nll[b, t - 1]) if t > 0 else math.log2(vocab) for t in range(i, j))
    return out


@torch.no_grad()
def _masked_losses(model, ids: list[list[int]], spans: list[list[tuple]], pad: int, mask: int,
                   batch_size: int, others: list[list[list[tuple]]] | None = None) -> torch.Tensor:
    device = next(model.parameters()).device
    out = torch.zeros(len(ids), len(FIELDS))
    items = [(p, f, i, j) for p, sp in enumerate(spans) for f, (i, j) in enumerate(sp)]
    longest = max(j - i for _, _, i, j in items)
    for k in range(longest):
        live = [it for it in items if it[3] - it[2] > k]
        for lo in range(0, len(live), batch_size):
            batch = live[lo : lo + batch_size]
            rows = []
            for p, f, i, j in batch:
                row = list(ids[p])
                row[i + k : j] = [mask] * (j - i - k)  # tokens before i + k revealed, the rest of the field masked
                for oi, oj in others[p][f] if others else ():  # nothing to copy the field from
                    row[oi:oj] = [mask] * (oj - oi)
                rows.append(row)
            logits = score_forward(model, rows, pad, device).logits
            at = torch.tensor([i + k for _, _, i, _ in batch], device=device)
            want = torch.tensor([ids[p][i + k] for p, _, i, _ in batch], device=device)
            picked = logits[torch.arange(len(batch), device=device), at].float()
            nll = (F.cross_entropy(picked, want, reduction="none") / math.log(2)).cpu()
            for (p, f, _, _), v in zip(batch, nll.tolist(), strict=True):
                out[p, f] += v
    return out


def field_losses(model, kind: str, tokenizer, data: StudyData, augmentation: str,
                 batch_size: int = 32) -> torch.Tensor:
    """(individuals in id order, FIELDS) the model's cross-entropy in bits on each field of the first biography."""
    model.eval()
    _, ids, spans, others = field_spans(tokenizer, data, augmentation)
    if kind == "causal":
        return _causal_losses(model, ids, spans, tokenizer.pad_token_id, len(tokenizer), batch_size)
    return _masked_losses(model, ids, spans, tokenizer.pad_token_id, tokenizer.mask_token_id, batch_size, others)


# --------------------------------------------------------------------------- bits


def bits_stored(losses: torch.Tensor, entropy: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per field: entropy (per individual), mean loss (bits), bits stored (per-individual clamp) and the
    aggregate bound; plus attribute and name totals."""
    n = losses.shape[0]
    h = torch.tensor([entropy[f] for f in FIELDS], dtype=torch.float64)
    losses = losses.to(torch.float64)
    per = (h - losses).clamp(min=0).sum(0)
    agg = (n * h - losses.sum(0)).clamp(min=0)
    fields = {f: {"entropy_bits": entropy[f], "loss_bits": float(losses[:, k].mean()) if n else 0.0,
                  "bits": float(per[k]), "aggregate_bits": float(agg[k])} for k, f in enumerate(FIELDS)}
    attrs = [FIELDS.index(a) for a in ATTRIBUTES]
    return {
        "fields": fields,
        "individuals": n,
        "bits_attributes": float(per[attrs].sum()),
        "bits_names": float(per[FIELDS.index("full_name")]),
        "bits": float(per.sum()),
        "aggregate_bits": float(agg.sum()),
        "max_bits": float(n * h.sum()),
    }


def run_capacity(run_dir: Path, augmentation: str | None = None, backbone: str | None = None,
                 phase: str | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Capacity of every asked cell of a run; writes RUN_DIR/capacity.json (``results``: backbone -> aug)."""
    _, cells, phase = select_cells(run_dir, augmentation, backbone, phase)
    with writing(run_dir, "run"):  # the run's lock: no `bidirect run` or `eval` writes meanwhile
        run = RunFolder(run_dir)
        check_analysis_target(run.file(CAPACITY_FILE))  # before the models are read: a user's file there is refused
        data, tokenizer = StudyData.load(run.data), read_tokenizer(run_dir)
        entropy = generator_entropy(len(data.individuals))
        out: dict[str, Any] = {"phase": phase, "entropy_bits": entropy, "results": {}}
        for aug, name in cells:
            model = load_backbone(run.model(aug, name, phase))
            losses = field_losses(model, backbone_kind(name), tokenizer, data, aug, batch_size)
            cell = bits_stored(losses, entropy)
            counts = parameter_counts(model)
            cell["parameters"] = counts
            cell["bits_per_parameter"] = cell["bits"] / counts["total"]
            cell["bits_per_non_embedding_parameter"] = cell["bits"] / max(counts["non_embedding"], 1)
            out["results"].setdefault(name, {})[aug] = cell
        out = merge_cells(run.file(CAPACITY_FILE), out)
        write_json_atomic(run.file(CAPACITY_FILE), out)
    return out


def capacity_table(out: dict[str, Any]) -> Table:
    h = out["entropy_bits"]
    table = Table(title=f"Knowledge capacity, {out['phase']} models: bits stored = sum of max(0, H - loss) on the "
                        f"first bio; H = {sum(h[a] for a in ATTRIBUTES):.1f} attribute bits + "
                        f"{h['full_name']:.1f} name bits per person")
    for col in ("augmentation", "backbone", "people", "attribute bits", "name bits", "stored / max",
                "params (non-emb)", "bits/param", "bits/non-emb param"):
        table.add_column(col, justify="left" if col in ("augmentation", "backbone") else "right")
    for name, augs in out["results"].items():
        for aug, c in augs.items():
            p = c["parameters"]
            table.add_row(aug, name, str(c["individuals"]), f"{c['bits_attributes']:,.0f}", f"{c['bits_names']:,.0f}",
                          f"{100 * c['bits'] / c['max_bits']:.1f}%", f"{p['total']:,} ({p['non_embedding']:,})",
                          f"{c['bits_per_parameter']:.4f}", f"{c['bits_per_non_embedding_parameter']:.4f}")
    return table
