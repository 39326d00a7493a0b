"""The KV scenarios of ``autotune proof`` (resume, agent, switch, grow, swap-model): run, print,
report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autotune.bench.kv_proof import KV_SCENARIOS, KvProof, run_kv_proof
from autotune.cli._common import console, err_console, progress_bar, run
from autotune.cli._tables import Column, print_table
from autotune.ground.config import Settings
from autotune.ground.serialize import to_jsonable
from autotune.ground.units import format_bytes

__all__ = ["KV_SCENARIOS", "kv_markdown", "kv_rows", "run_kv"]

_HEADER = [
    "scenario",
    "side",
    "TTFT median ms",
    "TTFT p90 ms",
    "restart → token ms",
    "prefilled median",
    "prompt median",
    "disk / turn",
    "errors",
]


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def kv_rows(results: list[KvProof]) -> list[list[str]]:
    rows = []
    for r in results:
        sides = [("raw engine", r.raw), ("autotune", r.autotune)]
        if r.floor is not None:
            sides.append(("floor (raw, warm)", r.floor))
        for side, figures in sides:
            rows.append(
                [
                    r.name,
                    side,
                    _ms(figures["ttft_median_ms"]),
                    _ms(figures["ttft_p90_ms"]),
                    _ms(figures.get("restart_to_token_median_ms")),
                    _ms(figures["prefilled_median"]),
                    _ms(figures["prompt_median"]),
                    format_bytes(r.disk_bytes_per_turn) if side == "autotune" else "—",
                    str(figures["errors"]),
                ]
            )
    return rows


def kv_markdown(results: list[KvProof], model: str, runs: int) -> str:
    lines = [
        f"# autotune proof, KV scenarios: {model}",
        "",
        f"{runs} runs; raw llama.cpp (its own defaults) and `autotune serve` interleaved turn "
        "by turn, both asked by the official `openai` client with the whole history and no "
        "autotune header. TTFT runs from the request (after a restart both have loaded the "
        "model: llama-server at its start, autotune by its warm start); restart → token adds "
        "the restart itself. The floor is the raw engine asked the same turn before it "
        "restarts: its own warm follow-up at that context. Prefilled = prompt tokens the "
        "engine computed (the rest came from its cache); disk / turn = KV files autotune "
        "wrote, per turn.",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in kv_rows(results)]
    lines += ["", "## Verdicts", ""]
    lines += [f"- **{r.name}** ({r.description}): {r.verdict}" for r in results]
    return "\n".join(lines) + "\n"


async def _second_model(settings: Settings, model: str) -> tuple[str, str] | None:
    """The other bundled model, for swap-model."""
    from autotune.operations.inventory import local_file, other_bundled

    other = other_bundled(model)
    try:
        _, path = local_file(other, settings)
    except Exception:
        return None
    return other, str(path)


def run_kv(
    settings: Settings,
    model: str,
    runs: int,
    scenarios: list[str],
    report: Path | None,
    *,
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """Run the KV scenarios with a progress bar; print the table (unless ``quiet``: --json);
    write kv.json and kv.md to ``report``."""
    from autotune.operations.inventory import local_file

    name, path = local_file(model, settings)

    async def job() -> list[KvProof]:
        second = await _second_model(settings, name)
        with progress_bar("KV scenarios…") as progress:
            return await run_kv_proof(
                settings,
                name,
                str(path),
                runs=runs,
                scenarios=scenarios,
                second=second,
                progress=progress,
            )

    results = run(job)
    data: list[dict[str, Any]] = to_jsonable(results)
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / "kv.json").write_text(json.dumps(data, indent=2) + "\n")
        (report / "kv.md").write_text(kv_markdown(results, name, runs))
        err_console.print(f"report: {report / 'kv.md'}")
    if not quiet:
        columns = [Column(h, right=h not in ("scenario", "side")) for h in _HEADER]
        print_table(console, columns, kv_rows(results), title=f"KV scenarios — {name}")
        for r in results:
            console.print(f"• [bold]{r.name}[/]: {r.verdict}")
    return data
