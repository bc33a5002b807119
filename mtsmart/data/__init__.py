"""Layer 4, data: task files → Examples (readers) → token ids (encoding) → Batches (loader).

Nothing is imported here, so that reading a configuration does not load the tokenizer libraries;
import the submodules.
"""
