"""``autotune pull NAME``: download a model, as every face pulls (operations/pull.py)."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from autotune.chat.progress import show_pull
from autotune.cli._common import console, err_console, print_json, run
from autotune.cli._help import PlainCommand
from autotune.ground.config import get_settings
from autotune.ground.units import format_bytes
from autotune.operations.pull import Pull, prepare_pull

__all__ = ["pull", "register"]


def pull(
    ctx: typer.Context,
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
    """Download a model: with Ollama in use, Ollama pulls it; else a GGUF for the embedded
    engine comes into the Hugging Face cache (as /api/pull and the chat's /pull do).

    From the hub, the fit verdict for this machine is shown first, and a model that will not
    fit is not downloaded without --force. A dropped connection resumes where it stopped; the
    file's sha256 is checked against the hub's. Afterwards the model runs by the name you
    pulled (autotune chat --model NAME). Settings it reads: HF_ENDPOINT (a hub mirror),
    HF_TOKEN (gated or private repos), HF_HOME / HF_HUB_CACHE (where files go),
    AUTOTUNE_MEMORY_BUDGET, and Ollama's address (AUTOTUNE_OLLAMA_URL).
    """
    from autotune.runtime import open_runtime

    out = err_console if json_out else console

    async def job() -> dict[str, Any]:
        runtime = await open_runtime(
            get_settings(), backend=(ctx.obj or {}).get("backend"), start_sampler=False
        )
        try:
            with out.status(f"Looking up {name}…"):
                found = await prepare_pull(runtime, name)
            _print_plan(out, name, found)
            found.check(force=force)
            await show_pull(found.steps(), out)
            return _result(name, found)
        finally:
            await runtime.aclose()

    result = run(job)
    if json_out:
        print_json(result)
        return
    where = result["files"][0]["local_path"] if result["files"] else result["engine"]
    out.print(f"Pulled {name} ({where}).")
    out.print(f"  Chat with it: autotune chat --model {name}")


def _print_plan(out: Console, name: str, found: Pull) -> None:
    plan = found.plan
    if plan is None:
        out.print(f"{name}: pulled by {found.engine}")
        return
    for file in plan.files:
        out.print(f"{name} → {plan.target.repo}  {file.path}  {format_bytes(file.size)}")
    if plan.fit is not None:
        style = "green" if plan.fit.verdict.value == "fits comfortably" else "yellow"
        out.print(f"On this machine: [{style}]{plan.fit.text}[/]")


def _result(name: str, found: Pull) -> dict[str, Any]:
    plan = found.plan
    if plan is None:
        return {"name": name, "engine": found.engine, "files": []}
    paths = found.local_paths()
    return {
        "name": name,
        "engine": found.engine,
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
