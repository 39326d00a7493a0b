"""Models: GGUF metadata, discovery on disk, memory estimates, fit verdicts and the catalog."""
