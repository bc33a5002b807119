"""Layer 0, support: crash-safe file writes, text tables, the CPU allocator setting, the choice of
precision and of threads, the run-folder lock, strict YAML and whether the hub can be reached.
Imports nothing else of mtsmart."""
