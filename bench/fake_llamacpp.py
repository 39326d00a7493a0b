"""An instant stand-in for llama-server, used only to isolate autotune's own proxy cost.

It answers ``/v1/chat/completions`` (and ``/v1/completions``, with ``text_completion``
chunks of the same shape, for the completions face) with the chunk sequence the real
llama.cpp server sends (role, content, finish, usage + timings, [DONE]; shapes copied from
the embedded engine's output) without computing anything, and ``/v1/models``, ``/health``.
Not a test double for behaviour: only for timing the proxy's own work.

    python bench/fake_llamacpp.py PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

_CHUNKS = [
    {
        "choices": [
            {"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}
        ]
    },
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"content": "Yes"}}]},
    {"choices": [{"finish_reason": "length", "index": 0, "delta": {}}]},
    {
        "choices": [],
        "usage": {
            "completion_tokens": 1,
            "prompt_tokens": 38,
            "total_tokens": 39,
            "prompt_tokens_details": {"cached_tokens": 37},
        },
        "timings": {
            "cache_n": 37,
            "prompt_n": 1,
            "prompt_ms": 0.1,
            "predicted_n": 1,
            "predicted_ms": 0.1,
        },
    },
]
_BASE = {"object": "chat.completion.chunk", "model": "smollm2:135m", "created": 0, "id": "x"}
_EVENTS = [
    b"data: " + json.dumps({**_BASE, **c}, separators=(",", ":")).encode() + b"\n\n"
    for c in _CHUNKS
] + [b"data: [DONE]\n\n"]
_TEXT = [
    {"choices": [{"text": "Yes", "index": 0, "logprobs": None, "finish_reason": None}]},
    {
        "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}],
        "usage": _CHUNKS[-1]["usage"],
        "timings": _CHUNKS[-1]["timings"],
    },
]
_TEXT_EVENTS = [
    b"data: "
    + json.dumps({**_BASE, "object": "text_completion", **c}, separators=(",", ":")).encode()
    + b"\n\n"
    for c in _TEXT
] + [b"data: [DONE]\n\n"]
_MODELS = b'{"object":"list","data":[{"id":"smollm2:135m","object":"model"}]}'


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = 0
            for line in lines:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if length:
                await reader.readexactly(length)
            if lines[0].startswith(b"GET"):
                body = _MODELS if b"/v1/models" in lines[0] else b'{"status":"ok"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                events = _TEXT_EVENTS if b"/v1/completions" in lines[0] else _EVENTS
                writer.write(b"".join(_chunk(e) for e in events) + b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _main(port: int) -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1])))
