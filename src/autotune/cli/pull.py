"""``autotune pull NAME``: download a GGUF model from the Hugging Face hub (embedded engine)."""

from __future__ import annotations

from typing import Any

import typer

from autotune.chat.progress import show_pull
from autotune.cli._common import console, err_console, print_json, run
from autotune.cli._help import PlainCommand
from autotune.ground.config import get_settings
from autotune.ground.units import format_bytes

__all__ = ["pull", "register"]


def pull(
    name: str = typer.Argument(
        ...,
        metavar="NAME",
        help="An Ollama-style name (qwen3:8b, llama3.2:3b, gemma3:1b) or a Hugging Face GGUF "
        "repository: hf.co/ORG/REPO or hf.co/ORG/REPO:QUANT.",
    ),
    force: bool = typer.Option(
        False, "--force", help="Download even when the model will not fit this machine."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Download a model for the embedded engine into the Hugging Face cache.

    The fit verdict for this machine is shown first, and a model that will not fit is not
    downloaded without --force. A dropped connection resumes where it stopped; the file's
    sha256 is checked against the hub's. Afterwards the model runs by the name you pulled
    (autotune chat --model NAME). Settings it reads: HF_ENDPOINT (a hub mirror), HF_TOKEN
    (gated or private repos), HF_HOME / HF_HUB_CACHE (where files go), AUTOTUNE_MEMORY_BUDGET.
    """
    from autotune.backends.hub import Hub, judge
    from autotune.hardware.profile import detect_hardware, effective_budget

    settings = get_settings()
    out = err_console if json_out else console
    budget = effective_budget(detect_hardware(), settings.memory_budget)
    hub = Hub(token=settings.hf_token)
    with out.status(f"Looking up {name} on {hub.endpoint}…"):
        plan = run(lambda: hub.plan(name, budget_bytes=budget))
    for file in plan.files:
        out.print(f"{name} → {plan.target.repo}  {file.path}  {format_bytes(file.size)}")
    if plan.fit is not None:
        style = "green" if plan.fit.verdict.value == "fits comfortably" else "yellow"
        out.print(f"On this machine: [{style}]{plan.fit.text}[/]")
    judge(plan, force=force)
    run(lambda: show_pull(hub.pull(plan), out))
    paths = hub.local_paths(plan)
    if json_out:
        print_json(_result(name, plan, paths))
        return
    out.print(f"Pulled {name} ({paths[0]}).")
    out.print(f"  Chat with it: autotune chat --model {name}")


def _result(name: str, plan: Any, paths: list[Any]) -> dict[str, Any]:
    return {
        "name": name,
        "repo": plan.target.repo,
        "revision": plan.revision,
        "quantization": plan.target.quant,
        "size_bytes": plan.total_bytes,
        "files": [
            {"path": f.path, "size_bytes": f.size, "sha256": f.sha256, "local_path": str(p)}
            for f, p in zip(plan.files, paths, strict=True)
        ],
        "verified": all(f.sha256 for f in plan.files),
        "fit": {"verdict": plan.fit.verdict.value, "text": plan.fit.text} if plan.fit else None,
    }


def register(app: typer.Typer) -> None:
    app.command("pull", cls=PlainCommand)(pull)
