"""Layer 5, model: one Hugging Face encoder with a head per task (`multitask`), loading encoders and
tokenizers from the hub or local folders."""
