"""Data: task files → Examples (readers) → token ids (encoding) → Batches (loader).

Nothing is imported here, so reading a configuration (`data.config`) does not load the tokenizer
libraries; import the submodules.
"""
