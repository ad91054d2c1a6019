"""bidirect: controlled studies of knowledge storage and extraction in masked and causal language models."""

__version__ = "0.1.0"

import datasets as _datasets
import transformers as _transformers

# bidirect draws its own rich progress bars; the ones of datasets' map and save and of
# transformers' shard writing are noise next to them, so they are off.
_datasets.disable_progress_bars()
_transformers.utils.logging.disable_progress_bar()
# Packed causal windows carry position ids instead of an attention mask on purpose (see
# objectives.py); transformers' warning about padding without a mask would be misleading.
_transformers.logging.set_verbosity_error()
