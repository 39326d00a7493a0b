"""autotune: makes locally-run LLMs answer sooner, use less memory, never swap, and remember."""

__version__ = "0.1.0"
__all__ = ["__version__"]
