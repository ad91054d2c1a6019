"""LoRA fine-tuning: only query/value and the embedding move, the merged model is a plain transformers model,
a killed fine-tune resumes to the same model, and LoRA is refused where it does not apply."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny import single_study as tiny

from bidirect import study
from bidirect.cli import main
from bidirect.config import ConfigError, ModelSize, from_dict
from bidirect.lora import TARGETS, add_lora, key_rows, merge_lora, trainable_parameters
from bidirect.models import BACKBONES, build_backbone, load_backbone, parameter_counts


def _qv_rows(name: str, shape: torch.Size, model_type: str, heads: int) -> torch.Tensor | None:
    """Rows a LoRA update may change in weight ``name``: all for a separate q/v projection, the q
    and v rows for a fused one, None where nothing may change."""
    targets = TARGETS[model_type]
    module = name.rsplit(".", 2)[-2] if name.endswith(".weight") else None
    if module not in targets.modules:
        return None
    if targets.fused is None:
        return torch.ones(shape[0], dtype=torch.bool)
    out = shape[1] if model_type == "gpt2" else shape[0]  # Conv1D stores (in, out)
    return ~key_rows(out, heads, targets.fused)


def _assert_only_qv_and_embedding(before: dict, after: dict, model, model_type: str, heads: int) -> set[str]:
    embedding = model.get_input_embeddings().weight
    tied = {k for k, v in model.state_dict().items() if v.data_ptr() == embedding.data_ptr()}
    assert set(before) == set(after)
    changed = set()
    for name, old in before.items():
        new = after[name]
        if torch.equal(old, new):
            continue
        changed.add(name)
        if name in tied:
            continue
        rows = _qv_rows(name, old.shape, model_type, heads)
        assert rows is not None, f"{name} changed but LoRA may only change query/value and the embedding"
        if rows.all():
            continue
        diff = (new - old).abs()
        diff = diff.T if model_type == "gpt2" else diff
        assert diff[~rows].max() == 0, f"{name}: key rows changed"
    return changed


@pytest.mark.parametrize("name", list(BACKBONES))
def test_lora_trains_and_merges_only_query_value_and_embedding(name, tokenizer):
    """One AdamW step on every trainable parameter, then merge: only q/v (not k) rows and the
    (tied) embedding move, and the merged model computes what the LoRA model computed."""
    torch.manual_seed(0)
    model = build_backbone(name, ModelSize(layers=1, heads=2, width=32, mlp_width=64, context=64), tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = add_lora(model, 4)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.05, weight_decay=0.1)
    ids = torch.randint(10, len(tokenizer), (2, 12))
    for _ in range(2):  # B starts at zero: the second step is the first to move the merged weights
        peft_model(input_ids=ids).logits.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    merged = merge_lora(peft_model)
    assert type(merged).__name__ == type(model).__name__ and not hasattr(merged, "peft_config")
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
    changed = _assert_only_qv_and_embedding(before, merged.state_dict(), merged, merged.config.model_type,
                                            merged.config.num_attention_heads)
    assert len(changed) >= 2  # the embedding and at least one q/v projection moved


@pytest.mark.parametrize("backbone", ["gpt2-rope", "gpt2"])
def test_lora_run_saves_a_merged_model(lora_run, backbone):
    results = json.loads((lora_run / "results.json").read_text())
    phases = results["training"]["single"][backbone]
    assert phases["pretrain"]["mode"] == "full" and phases["pretrain"]["lora_rank"] is None
    assert phases["finetune"]["mode"] == "lora" and phases["finetune"]["lora_rank"] == 4
    counts = results["parameters"][backbone]
    assert phases["pretrain"]["trainable_parameters"] == counts["total"]
    # compute per phase: every position at the same per-token FLOPs of the one network, LoRA credited as full
    per_token = {p: t["flops"] / t["positions"] for p, t in phases.items()}
    assert per_token["pretrain"] == per_token["finetune"] > 6 * counts["non_embedding"]
    cell = lora_run / "models" / "single" / backbone
    pre, fine = load_backbone(cell / "pretrain" / "model"), load_backbone(cell / "finetune" / "model")
    assert type(fine) is type(pre)  # a plain transformers model, loaded by the Auto classes
    assert not any("lora" in k for k in fine.state_dict())
    embedding = fine.get_input_embeddings().weight.numel()
    lora = phases["finetune"]["trainable_parameters"] - embedding
    # The LoRA matrices are a few percent of the network; the embedding is trained in full.
    assert 0 < lora < 0.1 * counts["non_embedding"]
    assert phases["finetune"]["trainable_parameters"] < 0.75 * counts["total"]
    changed = _assert_only_qv_and_embedding(pre.state_dict(), fine.state_dict(), fine, fine.config.model_type,
                                            fine.config.num_attention_heads)
    assert any(TARGETS[fine.config.model_type].modules[0] in k for k in changed)  # the merged update is there


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_killed_finetune_resumes_to_the_same_model(mode, tmp_path, monkeypatch):
    """Killed after its step-2 checkpoint, in the process that also pretrained, the fine-tune resumes
    there and saves the same model as an uninterrupted run (LoRA: the checkpoint holds the adapters)."""
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(tiny(finetune={"steps": 4, "batch_size": 4, "log_every": 1, "lr": 0.01,
                                                    "finetune_mode": mode, "lora_rank": 4, "checkpoint_every": 2})))
    assert main(["run", str(config), "--out", str(tmp_path / "straight")]) == 0
    real = study.train_phase

    def dying(model, collate, stream, cfg, out_dir, *args, **kwargs):
        if out_dir.name != "finetune":
            return real(model, collate, stream, cfg, out_dir, *args, **kwargs)
        calls = {"n": 0}

        def die_in_step_3(items):
            calls["n"] += 1
            if calls["n"] == 3:
                raise Interrupt
            return collate(items)

        return real(model, die_in_step_3, stream, cfg, out_dir, *args, **kwargs)

    monkeypatch.setattr(study, "train_phase", dying)
    with pytest.raises(Interrupt):
        main(["run", str(config), "--out", str(tmp_path / "resumed")])
    phase = tmp_path / "resumed" / "models" / "single" / "gpt2-rope" / "finetune"
    assert [p.name for p in (phase / "checkpoints").iterdir()] == ["step_00000002"]
    monkeypatch.setattr(study, "train_phase", real)
    assert main(["run", str(config), "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    straight = load_backbone(tmp_path / "straight" / phase.relative_to(tmp_path / "resumed") / "model").state_dict()
    resumed = load_backbone(phase / "model").state_dict()
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], rtol=0, atol=0)


def test_lora_is_refused_outside_finetuning():
    with pytest.raises(ConfigError, match=r"pretrain\.finetune_mode: 'lora' applies to the fine-tuning phase"):
        from_dict(tiny(pretrain={"finetune_mode": "lora"}))
    with pytest.raises(ConfigError, match=r"finetune\.finetune_mode: .*pretrain_finetune only"):
        from_dict(tiny(protocol="mixed", finetune={"finetune_mode": "lora"}))
    with pytest.raises(ConfigError, match=r"backbones\.gpt2-rope\.pretrain\.finetune_mode"):
        from_dict(tiny(backbones=[{"name": "gpt2-rope", "pretrain": {"finetune_mode": "lora"}}]))


def test_trainable_parameters_of_a_full_model_are_all(tokenizer):
    model = build_backbone("gpt2-rope", ModelSize(layers=1, heads=2, width=32, mlp_width=64, context=64), tokenizer)
    assert trainable_parameters(model) == parameter_counts(model)["total"]
