"""P-probing and Q-probing (STUDY.md, "Beyond the paper's table"): where in a trained model the knowledge sits.

The backbone is frozen. A probe is

- a rank-2 update of the input embedding, ``E + A @ B`` (``A``: vocabulary x 2, zero at the start, ``B``: 2 x width),
  added to the embedding module's output by a forward hook, so the tied LM head is untouched;
- per attribute, a LayerNorm and a linear classifier over that attribute's classes (the distinct values of the
  attribute in the individuals table) reading the last hidden layer (``output_hidden_states=True``).

The one embedding update is shared by the six attributes (one forward pass per sequence, the six losses summed):
it is rank 2, so it can re-weight what the network computes but cannot store a table of people.

- **Q-probing** reads the hidden state at the last token of the bare full name, tokenized as its own sequence with
  a leading space (``" " + full_name``), positions from 0: the ids a name has in every QA question and every
  biography (the tokenizer adds the space before a text's first word, so a biography that opens with the name
  has the same ids).
- **P-probing** reads, in the person's first biography, the hidden state at the token just before each attribute's
  value (``value_token_span(...)[0] - 1``; the span starts at the value's leading space).

Probes are trained on P_train individuals (Adam, ``steps`` random batches) and scored on P_test individuals.
Majority baseline beside them: the most common P_train value, scored on P_test (`majority_baseline`).

Masked backbones read the same positions. For P-probing every value of the biography is replaced by mask tokens
(as many as it has): a bidirectional model reads the tokens after the read position, so an unmasked biography
would let it copy the value from the very next tokens and the probe would measure copying, not knowledge. All six
are masked at once (not only the probed one) to keep one forward pass per biography; the masked model then sees
the name and the sentence templates but no value, while a causal model at attribute k sees the values written
before it. So masked backbones are also probed on equal terms with the causal ones (``P_prefix``): for attribute
k the biography cut just after the read position, unmasked, which is exactly what a causal model sees there
(six forward passes per biography). Both are reported; for a causal model the two are the same by construction.
Q-probing needs no masking: the name is all there is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.table import Table
from torch import nn

from bidirect.analysis.cells import merge_cells, select_cells
from bidirect.data.generate import StudyData
from bidirect.evaluate import first_bio_spans, majority_baseline, score_forward
from bidirect.models import backbone_kind, load_backbone
from bidirect.ownership import check_analysis_target, writing
from bidirect.results import ATTRIBUTES
from bidirect.rundir import PROBE_FILE, RunDirError, RunFolder, read_tokenizer, write_json_atomic

MODE_NAMES = {"P": "P", "P_prefix": "P, prefix only", "Q": "Q"}
RANK = 2


# --------------------------------------------------------------------------- the probe


class EmbeddingDelta(nn.Module):
    """A trainable rank-``rank`` update of an embedding's output: ``E[t] + A[t] @ B``, hooked onto the module."""

    def __init__(self, embedding: nn.Embedding, rank: int = RANK, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.zeros(embedding.num_embeddings, rank))
        self.b = nn.Parameter(torch.randn(rank, embedding.embedding_dim, generator=g) / math.sqrt(rank))
        self._handle = embedding.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + (F.embedding(args[0], self.a) @ self.b).to(output.dtype)

    def remove(self) -> None:
        self._handle.remove()


class ProbeHeads(nn.Module):
    """Per attribute a LayerNorm and a linear classifier; input (batch, attributes, width)."""

    def __init__(self, width: int, classes: Sequence[int]):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in classes)
        self.linears = nn.ModuleList(nn.Linear(width, n) for n in classes)

    def forward(self, reps: torch.Tensor) -> list[torch.Tensor]:
        return [lin(norm(reps[:, a])) for a, (norm, lin) in enumerate(zip(self.norms, self.linears, strict=True))]


Reps = Callable[[list[int]], torch.Tensor]  # row indices -> (rows, attributes, width)


def train_heads(heads: ProbeHeads, reps: Reps, labels: torch.Tensor, train_rows: Sequence[int], steps: int,
                extra: Sequence[nn.Parameter] = (), batch_size: int = 32, lr: float = 3e-3,
                seed: int = 0) -> list[float]:
    """Adam on the heads (and ``extra``, the embedding update) over random batches of ``train_rows``; the losses."""
    params = [*heads.parameters(), *extra]
    optimizer = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    rows = torch.tensor(list(train_rows))
    losses = []
    for _ in range(steps):
        batch = rows[torch.randint(len(rows), (min(batch_size, len(rows)),), generator=g)].tolist()
        logits = heads(reps(batch))
        target = labels[batch]
        loss = sum(F.cross_entropy(lg, target[:, a]) for a, lg in enumerate(logits))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def score_heads(heads: ProbeHeads, reps: Reps, labels: torch.Tensor, rows: Sequence[int],
                batch_size: int = 64) -> list[float]:
    """Accuracy per attribute on ``rows``."""
    hits = torch.zeros(labels.shape[1])
    rows = list(rows)
    for i in range(0, len(rows), batch_size):
        batch = rows[i : i + batch_size]
        logits = heads(reps(batch))
        for a, lg in enumerate(logits):
            hits[a] += (lg.argmax(-1) == labels[batch, a]).sum()
    return (hits / max(len(rows), 1)).tolist()


# --------------------------------------------------------------------------- inputs


@dataclass
class ProbeInputs:
    ids: list[list[int]]  # one sequence per individual
    read: list[list[int]]  # per individual, the read position of each attribute
    labels: torch.Tensor  # (individuals, attributes) class indices
    train_rows: list[int]
    test_rows: list[int]
    prefix: bool = False  # each attribute reads its own copy of the sequence, cut after its read position


def _classes(data: StudyData) -> tuple[list[dict[str, int]], torch.Tensor]:
    people = data.individuals
    index = [{v: i for i, v in enumerate(sorted(set(people[a])))} for a in ATTRIBUTES]
    labels = torch.tensor([[index[k][people[a][p]] for k, a in enumerate(ATTRIBUTES)] for p in range(len(people))])
    return index, labels


def probe_inputs(mode: str, tokenizer, data: StudyData, augmentation: str, kind: str) -> ProbeInputs:
    """The sequences and read positions of P- (``mode="P"``, ``"P_prefix"``) or Q-probing, one row per
    individual (row = id)."""
    people = data.individuals
    if list(people["id"]) != list(range(len(people))):
        raise RunDirError("individuals table: ids are not 0..N-1 in order; regenerate the run's data")
    _, labels = _classes(data)
    split = people["split"]
    train = [p for p in range(len(people)) if split[p] == "train"]
    test = [p for p in range(len(people)) if split[p] == "test"]
    if mode == "Q":
        ids = tokenizer([" " + n for n in people["full_name"]], add_special_tokens=False)["input_ids"]
        return ProbeInputs(ids, [[len(x) - 1] * len(ATTRIBUTES) for x in ids], labels, train, test)
    all_ids, reads = [], []
    for bio in first_bio_spans(tokenizer, data.bios[augmentation]):
        ids = list(bio.ids)
        if kind == "masked" and mode == "P":
            for i, j in bio.spans:
                ids[i:j] = [tokenizer.mask_token_id] * (j - i)
        all_ids.append(ids)
        reads.append([max(i - 1, 0) for i, _ in bio.spans])
    return ProbeInputs(all_ids, reads, labels, train, test, prefix=mode == "P_prefix")


def model_reps(model, inputs: ProbeInputs, pad: int) -> Reps:
    """Row indices -> last-layer hidden states at each attribute's read position."""
    device = next(model.parameters()).device

    def reps(batch: list[int]) -> torch.Tensor:
        if inputs.prefix:  # per attribute, the sequence up to its read position: the read is the last token.
            # The six prefixes of a bio go through one forward pass together (person-major, attribute-minor).
            rows = [inputs.ids[r][: inputs.read[r][a] + 1] for r in batch for a in range(len(ATTRIBUTES))]
            return last_hidden(rows).view(len(batch), len(ATTRIBUTES), -1)
        rows = [inputs.ids[r] for r in batch]
        hidden = score_forward(model, rows, pad, device, output_hidden_states=True).hidden_states[-1]
        where = torch.tensor([inputs.read[r] for r in batch], device=device)  # (batch, attributes)
        return hidden[torch.arange(len(batch), device=device)[:, None], where].float()

    def last_hidden(rows: list[list[int]]) -> torch.Tensor:
        hidden = score_forward(model, rows, pad, device, output_hidden_states=True).hidden_states[-1]
        last = torch.tensor([len(r) - 1 for r in rows], device=device)
        return hidden[torch.arange(len(rows), device=device), last].float()

    return reps


def probe_model(model, kind: str, tokenizer, data: StudyData, augmentation: str, steps: int, batch_size: int = 32,
                lr: float = 3e-3, seed: int = 0) -> dict[str, dict[str, float]]:
    """P- and Q-probing accuracy on P_test, per attribute and their mean."""
    model.eval()
    model.requires_grad_(False)
    index, _ = _classes(data)
    out = {}
    for mode in ("P", "Q", *(("P_prefix",) if kind == "masked" else ())):
        inputs = probe_inputs(mode, tokenizer, data, augmentation, kind)
        torch.manual_seed(seed)
        delta = EmbeddingDelta(model.get_input_embeddings(), RANK, seed)
        heads = ProbeHeads(model.config.hidden_size, [len(i) for i in index])
        reps = model_reps(model, inputs, tokenizer.pad_token_id)
        try:
            train_heads(heads, reps, inputs.labels, inputs.train_rows, steps, list(delta.parameters()), batch_size,
                        lr, seed)
            acc = score_heads(heads, reps, inputs.labels, inputs.test_rows)
        finally:
            delta.remove()
        out[mode] = {a: acc[k] for k, a in enumerate(ATTRIBUTES)}
        out[mode]["mean"] = sum(acc) / len(acc)
    return out


def run_probe(run_dir: Path, augmentation: str | None = None, backbone: str | None = None, phase: str | None = None,
              steps: int = 300, batch_size: int = 32, lr: float = 3e-3) -> dict[str, Any]:
    """Probe every asked cell of a run and write RUN_DIR/probe.json (``results``: backbone -> aug -> P/Q)."""
    cfg, cells, phase = select_cells(run_dir, augmentation, backbone, phase)
    with writing(run_dir, "run"):  # the run's lock: no `bidirect run` or `eval` writes meanwhile
        run = RunFolder(run_dir)
        check_analysis_target(run.file(PROBE_FILE))  # before the models are read: a user's file there is refused
        data, tokenizer = StudyData.load(run.data), read_tokenizer(run_dir)
        out: dict[str, Any] = {"phase": phase, "steps": steps, "batch_size": batch_size, "lr": lr, "rank": RANK,
                               "majority_baseline": majority_baseline(data), "results": {}}
        for aug, name in cells:
            model = load_backbone(run.model(aug, name, phase))
            out["results"].setdefault(name, {})[aug] = probe_model(model, backbone_kind(name), tokenizer, data, aug,
                                                                   steps, batch_size, lr, cfg.seed)
        out = merge_cells(run.file(PROBE_FILE), out, ("phase", "steps", "batch_size", "lr", "rank"))
        write_json_atomic(run.file(PROBE_FILE), out)
    return out


def probe_table(out: dict[str, Any]) -> Table:
    table = Table(title=f"Probing accuracy on P_test (%), {out['phase']} models, {out['steps']} steps; "
                        "P: before the value in the first bio, Q: end of the bare name")
    table.add_column("augmentation")
    table.add_column("backbone")
    table.add_column("probe")
    for a in ATTRIBUTES:
        table.add_column(a.replace("_", " "), justify="right")
    table.add_column("mean", justify="right")
    for name, augs in out["results"].items():
        for aug, cell in augs.items():
            for mode in (m for m in ("P", "P_prefix", "Q") if m in cell):
                cells = (f"{100 * cell[mode][a]:.1f}" for a in [*ATTRIBUTES, "mean"])
                table.add_row(aug, name, MODE_NAMES[mode], *cells)
    base = out["majority_baseline"]
    table.add_row("", "majority", "", *(f"{100 * base[a]:.1f}" for a in [*ATTRIBUTES, "mean"]), style="dim")
    return table
