"""The agents' harness: ``agents.claude(prompt)`` / ``agents.codex(prompt)`` run the real CLIs
(installed by ``make agents``) against ``autotune serve`` on the embedded engine, every exchange
recorded (tests/agent_harness.py). The model they are given is the tool-capable test model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_harness import AgentRun, Exchange, Recorder, agents_missing, run_claude, run_codex
from autotune.ground.config import Settings, get_settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer
from tool_model import TOOL_MODEL

#: The key the agents send (autotune asks for none on loopback; any key is taken).
AGENT_KEY = "sk-test-not-a-secret"
#: AUTOTUNE_MAX_REPLY_TOKENS of the agents' serve: Gemma-3-270M does not end its turn after
#: an agent's ~10k-token prompt (it copies the prompt back for thousands of tokens), so each
#: reply is bounded to keep the agents' tests to a few minutes of engine time.
MAX_REPLY = 24


@dataclass
class Agents:
    """Runs an agent against the recording server; returns its run and its new exchanges."""

    url: str
    recorder: Recorder
    folder: Path

    def claude(self, prompt: str, name: str = "claude") -> tuple[AgentRun, list[Exchange]]:
        return self._run(run_claude, prompt, name, "/v1/messages")

    def codex(self, prompt: str, name: str = "codex") -> tuple[AgentRun, list[Exchange]]:
        return self._run(run_codex, prompt, name, "/v1/responses")

    def _run(
        self, runner: Callable[..., AgentRun], prompt: str, name: str, path: str
    ) -> tuple[AgentRun, list[Exchange]]:
        """Run the agent until its first request to ``path`` is answered whole (or it ends):
        what a small model answers next is the agent's business (Claude Code asks again and
        again after a reply cut at the serve's cap), and costs minutes of engine time."""
        before = len(self.recorder.exchanges)

        def answered() -> bool:
            new = self.recorder.exchanges[before:]
            return any(e.method == "POST" and e.path == path and e.done for e in new)

        done = runner(self.url, AGENT_KEY, TOOL_MODEL, prompt, self.folder / name, 800, answered)
        return done, self.recorder.exchanges[before:]


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory, tool_models_dir: Path) -> Iterator[Agents]:
    missing = agents_missing()
    if missing:
        pytest.fail(f"the agents are not installed: {missing}")
    folder = tmp_path_factory.mktemp("agents")
    with pytest.MonkeyPatch.context() as env:  # the module's agents run in its fixtures
        env.setenv("AUTOTUNE_MODELS_DIR", str(tool_models_dir))
        get_settings.cache_clear()
        settings = Settings(
            home=folder / "autotune",
            backend="embedded",
            recall=False,
            models_dir=tool_models_dir,
            max_reply_tokens=MAX_REPLY,
        )
        recorder = Recorder(create_app(settings))
        with BackgroundServer(recorder) as server:  # type: ignore[arg-type]  # any ASGI app
            yield Agents(server.url, recorder, folder)
    get_settings.cache_clear()
