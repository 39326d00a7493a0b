"""A long conversation keeps the engine's prompt cache warm: the real engine, real HTTP.

The client resends its whole history every turn (as OpenAI clients do). The fast profile
caps the context at 2,048 tokens, so a conversation of ~3,000 tokens must be compacted (32
turns whose questions carry a little context each, as people's do: fewer, longer turns than
60 short ones reach the same size at half the decoding); between compactions the prompt
prefix is byte-identical and the engine reuses it.
"""

from __future__ import annotations

import httpx
import pytest

from autotune.server.runner import BackgroundServer

pytestmark = pytest.mark.engine

TOPICS = [
    "the Rhine",
    "Saturn's rings",
    "sourdough",
    "the Linux scheduler",
    "tidal power",
    "Roman roads",
    "octopus camouflage",
    "jazz harmony",
    "glacier retreat",
    "TCP slow start",
]
TURNS = 32


def test_a_long_conversation_changes_the_prefix_at_most_three_times(start_server) -> None:
    server: BackgroundServer = start_server()
    messages = [{"role": "system", "content": "You are a concise assistant."}]
    prompts, cached, plans = [], [], []
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for turn in range(TURNS):
            topic = TOPICS[turn % len(TOPICS)]
            messages.append(
                {
                    "role": "user",
                    "content": f"Turn {turn}: I am reading about {topic} for a class "
                    f"and my notes on it are thin. Tell me one fact about {topic} that "
                    "a student should remember, in a single short sentence.",
                }
            )
            reply = http.post(
                "/v1/chat/completions",
                headers={"X-Autotune-Profile": "fast"},
                json={
                    "model": "smollm2:135m",
                    "messages": messages,
                    "max_tokens": 24,
                    "temperature": 0,
                    "seed": turn,
                },
            )
            assert reply.status_code == 200, reply.text
            body = reply.json()
            prompts.append(body["usage"]["prompt_tokens"])
            cached.append(body["usage"]["prompt_tokens_details"]["cached_tokens"])
            plans.append(reply.headers["X-Autotune-Plan"])
            messages.append(
                {"role": "assistant", "content": body["choices"][0]["message"]["content"]}
            )
    # the conversation outgrew the context and was compacted (twice, here: ~1,500 tokens is
    # the window's high-water mark), not refused or truncated
    assert any("context=recent+facts" in p or "context=compressed" in p for p in plans[-10:])
    assert all("ctx=2048" in p for p in plans)  # never reloaded to a bigger context
    # llama.cpp re-evaluates at most the last token of a fully matched prefix
    changed = [t for t in range(1, TURNS) if cached[t] < prompts[t - 1] - 1]
    assert len(changed) <= 3, (changed, list(zip(prompts, cached, strict=True)))
    assert max(prompts) <= 2048
