"""bidirect: controlled studies of knowledge storage and extraction in masked and causal language models.

Importing the package imports nothing heavy: each module imports torch, transformers or datasets itself.
"""

__version__ = "0.1.0"
