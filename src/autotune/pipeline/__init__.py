"""The one request path: admission, gather, decide, act (see ``pipeline.py``)."""

from autotune.pipeline.pipeline import ChatInput, ChatRun, Observer, Pipeline, TunedLookup

__all__ = ["ChatInput", "ChatRun", "Observer", "Pipeline", "TunedLookup"]
