"""``autotune hardware``: what this machine has and the memory budget autotune plans with."""

from __future__ import annotations

import typer

from autotune.cli._common import console, print_json
from autotune.cli._help import PlainCommand
from autotune.cli._tables import details_table
from autotune.ground.config import get_settings
from autotune.ground.serialize import to_jsonable
from autotune.ground.units import format_bytes

__all__ = ["register"]


def hardware(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show CPU, memory, GPU, memory bandwidth and the planning budget.

    The budget is AUTOTUNE_MEMORY_BUDGET when set, else the available RAM minus a reserve.
    """
    from autotune.hardware.pressure import memory_pressure
    from autotune.hardware.profile import detect_hardware, effective_budget

    profile = detect_hardware()
    settings_budget = get_settings().memory_budget
    budget = effective_budget(profile, settings_budget)
    tier, used = memory_pressure()
    if json_out:
        print_json(
            {
                **to_jsonable(profile),
                "accelerator": profile.accelerator,
                "budget_bytes": budget,
                "budget_source": "AUTOTUNE_MEMORY_BUDGET"
                if settings_budget is not None
                else "available RAM minus reserve",
                "memory_pressure": tier.label,
                "ram_used_fraction": round(used, 4),
            }
        )
        return
    table = details_table()
    table.add_row("OS", f"{profile.os} {profile.os_version} ({profile.machine})")
    table.add_row(
        "CPU",
        f"{profile.cpu_model} — {profile.physical_cores} physical / "
        f"{profile.logical_cores} logical cores",
    )
    table.add_row(
        "RAM",
        f"{format_bytes(profile.ram_total)} total, "
        f"{format_bytes(profile.ram_available)} available "
        f"({used:.0%} used, pressure {tier.label})",
    )
    table.add_row(
        "Swap", f"{format_bytes(profile.swap_used)} used of {format_bytes(profile.swap_total)}"
    )
    if profile.gpus:
        for gpu in profile.gpus:
            kind = "unified memory" if gpu.unified else f"{format_bytes(gpu.memory_total)} VRAM"
            table.add_row("GPU", f"{gpu.name} ({kind})")
    else:
        table.add_row("GPU", "none — models run on the CPU")
    table.add_row(
        "Bandwidth", f"{profile.memory_bandwidth_gbs:g} GB/s ({profile.bandwidth_source})"
    )
    why = (
        "AUTOTUNE_MEMORY_BUDGET" if settings_budget is not None else "available RAM minus a reserve"
    )
    table.add_row("Budget", f"[bold]{format_bytes(budget)}[/] for models ({why})")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("hardware", cls=PlainCommand)(hardware)
