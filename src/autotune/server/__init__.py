"""The HTTP server: an OpenAI-compatible API plus autotune's own admin endpoints."""
