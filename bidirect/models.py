"""The backbones a study can train, each built from scratch out of one `ModelSize` (STUDY.md, Backbones).

Every backbone is a stock `transformers` network, so runs save with ``save_pretrained`` and other tools load
them with the Auto classes; bidirect itself loads only the classes it saves (`SAVED_CLASSES`), never code a
folder holds. Only gbert needs code of ours to be read back, and it is saved beside the weights. All
are called the same way, ``model(input_ids=..., attention_mask=..., position_ids=...).logits``, and the
trainer computes the loss itself, so the only thing a backbone decides beyond its network is its `Kind`.

``gbert`` is the paper's "BERT": the ``gpt2-rope`` network, parameter for parameter, with the
causal mask removed (``config.is_causal = False``, which transformers 5 turns into a
bidirectional mask and which is saved in config.json). Comparing the two isolates bidirectionality.
Saved, it is a ``gbert`` model (`GBertForMaskedLM`, registered with the Auto classes on import), so
the masked-LM tools take it; runs saved before that load as the GPT-NeoX class they were saved as. Its code
(bidirect/gbert.py) is saved beside its weights, so plain transformers loads it with ``trust_remote_code=True``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    DebertaV2Config,
    DebertaV2ForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    ModernBertConfig,
    ModernBertForMaskedLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from bidirect.config import BACKBONE_KINDS, ModelSize
from bidirect.gbert import GBertConfig, GBertForMaskedLM
from bidirect.integrity import check_manifest, retrain_advice
from bidirect.rundir import CONFIG_FILE, RESULTS_FILE, RunDirError, run_of_model

Kind = Literal["causal", "masked"]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[ModelSize, PreTrainedTokenizerFast], PreTrainedModel]
    about: str  # one line, shown in `bidirect backbones` and error messages

    @property
    def kind(self) -> Kind:  # the objective follows the kind: causal -> next token, masked -> masked LM
        return BACKBONE_KINDS[self.name]


def _ids(tok: PreTrainedTokenizerFast) -> dict:
    """What every config takes from the tokenizer. The LM head is tied to the input embedding so
    that the parameter count depends on the network, not on the vocabulary twice.

    ``use_cache=False``: with a KV cache present transformers does not look for packed
    documents in the position ids, so packed windows would attend across documents.
    Generation asks for the cache explicitly."""
    return dict(
        use_cache=False,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        tie_word_embeddings=True,
    )


# --------------------------------------------------------------------------- causal


def _gpt2(size: ModelSize, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    config = GPT2Config(
        n_layer=size.layers, n_head=size.heads, n_embd=size.width, n_inner=size.mlp_width, n_positions=size.context,
        resid_pdrop=size.dropout, embd_pdrop=size.dropout, attn_pdrop=size.dropout,
        attn_implementation="sdpa", **_ids(tok),
    )
    return GPT2LMHeadModel(config)


def _neox_config(size: ModelSize, tok: PreTrainedTokenizerFast, cls: type = GPTNeoXConfig) -> GPTNeoXConfig:
    # Sequential residual + LayerNorm + GELU: GPT-2's block; only the positions differ (rotary, 1/4 of each head).
    return cls(
        num_hidden_layers=size.layers, num_attention_heads=size.heads, hidden_size=size.width,
        intermediate_size=size.mlp_width, max_position_embeddings=size.context,
        hidden_act="gelu", use_parallel_residual=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        attention_dropout=size.dropout, hidden_dropout=size.dropout,
        attn_implementation="sdpa", **_ids(tok),
    )


def _gpt2_rope(size: ModelSize, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    return GPTNeoXForCausalLM(_neox_config(size, tok))


def _llama(size: ModelSize, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    # Llama has no residual or embedding dropout to set: attention dropout is all it offers.
    config = LlamaConfig(
        num_hidden_layers=size.layers, num_attention_heads=size.heads, hidden_size=size.width,
        intermediate_size=size.mlp_width, max_position_embeddings=size.context,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_dropout=size.dropout, attn_implementation="sdpa", **_ids(tok),
    )
    return LlamaForCausalLM(config)


# --------------------------------------------------------------------------- masked


def _mask_id(tok: PreTrainedTokenizerFast) -> int:
    if tok.mask_token_id is None:
        raise ValueError("a masked backbone needs a tokenizer with a mask token; bidirect.tokenizer adds one")
    return tok.mask_token_id


# Saved with its own code (bidirect/gbert.py, named in config.json's auto_map), so that plain transformers loads
# it with trust_remote_code=True; with bidirect imported, the registered classes load it without that flag.
AutoConfig.register("gbert", GBertConfig)
AutoModelForMaskedLM.register(GBertConfig, GBertForMaskedLM)
GBertConfig.register_for_auto_class()
GBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")


def _gbert(size: ModelSize, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    _mask_id(tok)
    return GBertForMaskedLM(_neox_config(size, tok, GBertConfig))


def _bert(size: ModelSize, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    _mask_id(tok)
    config = BertConfig(
        num_hidden_layers=size.layers, num_attention_heads=size.heads, hidden_size=size.width,
        intermediate_size=size.mlp_width, max_position_embeddings=size.context, type_vocab_size=1,
        hidden_dropout_prob=size.dropout, attention_probs_dropout_prob=size.dropout,
        attn_implementation="sdpa", **_ids(tok),
    )
    return BertForMaskedLM(config)


def _deberta(size: ModelSize, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    _mask_id(tok)
    # DeBERTa-v3 style: disentangled relative attention only, no absolute positions added to the input.
    # DebertaV2 has no SDPA path in transformers 5, so it runs eager attention.
    config = DebertaV2Config(
        num_hidden_layers=size.layers, num_attention_heads=size.heads, hidden_size=size.width,
        intermediate_size=size.mlp_width, max_position_embeddings=size.context,
        relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
        hidden_dropout_prob=size.dropout, attention_probs_dropout_prob=size.dropout,
        attn_implementation="eager", **_ids(tok),
    )
    return DebertaV2ForMaskedLM(config)


def _modernbert(size: ModelSize, tok: PreTrainedTokenizerFast) -> PreTrainedModel:
    _mask_id(tok)
    ids = _ids(tok)
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    # Every layer global: a sliding window would make the comparison depend on the context length.
    config = ModernBertConfig(
        num_hidden_layers=size.layers, num_attention_heads=size.heads, hidden_size=size.width,
        intermediate_size=size.mlp_width, max_position_embeddings=size.context,
        layer_types=["full_attention"] * size.layers,
        rope_parameters={"full_attention": dict(rope), "sliding_attention": dict(rope)},
        attention_dropout=size.dropout, embedding_dropout=size.dropout, mlp_dropout=size.dropout,
        cls_token_id=ids["bos_token_id"], sep_token_id=ids["eos_token_id"],
        attn_implementation="sdpa", **ids,
    )
    return ModernBertForMaskedLM(config)


# --------------------------------------------------------------------------- registry

BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("gpt2", _gpt2, "GPT-2, learned absolute positions"),
        BackboneSpec("gpt2-rope", _gpt2_rope, "the paper's GPT-2: rotary on 1/4 of each head"),
        BackboneSpec("gbert", _gbert, "gpt2-rope with full attention (the paper's BERT)"),
        BackboneSpec("llama", _llama, "Llama: rotary, RMSNorm, SwiGLU"),
        BackboneSpec("bert", _bert, "BERT: post-LN, learned absolute positions"),
        BackboneSpec("deberta", _deberta, "DeBERTa-v2: relative positions only"),
        BackboneSpec("modernbert", _modernbert, "ModernBERT: rotary, every layer global"),
    ]
}


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        known = "; ".join(f"{n} ({s.kind}: {s.about})" for n, s in BACKBONES.items())
        raise ValueError(f"unknown backbone {name!r}; known: {known}")
    return BACKBONES[name]


def build_backbone(name: str, size: ModelSize, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A freshly initialised backbone (seed torch first for a reproducible init)."""
    return _spec(name).build(size, tokenizer)


def backbone_kind(name: str) -> Kind:
    return _spec(name).kind


def _retrain(model_dir: Path) -> str:
    """Advice that works for a damaged saved model: training is deterministic, so the phase trained again is
    the same model. A resume skips every cell results.json already holds, so that file goes too (a resume
    writes it again from the saved phases, training only the deleted one)."""
    phase, run = model_dir.parent, run_of_model(model_dir)
    if run is None:
        return f"the file is damaged: delete {phase} and train that phase anew"
    results = run / RESULTS_FILE
    away = f"move {results} away, " if results.exists() else ""
    return (f"the file is damaged: delete {phase}, {away}then `bidirect run {run / CONFIG_FILE} --out {run} --resume` "
            "trains that phase anew")


# What a saved model's config.json may name (model_type -> class): every backbone of the registry, and gbert as
# runs before its own model_type saved it (GPT-NeoX with is_causal false). load_backbone builds only these.
SAVED_CLASSES: dict[str, type[PreTrainedModel]] = {
    "gpt2": GPT2LMHeadModel,
    "gpt_neox": GPTNeoXForCausalLM,
    "gbert": GBertForMaskedLM,
    "llama": LlamaForCausalLM,
    "bert": BertForMaskedLM,
    "deberta-v2": DebertaV2ForMaskedLM,
    "modernbert": ModernBertForMaskedLM,
}


def load_backbone(path: str | Path) -> PreTrainedModel:
    """Load a ``save_pretrained`` folder as the class of ours its config names (`SAVED_CLASSES`), never through
    the Auto classes: those read ``auto_map`` and would run, or offer to run, code saved in the folder."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no saved model at {path} (expected {config_file})")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise RunDirError(f"corrupt model config {config_file}: {err}; {_retrain(path)}") from None
    if not isinstance(config, dict):
        raise RunDirError(f"corrupt model config {config_file}: not a JSON object; {_retrain(path)}")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        architectures = [architectures]
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise FileNotFoundError(f"no weights in {path} (expected model.safetensors next to config.json)")
    # the hashes recorded at save: random bytes in a tensor load without an error, and evaluate as another model
    run_dir = run_of_model(path)
    if run_dir is not None:
        advice = retrain_advice(run_dir, path.parent)
    else:
        advice = _retrain(path).replace("the file is damaged: ", "")
    check_manifest(path, "the saved model", advice)
    model_type = config.get("model_type")
    cls = SAVED_CLASSES.get(model_type) if isinstance(model_type, str) else None
    if cls is None or any(a != cls.__name__ for a in architectures):
        # A received folder names its own classes (auto_map, model_type): the Auto classes would offer to run
        # code saved beside the weights. bidirect reads only the classes it saves, built from its own code.
        allowed = ", ".join(f"{t} ({c.__name__})" for t, c in SAVED_CLASSES.items())
        raise RunDirError(f"{config_file}: model_type {str(model_type)[:80]!r} with architectures "
                          f"{str(architectures)[:80]} is not a model bidirect saves (allowed: {allowed}); "
                          f"bidirect runs no code from a run folder. {_retrain(path)}")
    try:
        return cls.from_pretrained(str(path))
    except Exception as err:  # safetensors, torch and OS errors alike: say which folder, not where deep inside
        raise RunDirError(f"could not load the model saved at {path}: {type(err).__name__}: {str(err)[:200]}; "
                          f"{_retrain(path)}") from None


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and non-embedding parameters. Non-embedding leaves out every `nn.Embedding` (tokens,
    learned positions, relative positions) as Kaplan et al. do; a tied LM head is counted once."""
    total = sum(p.numel() for p in model.parameters())
    embedding = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding)}
    return {"total": total, "non_embedding": total - sum(embedding.values())}


FLOPS_FORMULA = "6*N_nonembedding + 6*N_lm_head + 12*layers*context*width"


def flops_per_token(model: nn.Module, size: ModelSize) -> dict[str, int]:
    """Training FLOPs per token position (forward and backward) of one backbone, term by term (FLOPS_FORMULA,
    Kaplan et al. 2020): 6 per non-embedding parameter, 6 per LM-head weight (tied, so not in N, but a matmul all
    the same), and the attention scores and their weighted sum at the nominal context."""
    non_embedding = parameter_counts(model)["non_embedding"]
    lm_head = model.get_output_embeddings().weight.numel()
    terms = {
        "non_embedding_params": non_embedding,
        "lm_head_params": lm_head,
        "matmul": 6 * non_embedding + 6 * lm_head,
        "attention": 12 * size.layers * size.context * size.width,
    }
    return {**terms, "total": terms["matmul"] + terms["attention"]}
