"""P-/Q-probing and knowledge capacity: on one tiny run, and their parts on synthetic inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import write_config
from torch import nn

from bidirect.analysis import capacity as capacity_lib
from bidirect.analysis.capacity import FIELDS, bits_stored, generator_entropy, log2_comb
from bidirect.analysis.probe import EmbeddingDelta, ProbeHeads, probe_inputs, score_heads, train_heads
from bidirect.cli import main
from bidirect.data.generate import StudyData
from bidirect.results import ATTRIBUTES
from bidirect.tokenizer import value_token_span

BACKBONES = ["gpt2-rope", "gbert"]  # one causal, one masked


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    config = write_config(root / "tiny.yaml", data__augmentations=["single"], backbones=BACKBONES)
    assert main(["run", str(config), "--out", str(root / "run")]) == 0
    return root / "run"


# --------------------------------------------------------------------------- probing


def test_probe_writes_p_and_q_for_every_attribute(tiny_run, capsys):
    assert main(["probe", str(tiny_run), "--steps", "3"]) == 0
    assert "Probing accuracy" in capsys.readouterr().out
    out = json.loads((tiny_run / "probe.json").read_text())
    p_test = StudyData.load(tiny_run / "data").individuals["split"].count("test")
    assert p_test == 12  # 24 people, half in P_test
    assert out["phase"] == "pretrain" and set(out["majority_baseline"]) >= set(ATTRIBUTES)
    for backbone in BACKBONES:
        cell = out["results"][backbone]["single"]
        # masked backbones are also probed on the causal model's view (the bio cut after the read token)
        modes = ("P", "Q", "P_prefix") if backbone == "gbert" else ("P", "Q")
        assert set(cell) == set(modes)
        for mode in modes:
            assert set(cell[mode]) == {*ATTRIBUTES, "mean"}
            assert cell[mode]["mean"] == pytest.approx(sum(cell[mode][a] for a in ATTRIBUTES) / len(ATTRIBUTES))
            # an accuracy is a count of P_test people over their number
            assert all(cell[mode][a] * p_test == pytest.approx(round(cell[mode][a] * p_test)) for a in ATTRIBUTES)


def test_prefix_probe_sees_what_a_causal_model_sees(study_data, tokenizer):
    """For a causal model, reading the whole bio and reading it cut after the read token are the same
    hidden states: so P_prefix gives a masked model exactly the causal model's view."""
    from bidirect.analysis.probe import model_reps
    from bidirect.config import ModelSize
    from bidirect.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone("gpt2-rope", ModelSize(layers=1, heads=2, width=32, mlp_width=64, context=512),
                           tokenizer).eval()
    whole = probe_inputs("P", tokenizer, study_data, "single", "causal")
    cut = probe_inputs("P_prefix", tokenizer, study_data, "single", "causal")
    assert cut.prefix and not whole.prefix and cut.ids == whole.ids
    with torch.no_grad():
        a = model_reps(model, whole, tokenizer.pad_token_id)([0, 1, 2])
        b = model_reps(model, cut, tokenizer.pad_token_id)([0, 1, 2])
    assert a.shape == b.shape == (3, len(ATTRIBUTES), 32)
    assert torch.allclose(a, b, atol=1e-5)
    masked = probe_inputs("P_prefix", tokenizer, study_data, "single", "masked")
    assert masked.ids == whole.ids  # unmasked: the cut already hides the value and everything after it


def _synthetic(n: int = 600, width: int = 16, classes: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, width, generator=g)
    linear = torch.randint(classes, (n,), generator=g)
    x[:, 0] += 2 * torch.randn(classes, width, generator=g)[linear]  # attribute 0: a direction per class, + noise
    noise = torch.randint(classes, (n,), generator=g)  # attribute 1: labels unrelated to anything
    return x, torch.stack([linear, noise], 1)


def test_probe_trainer_reads_a_linear_code_and_not_noise():
    x, labels = _synthetic()
    heads = ProbeHeads(x.shape[-1], [5, 5])
    train, test = range(0, 400), range(400, 600)
    losses = train_heads(heads, lambda rows: x[rows], labels, train, steps=300, batch_size=64, lr=1e-2)
    assert losses[-1] < losses[0]
    linear, noise = score_heads(heads, lambda rows: x[rows], labels, test)
    assert linear > 0.9
    assert noise < 0.2 + 0.12  # chance is 1/5


def test_embedding_delta_starts_at_zero_and_is_removable():
    emb = nn.Embedding(10, 4)
    ids = torch.tensor([[1, 2, 3]])
    before = emb(ids).detach().clone()
    delta = EmbeddingDelta(emb, rank=2)
    assert torch.equal(emb(ids), before)  # A = 0 at the start: the probe starts from the frozen model
    with torch.no_grad():
        delta.a.fill_(1.0)
    changed = emb(ids)
    assert not torch.allclose(changed, before)
    assert torch.allclose(changed - before, (delta.a[ids] @ delta.b).expand_as(before))
    delta.remove()
    assert torch.equal(emb(ids), before)


def test_probe_inputs_read_just_before_each_value(study_data, tokenizer):
    for kind in ("causal", "masked"):
        p = probe_inputs("P", tokenizer, study_data, "single", kind)
        bio = study_data.bios["single"][0]
        assert bio["id"] == 0
        enc = tokenizer(bio["text"], add_special_tokens=False, return_offsets_mapping=True)
        for a, (s, e) in enumerate(zip(bio["value_start"], bio["value_end"], strict=True)):
            i, j = value_token_span(enc["offset_mapping"], s, e)
            assert p.read[0][a] == i - 1
            want = [tokenizer.mask_token_id] * (j - i) if kind == "masked" else enc["input_ids"][i:j]
            assert p.ids[0][i:j] == want
            assert p.ids[0][i - 1] == enc["input_ids"][i - 1]  # the read token itself is never masked
    q = probe_inputs("Q", tokenizer, study_data, "single", "causal")
    name = study_data.individuals[0]["full_name"]
    assert q.ids[0] == tokenizer(" " + name, add_special_tokens=False)["input_ids"]
    assert q.read[0] == [len(q.ids[0]) - 1] * len(ATTRIBUTES)
    assert set(q.train_rows).isdisjoint(q.test_rows) and len(q.train_rows) + len(q.test_rows) == 60


# --------------------------------------------------------------------------- capacity


def test_generator_entropy():
    h = generator_entropy(24)
    assert h["birth_date"] == pytest.approx(math.log2(12 * 28 * 200))
    assert h["company_city"] == 0.0
    assert log2_comb(10, 3) == pytest.approx(math.log2(math.comb(10, 3)))
    assert 0 < h["full_name"] < math.log2(400 * 400 * 1000)


def test_capacity_bits_are_bounded(tiny_run, capsys):
    assert main(["capacity", str(tiny_run)]) == 0
    assert "Knowledge capacity" in capsys.readouterr().out
    out = json.loads((tiny_run / "capacity.json").read_text())
    h = out["entropy_bits"]
    for backbone in BACKBONES:
        cell = out["results"][backbone]["single"]
        n = cell["individuals"]
        assert n == 24
        # how the totals are made from the fields (each field's bound is enforced by bits_stored's own test)
        fields = cell["fields"]
        assert cell["bits_attributes"] == pytest.approx(sum(fields[a]["bits"] for a in ATTRIBUTES))
        assert cell["bits_names"] == pytest.approx(fields["full_name"]["bits"])
        assert cell["bits"] == pytest.approx(cell["bits_attributes"] + cell["bits_names"])
        assert cell["max_bits"] == pytest.approx(n * sum(h[f] for f in FIELDS))
        assert cell["bits_per_parameter"] == pytest.approx(cell["bits"] / cell["parameters"]["total"])
        # a 1-step model knows little: it stores far less than the maximum
        assert cell["bits"] < 0.5 * cell["max_bits"]


def test_perfect_model_stores_the_whole_entropy(tiny_run, monkeypatch):
    monkeypatch.setattr(capacity_lib, "field_losses", lambda model, kind, tok, data, aug, batch_size=32:
                        torch.zeros(len(data.individuals), len(FIELDS)))
    out = capacity_lib.run_capacity(tiny_run, backbone="gbert")
    h = out["entropy_bits"]
    cell = out["results"]["gbert"]["single"]
    assert cell["bits_attributes"] == pytest.approx(24 * sum(h[a] for a in ATTRIBUTES))
    assert cell["bits_names"] == pytest.approx(24 * h["full_name"])
    assert cell["bits"] == pytest.approx(cell["max_bits"]) and cell["aggregate_bits"] == pytest.approx(cell["bits"])


def test_bits_stored_clamps_per_individual():
    h = dict.fromkeys(FIELDS, 0.0) | {"major": 4.0}
    losses = torch.zeros(2, len(FIELDS))
    losses[:, FIELDS.index("major")] = torch.tensor([1.0, 10.0])  # one stored 3 bits, one is confidently wrong
    out = bits_stored(losses, h)
    assert out["fields"]["major"]["bits"] == pytest.approx(3.0)
    assert out["fields"]["major"]["aggregate_bits"] == 0.0  # 8 - 11 < 0


def _said(capsys) -> str:
    return " ".join(capsys.readouterr().out.split())  # rich wraps long lines


def test_bad_input_exits_2(tiny_run, tmp_path, capsys):
    assert main(["probe", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in _said(capsys)
    assert main(["capacity", str(tiny_run), "--backbone", "nope"]) == 2
    assert "--backbone nope: not in this run" in _said(capsys)
    assert main(["probe", str(tiny_run), "--augmentation", "multi9"]) == 2
    assert "not in this run" in _said(capsys)
    assert main(["capacity", str(tiny_run), "--phase", "mixed"]) == 2
    assert "has the phases pretrain, finetune" in _said(capsys)


def test_masked_capacity_hides_every_mention_of_the_scored_field(study_data, tokenizer):
    """Under fullname the name is in every sentence: a masked model must not be able to copy it from
    another mention while its loss on the name is read."""
    _, ids, spans, others = capacity_lib.field_spans(tokenizer, study_data, "multi3+permute+fullname")
    name = FIELDS.index("full_name")
    assert all(len(o[name]) >= 5 for o in others)  # six sentences, at least six mentions
    assert all(ids[p][i:j] == ids[p][spans[p][name][0]:spans[p][name][1]] for p in range(len(ids))
               for i, j in others[p][name])
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(()))

        def forward(self, input_ids, attention_mask, position_ids=None):
            seen.extend(input_ids.tolist())
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, len(tokenizer))})()

    first = [spans[0][name]]
    capacity_lib._masked_losses(Spy(), ids[:1], [first], tokenizer.pad_token_id, tokenizer.mask_token_id, 8,
                                [[others[0][name]]])
    name_ids = ids[0][first[0][0]:first[0][1]]
    for row in seen:  # no window of the row is the name: every mention was masked
        assert all(row[t:t + len(name_ids)] != name_ids for t in range(len(row)))
