"""The KV proof's figures and table, from samples (the scenarios themselves are a benchmark,
run by `autotune proof --with-kv`, not a test)."""

from __future__ import annotations

from autotune.bench.kv_proof import KvProof, KvSample, _side, _verdict
from autotune.cli.proof_kv import kv_markdown


def test_a_restart_counts_from_its_start_to_the_first_token() -> None:
    sample = KvSample("raw", "resume", 1, ttft_ms=250.0)
    assert sample.restarted(began=10.0, asked=12.0).restart_ms == 2250.0
    failed = KvSample("raw", "resume", 1, error="HTTP 500")
    assert failed.restarted(began=10.0, asked=12.0).restart_ms is None


def test_medians_leave_failed_turns_out_and_count_them() -> None:
    samples = [
        KvSample("autotune", "resume", 1, ttft_ms=100.0, prefilled=3, prompt_tokens=4000),
        KvSample("autotune", "resume", 2, ttft_ms=300.0, prefilled=5, prompt_tokens=4010),
        KvSample("autotune", "resume", 3, error="UpstreamError: boom"),
    ]
    samples[0].restart_ms = 900.0
    figures = _side(samples)
    assert figures["turns"] == 3 and figures["errors"] == 1
    assert figures["ttft_median_ms"] == 200.0
    assert figures["restart_to_token_median_ms"] == 900.0


def test_the_verdict_says_where_autotune_loses() -> None:
    assert _verdict("x", {"ttft_median_ms": 5000.0}, {"ttft_median_ms": 100.0}).startswith(
        "First token 50.0× sooner"
    )
    assert _verdict("x", {"ttft_median_ms": 100.0}, {"ttft_median_ms": 102.0}).startswith("Parity")
    assert "slower" in _verdict("x", {"ttft_median_ms": 100.0}, {"ttft_median_ms": 150.0})
    assert _verdict("x", {"ttft_median_ms": None}, {"ttft_median_ms": 1.0}) == "No figures."
    with_load = _verdict(
        "x", {"ttft_median_ms": 5000.0}, {"ttft_median_ms": 600.0, "load_median_ms": 500.0}
    )
    assert (
        with_load.startswith("First token 8.3× sooner")
        and "50× with autotune's 500 ms" in with_load
    )


def test_the_table_has_both_sides_and_the_bytes_written() -> None:
    raw = _side([KvSample("raw", "resume", 1, ttft_ms=5000.0, prefilled=4000, prompt_tokens=4000)])
    tuned = _side([KvSample("autotune", "resume", 1, ttft_ms=100.0, prefilled=2)])
    proof = KvProof("resume", "a restart", raw, tuned, _verdict("resume", raw, tuned), 88e6)
    text = kv_markdown([proof], "smollm2:135m", 1)
    rows = [line for line in text.splitlines() if line.startswith("| resume")]
    assert len(rows) == 2 and "raw engine" in rows[0] and "autotune" in rows[1]
    assert "| 5000 |" in rows[0] and "| 100 |" in rows[1]
    assert "MiB" in rows[1] and "50.0× sooner" in text
