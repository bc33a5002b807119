"""Layer 0, support: crash-safe file writes, text tables, the CPU allocator setting and the choice
of precision. Imports nothing else of mtsmart."""
