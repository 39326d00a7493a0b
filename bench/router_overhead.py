"""autotune's own cost through the router: TTFT to an upstream that answers at once.

``bench/fake_llamacpp.py`` (llama.cpp's chunk shapes, no model) on 127.0.0.1, timed three ways in
rotating order: straight to it, through ``autotune serve`` with it as the llama-server backend,
and through ``autotune serve`` with a router config naming it. With no engine competing for
the cores, the differences are autotune's (and the router's) own work per request.

    .venv/bin/python bench/router_overhead.py --requests 150
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from autotune.server.runner import free_port

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from proxy_overhead import _wait_healthy, ttft_ms  # noqa: E402


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "AUTOTUNE_HOME": tempfile.mkdtemp(prefix="autotune-bench-"),
        "AUTOTUNE_PORT": str(port),
        "AUTOTUNE_RECALL": "false",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=150, help="rounds of three requests")
    args = parser.parse_args()
    port = free_port()
    fake = subprocess.Popen([sys.executable, str(HERE / "fake_llamacpp.py"), str(port)])
    upstream = f"http://127.0.0.1:{port}"
    config = Path(tempfile.mkdtemp(prefix="router-")) / "router.yaml"
    config.write_text(
        f"upstreams:\n  - name: fake\n    url: {upstream}\n    kind: llamacpp\n"
        "    models: [smollm2:135m]\n"
    )
    plain, plain_url = _serve({"AUTOTUNE_BACKEND": "llamacpp", "AUTOTUNE_LLAMACPP_URL": upstream})
    routed, routed_url = _serve({"AUTOTUNE_ROUTER_CONFIG": str(config)})
    try:
        with httpx.Client(timeout=60) as client:
            for url in (upstream, plain_url, routed_url):
                _wait_healthy(client, url)
            urls = {
                "direct": upstream,
                "autotune, llama-server backend": plain_url,
                "autotune, router": routed_url,
            }
            paths = {k: v + "/v1/chat/completions" for k, v in urls.items()}
            for _ in range(10):  # warm every path
                for path in paths.values():
                    ttft_ms(client, path)
            times: dict[str, list[float]] = {k: [] for k in paths}
            names = list(paths)
            for i in range(args.requests):
                for name in names[i % 3 :] + names[: i % 3]:
                    times[name].append(ttft_ms(client, paths[name]))
    finally:
        for proc in (plain, routed, fake):
            proc.terminate()
            proc.wait(timeout=30)
    print(f"TTFT in ms, {args.requests} rounds in rotating order; load {os.getloadavg()[0]:.2f}")
    for name in names:
        over = [a - b for a, b in zip(times[name], times["direct"], strict=True)]
        print(
            f"  {name:32s} median {statistics.median(times[name]):7.3f}"
            f"   over direct (paired median) {statistics.median(over):7.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
