"""What Claude Code and Codex send by default, recorded and measured, and what autotune answers.

    .venv/bin/python bench/agents.py            # needs `make setup agents`

1. Each CLI (tests/agent_harness.py: base URL, key and model name only) runs against a scripted
   upstream (tests/fakes/agent_upstream.py) that answers its first request with a tool call
   (Claude Code: ``Read``; Codex: ``exec_command``) and the next with text. Every request is
   recorded — ids, paths and the machine's name scrubbed — into
   ``tests/fixtures/agents/<agent>/NN-<method>-<route>.json``: face tests replay them without
   the CLIs.
2. The default request's size in tokens (system prompt, tools, messages), counted with the tool
   model's own tokenizer (the embedded engine's), and which fields it sends.
3. Each CLI runs against ``autotune serve`` (embedded engine, ``gemma3-tools``): per request,
   the status and the error message autotune answers today.

Figures go to ``bench/results/agents.{json,md}``; the table is printed.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from agent_harness import (  # noqa: E402
    AgentRun,
    Exchange,
    Recorder,
    agents_missing,
    run_claude,
    run_codex,
)
from autotune.server.runner import BackgroundServer  # noqa: E402
from fakes.agent_upstream import Say, ScriptedUpstream, UseTool  # noqa: E402
from tool_model import TOOL_MODEL  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "agents"
RESULTS = ROOT / "bench" / "results"
KEY = "sk-test-not-a-secret"
PROMPT = "Read hello.txt and tell me what it says."
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX = re.compile(r"\b[0-9a-f]{32,64}\b")


def _scrub(value: Any, folder: str) -> Any:
    """The recording without what is particular to this run or machine."""
    text = json.dumps(value, ensure_ascii=False)
    text = text.replace(folder + "/project", "/home/user/project").replace(folder, "/home/user")
    text = _UUID.sub("00000000-0000-0000-0000-000000000000", text)
    text = _HEX.sub(lambda m: "0" * len(m.group(0)), text)
    return json.loads(text)


def _route(exchange: Exchange) -> str:
    return exchange.path.strip("/").replace("/", "-") or "root"


def record(agent: str, run: Any, steps: list[Any], folder: Path) -> tuple[AgentRun, list[Exchange]]:
    """Run ``agent`` against the scripted upstream; write its requests as fixtures."""
    upstream = ScriptedUpstream(steps)
    recorder = Recorder(upstream.app)
    with BackgroundServer(recorder) as server:  # type: ignore[arg-type]  # any ASGI app
        done = run(server.url, KEY, TOOL_MODEL, PROMPT, folder)
    target = FIXTURES / agent
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.json"):
        old.unlink()
    http = [ex for ex in recorder.exchanges if ex.method != "WEBSOCKET"]
    for n, ex in enumerate(http, 1):
        data = {
            "method": ex.method,
            "path": ex.path,
            "query": ex.query,
            "headers": ex.headers,
            "body": ex.body,
        }
        path = target / f"{n:02d}-{ex.method.lower()}-{_route(ex)}.json"
        path.write_text(json.dumps(_scrub(data, str(folder)), indent=1, ensure_ascii=False) + "\n")
    return done, recorder.exchanges


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content or () if isinstance(p, dict))


def parts(agent: str, body: dict[str, Any]) -> dict[str, str]:
    """The default request's text in three parts: system prompt, tools, messages."""
    if agent == "claude-code":
        system = _text(body.get("system"))
        messages = "\n".join(_text(m.get("content")) for m in body.get("messages", []))
    else:
        items = body.get("input", [])
        system = body.get("instructions") or ""
        system += "\n".join(_text(i.get("content")) for i in items if i.get("role") == "developer")
        messages = "\n".join(_text(i.get("content")) for i in items if i.get("role") != "developer")
    tools = "\n".join(json.dumps(t) for t in body.get("tools", []))
    return {"system": system, "tools": tools, "messages": messages}


async def count_tokens(texts: dict[str, dict[str, str]]) -> dict[str, dict[str, int]]:
    """Tokens of each text with the tool model's own tokenizer (its engine loaded once)."""
    from autotune.backends.embedded import EmbeddedBackend
    from autotune.ground.types import LoadSettings

    backend = EmbeddedBackend(memory_budget=4 * 1024**3)
    try:
        await backend.load(TOOL_MODEL, LoadSettings(n_ctx=2048))
        out: dict[str, dict[str, int]] = {}
        for agent, by_part in texts.items():
            out[agent] = {k: len(await backend.tokenize(TOOL_MODEL, v)) for k, v in by_part.items()}
        return out
    finally:
        await backend.aclose()


def against_autotune(run: Any, folder: Path) -> tuple[AgentRun, list[Exchange]]:
    """Run an agent against autotune serve on the tool model; every exchange kept."""
    from autotune.ground.config import Settings
    from autotune.server.app import create_app

    settings = Settings(home=folder / "autotune", backend="embedded", recall=False)
    recorder = Recorder(create_app(settings))
    with BackgroundServer(recorder) as server:  # type: ignore[arg-type]  # any ASGI app
        done = run(server.url, KEY, TOOL_MODEL, "Say hi.", folder / "run")
    return done, recorder.exchanges


def _summary(exchanges: list[Exchange]) -> list[dict[str, Any]]:
    return [
        {
            "request": f"{ex.method} {ex.path}",
            "status": ex.status,
            "error": ex.error() if ex.status and ex.status >= 400 else "",
        }
        for ex in exchanges
    ]


def main() -> int:
    missing = agents_missing()
    if missing:
        print(f"bench/agents.py: {missing}", file=sys.stderr)
        return 1
    import os

    models = Path(sys.prefix) / "share" / "autotune" / "test-models"
    os.environ["AUTOTUNE_MODELS_DIR"] = str(models)
    agents = {
        "claude-code": (
            run_claude,
            [UseTool("Read", {"file_path": "{work}/hello.txt"}), Say("It says hello.")],
        ),
        "codex": (run_codex, [UseTool("exec_command", {"cmd": "cat hello.txt"}), Say("Hello.")]),
    }
    figures: dict[str, Any] = {}
    texts: dict[str, dict[str, str]] = {}
    for agent, (run, steps) in agents.items():
        with tempfile.TemporaryDirectory(prefix="agents-") as tmp:
            folder = Path(tmp)
            work = str(folder / "project")
            steps = [
                UseTool(s.name, json.loads(json.dumps(s.arguments).replace("{work}", work)))
                if isinstance(s, UseTool)
                else s
                for s in steps
            ]
            done, exchanges = record(agent, run, steps, folder)
            models_requests = [
                e for e in exchanges if e.method == "POST" and isinstance(e.body, dict)
            ]
            first = models_requests[0].body
            texts[agent] = parts(agent, first)
            figures[agent] = {
                "exit": done.returncode,
                "requests": [f"{e.method} {e.path}" for e in exchanges],
                "fields": sorted(first),
                "tools": [t.get("name") or t.get("type") for t in first.get("tools", [])],
                "bytes": len(json.dumps(first)),
            }
            today, seen = against_autotune(run, folder)
            figures[agent]["autotune"] = {"exit": today.returncode, "exchanges": _summary(seen)}
    for agent, counts in asyncio.run(count_tokens(texts)).items():
        figures[agent]["tokens"] = counts
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "agents.json").write_text(json.dumps(figures, indent=1) + "\n")
    table = _markdown(figures)
    (RESULTS / "agents.md").write_text(table)
    print(table)
    return 0


def _runs(items: list[str]) -> list[str]:
    """Consecutive equal items as one, with a count: ``7 × WEBSOCKET /v1/responses``."""
    out: list[tuple[str, int]] = []
    for item in items:
        if out and out[-1][0] == item:
            out[-1] = (item, out[-1][1] + 1)
        else:
            out.append((item, 1))
    return [f"{n} × {item}" if n > 1 else item for item, n in out]


def _markdown(figures: dict[str, Any]) -> str:
    lines = [
        "# What the agents send by default, and what autotune answers",
        "",
        f"Recorded by `bench/agents.py` (prompt: {PROMPT!r}; tokens: {TOOL_MODEL}'s tokenizer,",
        "the request's text in three parts, without the chat template's own tokens).",
        "",
        "| agent | requests in a run with one tool call | system | tools | messages | total |",
        "|---|---|---|---|---|---|",
    ]
    for agent, f in figures.items():
        t = f["tokens"]
        total = sum(t.values())
        requests = ", ".join(_runs(f["requests"]))
        lines.append(
            f"| {agent} | {requests} | {t['system']:,} | {t['tools']:,} | {t['messages']:,} "
            f"| {total:,} |"
        )
    lines += ["", "Fields of the first model request:", ""]
    for agent, f in figures.items():
        tools = ", ".join(map(str, f["tools"]))
        lines.append(f"- {agent} ({f['bytes']:,} bytes): {', '.join(f['fields'])}; tools: {tools}")
    lines += ["", "Against `autotune serve` today (prompt 'Say hi.'):", ""]
    lines += ["| agent | request | status | message |", "|---|---|---|---|"]
    for agent, f in figures.items():
        rows = [
            f"{ex['request']} | {ex['status']} | {ex['error'].replace('|', '/')}"
            for ex in f["autotune"]["exchanges"]
        ]
        for row in _runs(rows):
            lines.append(f"| {agent} | {row} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
