"""bidirect: controlled studies of knowledge storage and extraction in masked and causal language models."""

__version__ = "0.1.0"
