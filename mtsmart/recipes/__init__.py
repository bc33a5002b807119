"""Layer 9, recipes: the order of things — the training loop (`train`, imported by the CLI alone),
the same step inside `transformers.Trainer` (`hf`), the other sub-commands and the study runner."""
