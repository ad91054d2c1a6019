"""The backbone registry: every backbone builds, runs the uniform call, attends the way its kind says
(also after a save and load), trains, and the ones the study compares have comparable sizes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from bidirect.config import ModelSize
from bidirect.models import BACKBONES, backbone_kind, build_backbone, load_backbone, parameter_counts
from bidirect.tokenizer import train_tokenizer

TINY = ModelSize(layers=2, heads=2, width=32, mlp_width=64, context=64)
SEQ, CHANGED = 16, 8  # the token at position CHANGED is altered to probe the attention direction
EXPECTED_KINDS = {"gpt2": "causal", "gpt2-rope": "causal", "gbert": "masked", "llama": "causal", "bert": "masked",
                  "deberta": "masked", "modernbert": "masked"}


@pytest.fixture(scope="module")
def tok():
    texts = ["Anna Maria Smith was born on October 2, 1996, in Princeton, NJ.",
             "She studied Communications at MIT and worked for Meta Platforms in Menlo Park, CA."] * 20
    return train_tokenizer(texts, vocab_size=300)


def _build(name: str, tok, size: ModelSize = TINY) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(name, size, tok).eval()


def _ids(tok, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(len(tok) // 2, len(tok), (2, SEQ), generator=g)  # clear of the special tokens


def _sees_the_future(model, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
    """Do the logits at position 0 depend on the token at position CHANGED?"""
    other = ids.clone()
    other[:, CHANGED] = ids[:, CHANGED] - 1
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=attention_mask, position_ids=None).logits
        b = model(input_ids=other, attention_mask=attention_mask, position_ids=None).logits
    assert not torch.allclose(a[:, CHANGED:], b[:, CHANGED:]), "changing the token must change something"
    return not torch.allclose(a[:, 0], b[:, 0], atol=1e-6)


def _padding_mask() -> torch.Tensor:
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[0, 12:] = 0  # row 0 right-padded after CHANGED, row 1 full
    return mask


def test_registry_kinds():
    assert {n: s.kind for n, s in BACKBONES.items()} == EXPECTED_KINDS
    assert list(BACKBONES)[:3] == ["gpt2", "gpt2-rope", "gbert"]
    for name, spec in BACKBONES.items():
        assert spec.name == name and backbone_kind(name) == spec.kind and "\n" not in spec.about


@pytest.mark.parametrize("name", list(BACKBONES))
def test_uniform_call(name, tok):
    model = _build(name, tok)
    ids = _ids(tok)
    positions = torch.arange(SEQ).expand(2, SEQ)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=None).logits
        given = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions).logits
    assert plain.shape == (2, SEQ, len(tok))
    torch.testing.assert_close(plain, given)
    assert model.config.vocab_size == len(tok) and model.config.pad_token_id == tok.pad_token_id
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("name", list(BACKBONES))
def test_dropout_reaches_the_model(name, tok):
    model = _build(name, tok, ModelSize(**{**TINY.__dict__, "dropout": 0.3})).train()
    ids = _ids(tok)
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_attention_direction_survives_save_and_load(name, tok, tmp_path):
    bidirectional = backbone_kind(name) == "masked"
    model = _build(name, tok)
    ids = _ids(tok)
    model.save_pretrained(tmp_path)
    # every masked backbone, gbert included (registered on import), is a masked-LM class to the Auto classes
    auto = AutoModelForMaskedLM if bidirectional else AutoModelForCausalLM
    for m in (model, load_backbone(tmp_path).eval(), auto.from_pretrained(tmp_path).eval()):
        assert type(m) is type(model)
        for attention_mask in (None, _padding_mask()):
            assert _sees_the_future(m, ids, attention_mask) == bidirectional, (name, attention_mask)
    with torch.no_grad():
        torch.testing.assert_close(load_backbone(tmp_path).eval()(input_ids=ids).logits, model(input_ids=ids).logits)


def test_gbert_is_the_gpt2_rope_network(tok):
    causal, masked = _build("gpt2-rope", tok), _build("gbert", tok)
    shapes = {n: p.shape for n, p in causal.named_parameters()}
    assert shapes == {n: p.shape for n, p in masked.named_parameters()}
    # Same seed, same network: the very same weights; only the mask differs.
    for (n, p), q in zip(causal.named_parameters(), masked.parameters()):
        assert torch.equal(p, q), n
    a, b = causal.config.to_dict(), masked.config.to_dict()
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {"is_causal", "model_type"}
    assert (a["model_type"], b["model_type"]) == ("gpt_neox", "gbert") and b["is_causal"] is False
    assert causal.config.rope_parameters["partial_rotary_factor"] == 0.25
    assert causal.config.rope_parameters["rope_theta"] == 10000.0
    assert causal.gpt_neox.layers[0].attention.rotary_ndims == TINY.width // TINY.heads // 4


def test_unknown_name_lists_the_known_ones(tok):
    for call in (lambda: build_backbone("gpt5", TINY, tok), lambda: backbone_kind("gpt5")):
        with pytest.raises(ValueError, match="gpt5") as err:
            call()
        assert all(name in str(err.value) for name in BACKBONES)


def test_load_errors_name_the_path(tok, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_backbone(missing)
    _build("gpt2", tok).save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=str(tmp_path / "model")):
        load_backbone(tmp_path / "model")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "model")):
        load_backbone(tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_backbone(tmp_path / "model")


def test_parameter_counts_are_comparable(tok):
    counts = {name: parameter_counts(_build(name, tok)) for name in BACKBONES}
    for name, c in counts.items():
        print(f"{name:11s} total {c['total']:>7d}  non-embedding {c['non_embedding']:>7d}")
    embedding = len(tok) * TINY.width
    assert counts["gpt2-rope"]["total"] - counts["gpt2-rope"]["non_embedding"] == embedding  # tied head once
    assert counts["gpt2"]["total"] - counts["gpt2"]["non_embedding"] == embedding + TINY.context * TINY.width
    assert counts["gbert"] == counts["gpt2-rope"]
    assert counts["gpt2"]["non_embedding"] == counts["gpt2-rope"]["non_embedding"]
    compared = [counts[n]["non_embedding"] for n in ("gpt2", "gpt2-rope", "gbert", "llama", "bert")]
    assert max(compared) <= 1.5 * min(compared)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_each_backbone_trains(name, tok):
    model = _build(name, tok).train()
    ids = _ids(tok, seed=1)
    if backbone_kind(name) == "masked":
        chosen = torch.zeros_like(ids, dtype=torch.bool)
        chosen[:, 2::4] = True
        inputs = ids.masked_fill(chosen, tok.mask_token_id)
        labels = ids.masked_fill(~chosen, -100)
    else:
        inputs, labels = ids, torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(name, [round(x, 2) for x in losses])
    assert losses[-1] < 0.6 * losses[0], losses


def test_saved_config_names_an_auto_class(tok, tmp_path):
    for name in BACKBONES:
        _build(name, tok).save_pretrained(tmp_path / name)
        architectures = json.loads((tmp_path / name / "config.json").read_text())["architectures"]
        masked_head = architectures[0].endswith("ForMaskedLM")
        assert masked_head == (backbone_kind(name) == "masked")


def test_gbert_saved_before_its_masked_identity_still_loads(tok, tmp_path):
    """Runs saved before gbert had a model type of its own hold a GPT-NeoX causal-LM class with
    is_causal=False: they load as that, bidirectional, with the same logits."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model = _build("gbert", tok).eval()
    old = GPTNeoXForCausalLM(GPTNeoXConfig(**{k: v for k, v in model.config.to_dict().items() if k != "model_type"}))
    old.load_state_dict(model.state_dict())
    old.save_pretrained(tmp_path)
    loaded = load_backbone(tmp_path).eval()
    assert type(loaded) is GPTNeoXForCausalLM and _sees_the_future(loaded, _ids(tok), None)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=_ids(tok)).logits, model(input_ids=_ids(tok)).logits)


@pytest.mark.parametrize("name", [n for n, k in EXPECTED_KINDS.items() if k == "causal"])
def test_packed_documents_do_not_attend_to_each_other(name, tok):
    """A document packed behind another (position ids restart, no attention mask: how the
    causal objective feeds windows) gets the logits it gets alone, in training mode too:
    a KV cache, for one, silently turns transformers' packed-sequence mask off."""
    model = _build(name, tok).train()  # dropout is 0; train() is what the trainer calls
    first, second = _ids(tok, seed=1)[0, :10], _ids(tok, seed=2)[0, :12]
    packed = torch.cat([first, second])[None]
    positions = torch.cat([torch.arange(10), torch.arange(12)])[None]
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions).logits[0, 10:]
        alone = model(input_ids=second[None], position_ids=torch.arange(12)[None]).logits[0]
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


def test_the_registry_builds_exactly_the_backbones_a_config_may_name():
    """config.py names the backbones and their kinds without importing torch; models.py builds them."""
    from bidirect.config import BACKBONE_KINDS

    assert list(BACKBONES) == list(BACKBONE_KINDS)
    assert {n: s.kind for n, s in BACKBONES.items()} == BACKBONE_KINDS
    assert [n for n, k in BACKBONE_KINDS.items() if k == "masked"] == ["gbert", "bert", "deberta", "modernbert"]
