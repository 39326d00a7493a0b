"""The one request path: admission, then gather → decide → act (see ``pipeline.py``)."""

from autotune.pipeline.pipeline import ChatInput, Observer, Pipeline
from autotune.pipeline.reply import Reply
from autotune.pipeline.run import ChatRun

__all__ = ["ChatInput", "ChatRun", "Observer", "Pipeline", "Reply"]
