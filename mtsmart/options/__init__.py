"""Layer 1, options: every config key, its default, its range and the names it replaced
(docs/configuration.md is generated from these dataclasses). No model code, no transformers."""
