"""Builds the tool-capable test model: Gemma-3-270M's GGUF with a chat template that renders tools.

Neither test model's own GGUF has a template with tools (Gemma-3-270M's has none at all), so
no tool call could go through the real engine. This copy carries
``fixtures/tool_model/gemma3-tools.jinja`` as its ``tokenizer.chat_template``; llama.cpp reads
the tool-call markers off that template (its differential template analysis) and parses real
``tool_calls`` from what the model writes. Gemma-3-270M, not SmolLM2, because the agents'
default requests (Claude Code ~12k tokens, Codex ~9k) do not fit SmolLM2's 8,192-token context
and fit Gemma's 32,768. ``make setup`` runs this once (the output file is its own stamp)::

    python tests/tool_model.py SOURCE.gguf TARGET.gguf
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["TEMPLATE", "TOOL_MODEL", "build"]

#: The model name autotune gives the file (its stem) when its folder is AUTOTUNE_MODELS_DIR.
TOOL_MODEL = "gemma3-tools"
TEMPLATE = Path(__file__).parent / "fixtures" / "tool_model" / "gemma3-tools.jinja"


def build(source: Path, target: Path, template: Path = TEMPLATE) -> None:
    """Copy ``source`` to ``target`` with ``template`` as its chat template (written beside it
    and renamed, so a half-written file is never taken for a finished one)."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    partial = target.with_name(target.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(partial, arch=arch, endianess=reader.endianess)
    text = template.read_text(encoding="utf-8")
    new = {"tokenizer.chat_template": MetadataDetails(gguf.GGUFValueType.STRING, text)}
    copy_with_new_metadata(reader, writer, new, [])
    os.replace(partial, target)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python tests/tool_model.py SOURCE.gguf TARGET.gguf")
    build(Path(sys.argv[1]), Path(sys.argv[2]))
