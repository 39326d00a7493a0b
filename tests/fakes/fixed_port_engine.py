"""A real llama.cpp server (xllamacpp, the embedded engine's own launcher) on a port chosen by the
test, so an upstream that is killed can be restarted at the same URL.

Not a fake: it runs :func:`autotune.backends.engine_worker.build_params` unchanged and only
replaces the OS-chosen port with ``spec["port"]``. Same protocol as the engine worker: one JSON
line ``{"url": ...}`` or ``{"error": ...}`` on stdout, then serve until stdin closes or SIGTERM.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

__all__ = ["main"]


def main() -> int:
    spec = json.loads(sys.argv[1])
    try:
        import xllamacpp as x

        from autotune.backends.engine_worker import build_params

        params = build_params(spec)
        params.port = int(spec["port"])
        server = x.Server(params)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"url": server.listening_address}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_parent() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    while not stop.wait(1.0):
        pass
    del server
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
