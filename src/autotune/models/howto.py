"""How to get a well-known model this machine does not have: the command, and whether it fits.

Pure knowledge: the caller says whether Ollama answers here and what this machine's memory
budget and bandwidth are; the fit comes from the catalog's ranking (the same verdicts as
``autotune recommend``). A name the catalog does not know gets no hint here, so the CLI
keeps its "Did you mean" alone.

``autotune pull`` (issue 16) downloads the GGUF for every catalog name; the hint names it
first, before Ollama (pass ``autotune_pull=False`` to leave it out).
"""

from __future__ import annotations

from dataclasses import dataclass

from autotune.ground.units import format_bytes
from autotune.models.catalog import DEFAULT_CONTEXT, CatalogModel, catalog, recommend

__all__ = ["AUTOTUNE_PULL", "Machine", "how_to_get", "known_model"]

#: Whether ``autotune pull NAME`` exists (it does since issue 16).
AUTOTUNE_PULL = True


@dataclass(frozen=True)
class Machine:
    """What the fit verdict needs about this machine."""

    budget_bytes: int
    bandwidth_gbs: float
    bandwidth_source: str


def known_model(name: str) -> tuple[CatalogModel, str] | None:
    """The catalog entry for an Ollama name (or one of its exact tags), and the tag to pull.

    Case does not matter; ``qwen3:8b:latest`` style suffixes are not guessed.
    """
    wanted = name.strip().lower()
    for model in catalog():
        if model.name.lower() == wanted:
            return model, model.name
        for tag in model.ollama_tags.values():
            if tag.lower() == wanted:
                return model, tag
    return None


def how_to_get(
    name: str,
    *,
    ollama: bool,
    machine: Machine | None = None,
    autotune_pull: bool | None = None,
) -> list[str]:
    """Sentences telling how to get ``name`` and whether it fits; empty for unknown names.

    ``ollama``: an Ollama server answers here. ``machine``: add the catalog's fit verdict
    for this budget. ``autotune_pull`` overrides :data:`AUTOTUNE_PULL`.
    """
    found = known_model(name)
    if found is None:
        return []
    model, tag = found
    lines = []
    if AUTOTUNE_PULL if autotune_pull is None else autotune_pull:
        lines.append(f"Get it with: autotune pull {tag}")
    if ollama:
        lines.append(f"Get it with Ollama, which is running here: ollama pull {tag}")
    else:
        lines.append(
            f"It is in Ollama's library: with Ollama installed and running, `ollama pull {tag}` "
            "gets it (autotune then runs it, even with Ollama stopped)."
        )
    if machine is not None:
        lines.append(_fit_line(model, machine))
    return lines


def _fit_line(model: CatalogModel, machine: Machine) -> str:
    """The catalog's verdict for each quantisation, e.g. ``Q4_K_M fits comfortably (…)``."""
    recs = recommend(
        machine.budget_bytes,
        machine.bandwidth_gbs,
        bandwidth_source=machine.bandwidth_source,
        models=[model],
    )
    by_quant = sorted(recs, key=lambda r: r.quant)
    verdicts = "; ".join(
        f"{r.quant} {r.fit} ({format_bytes(r.memory_bytes)}, {r.speed_text})" for r in by_quant
    )
    context = by_quant[0].context_tokens if by_quant else DEFAULT_CONTEXT
    return (
        f"On this machine (budget {format_bytes(machine.budget_bytes)}, "
        f"{context:,}-token context): {verdicts}."
    )
