"""LoRA fine-tuning (STUDY.md, Protocols): a low-rank update of the attention query and value
projections plus the token embedding, trained on P_train QA, then merged into the weights.

The study calls `add_lora` on the pretrained model when ``finetune.finetune_mode`` is ``lora``
and hands `merge_lora` to the trainer, which applies it just before ``save_pretrained``: the
saved fine-tune is a plain `transformers` model of the backbone's own class, loadable with the
Auto classes exactly like a full fine-tune, and what gets evaluated is exactly what was trained.

Query and value only. Where the backbone has separate projections (Llama ``q_proj``/``v_proj``,
BERT ``query``/``value``, DeBERTa ``query_proj``/``value_proj``) LoRA wraps those two. Where
query, key and value are one fused linear layer (GPT-2 ``c_attn``, GPT-NeoX ``query_key_value``
for ``gpt2-rope`` and ``gbert``, ModernBERT ``Wqkv``) LoRA wraps the fused layer and the rows of
its ``B`` matrix that produce the key are held at zero (zero at init, gradient masked), so the
merged update touches the query and value rows only.

The embedding is trained in full, not low-rank: every backbone ties it to the LM head, and a
low-rank delta on the input lookup alone would change the output head too once merged, so the
merged model would not be the trained one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

# How query, key and value sit in a fused projection's output rows (width = hidden size):
#   "blocks":   [q (width) | k (width) | v (width)]                       GPT-2 c_attn, ModernBERT Wqkv
#   "per_head": per head h: [q_h (head_dim) | k_h (head_dim) | v_h (head_dim)]   GPT-NeoX query_key_value
Layout = Literal["blocks", "per_head"]


@dataclass(frozen=True)
class LoraTargets:
    modules: tuple[str, ...]  # module names (last component) that get a LoRA update
    fused: Layout | None = None  # None: separate query and value projections


# Keyed by config.model_type, so that any backbone built on these classes is covered.
TARGETS: dict[str, LoraTargets] = {
    "gpt2": LoraTargets(("c_attn",), "blocks"),
    "gpt_neox": LoraTargets(("query_key_value",), "per_head"),
    "gbert": LoraTargets(("query_key_value",), "per_head"),  # gpt_neox's network
    "llama": LoraTargets(("q_proj", "v_proj")),
    "bert": LoraTargets(("query", "value")),
    "deberta-v2": LoraTargets(("query_proj", "value_proj")),
    "modernbert": LoraTargets(("Wqkv",), "blocks"),
}


def lora_targets(model: PreTrainedModel) -> LoraTargets:
    """The query/value projections of ``model``, checked to exist in it."""
    model_type = model.config.model_type
    if model_type not in TARGETS:
        raise ValueError(f"LoRA: no query/value projection names known for model type {model_type!r}; "
                         f"known: {', '.join(TARGETS)} (add it to bidirect.lora.TARGETS)")
    targets = TARGETS[model_type]
    found = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in targets.modules if m not in found]
    if missing:
        raise ValueError(f"LoRA: {model_type} model has no module named {', '.join(missing)}")
    return targets


def key_rows(out_features: int, heads: int, layout: Layout) -> torch.Tensor:
    """Boolean mask over a fused projection's output rows: True where the row produces the key."""
    rows = torch.zeros(out_features, dtype=torch.bool)
    if layout == "blocks":
        width = out_features // 3
        rows[width:2 * width] = True
    else:
        head_dim = out_features // (3 * heads)
        for h in range(heads):
            start = h * 3 * head_dim + head_dim
            rows[start:start + head_dim] = True
    return rows


def _heads(model: PreTrainedModel) -> int:
    config = model.config
    for name in ("num_attention_heads", "n_head"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    raise ValueError(f"LoRA: cannot find the number of heads in {type(config).__name__}")


def _lora_b_layers(model: nn.Module):
    """(name, lora_B linear) of every LoRA-wrapped layer."""
    for name, module in model.named_modules():
        lora_b = getattr(module, "lora_B", None)
        if isinstance(lora_b, nn.ModuleDict) and "default" in lora_b:
            yield name, lora_b["default"]


def add_lora(model: PreTrainedModel, rank: int) -> nn.Module:
    """``model`` wrapped for LoRA fine-tuning: only the LoRA matrices of query/value and the token
    embedding are trainable. Seed torch first for a reproducible LoRA init."""
    from peft import LoraConfig, get_peft_model  # local: only LoRA runs pay for importing peft

    targets = lora_targets(model)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none", target_modules=list(targets.modules),
        fan_in_fan_out=model.config.model_type == "gpt2",  # GPT-2's Conv1D stores weights (in, out)
    )
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for a user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    model.get_input_embeddings().weight.requires_grad_(True)  # tied to the LM head: trained in full
    if targets.fused:
        heads = _heads(model)
        for _, lora_b in _lora_b_layers(peft_model):
            mask = (~key_rows(lora_b.weight.shape[0], heads, targets.fused)).to(lora_b.weight.dtype)
            mask = mask[:, None]
            with torch.no_grad():
                lora_b.weight.mul_(mask)  # zero at init already; stays zero: its gradient is masked
            lora_b.weight.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device, grad.dtype))
    return peft_model


def merge_lora(model: nn.Module) -> PreTrainedModel:
    """The LoRA update merged into the weights: the backbone's own model class again."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def trainable_parameters(model: nn.Module) -> int:
    """Parameters the optimizer can change: requires_grad ones, less the masked key rows of fused layers."""
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = getattr(model, "config", None)
    targets = TARGETS.get(getattr(config, "model_type", None))
    if targets is not None and targets.fused:
        for _, lora_b in _lora_b_layers(model):
            count -= int(key_rows(lora_b.weight.shape[0], _heads(model), targets.fused).sum()) * lora_b.weight.shape[1]
    return count
