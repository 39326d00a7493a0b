"""PNG charts of a proof: time to first token and memory, raw engine vs autotune, per scenario."""

from __future__ import annotations

from pathlib import Path

from autotune.bench.proof import ProofResult

__all__ = ["write_charts"]


def write_charts(result: ProofResult, directory: Path) -> list[Path]:
    """Write ``ttft.png`` and ``memory.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to files
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in result.scenarios]
    x = range(len(names))
    width = 0.38
    paths = []

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    for offset, side, colour in (
        (-width / 2, "raw", "#9aa5b1"),
        (width / 2, "autotune", "#2f6fde"),
    ):
        med = [getattr(s, side).ttft_ms.get("median", 0) for s in result.scenarios]
        p90 = [getattr(s, side).ttft_ms.get("p90", 0) for s in result.scenarios]
        err = [max(0.0, b - a) for a, b in zip(med, p90, strict=True)]
        ax.bar(
            [i + offset for i in x],
            med,
            width,
            yerr=[[0] * len(err), err],
            capsize=3,
            label="raw engine" if side == "raw" else "autotune",
            color=colour,
        )
    ax.set_xticks(list(x), names)
    ax.set_ylabel("time to first token, ms (median; bar to p90)")
    ax.set_title(f"{result.model}: raw engine vs autotune ({result.runs} runs)")
    ax.legend()
    fig.tight_layout()
    paths.append(directory / "ttft.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    mib = 1024**2
    for offset, side, colour in (
        (-width / 2, "raw", "#9aa5b1"),
        (width / 2, "autotune", "#2f6fde"),
    ):
        kv = [(getattr(s, side).kv_bytes or 0) / mib for s in result.scenarios]
        rss = [(getattr(s, side).rss_bytes or 0) / mib for s in result.scenarios]
        ax.bar(
            [i + offset for i in x],
            rss,
            width,
            color=colour,
            alpha=0.35,
            label=f"{'raw' if side == 'raw' else 'autotune'}: engine RSS",
        )
        ax.bar(
            [i + offset for i in x],
            kv,
            width,
            color=colour,
            label=f"{'raw' if side == 'raw' else 'autotune'}: KV cache",
        )
    ax.set_xticks(list(x), names)
    ax.set_ylabel("MiB")
    ax.set_title("Engine memory: KV cache (estimate at the held context) and process RSS")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(directory / "memory.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths
