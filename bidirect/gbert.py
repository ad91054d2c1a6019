"""gbert, the paper's "BERT": the gpt2-rope network (transformers' GPT-NeoX) with the causal mask removed.

This file is copied beside the weights of every saved gbert (``save_pretrained`` writes it, and ``auto_map`` in
config.json names its classes), so that ``AutoModelForMaskedLM.from_pretrained(path, trust_remote_code=True)`` and
``pipeline("fill-mask", ..., trust_remote_code=True)`` load a saved gbert where bidirect is not installed. It must
therefore import nothing but transformers, and register nothing on import: bidirect.models registers the classes
with the Auto classes, which would refuse a second registration when this copy is loaded beside bidirect.
"""

from transformers import GPTNeoXConfig, GPTNeoXForCausalLM


class GBertConfig(GPTNeoXConfig):
    """gpt2-rope's configuration with the causal mask removed, under a masked-LM identity of its own,
    so that `AutoModelForMaskedLM` and `pipeline("fill-mask")` take a saved gbert (and `AutoModelForCausalLM`
    does not load it as if it were a generator)."""

    model_type = "gbert"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.is_causal = False  # the only difference from gpt2-rope: transformers 5 then attends both ways


class GBertForMaskedLM(GPTNeoXForCausalLM):
    """GPTNeoXForCausalLM's network and weights, parameter for parameter; only the name and the
    config (bidirectional attention) say what it is. Its logits at a mask are the masked-LM prediction."""

    config_class = GBertConfig
