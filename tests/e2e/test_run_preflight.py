"""``autotune run MODEL``: the memory pre-flight, its refusals and its offer of a smaller context.

Real subprocesses on the bundled model (SmolLM2-135M, Q4_1, 93.8 MiB of weights). Its
estimates under the fast profile (q8_0 KV): 187.0 MiB at 2,048 tokens, 167.6 MiB at 512, and
177.3 MiB at 1,280 tokens, the largest context within 90 % of a 200 MiB budget.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pexpect
import pytest


def env(budget: str) -> dict[str, str]:
    return {
        **os.environ,
        "AUTOTUNE_BACKEND": "embedded",
        "AUTOTUNE_MEMORY_BUDGET": budget,
        "AUTOTUNE_THREADS": "1",  # two cores shared with other test runs
        "AUTOTUNE_RECALL": "false",  # recall has its own tests (test_chat_memory.py)
        "NO_COLOR": "1",
    }


def run(
    *args: str, budget: str, stdin: str = "", timeout: float = 55
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autotune", "run", "smollm2:135m", *args],
        input=stdin,
        env=env(budget),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_model_larger_than_the_budget_is_refused_with_the_numbers() -> None:
    done = run(budget="150MiB", stdin="hi\n")
    assert done.returncode == 1
    assert done.stdout == ""  # nothing was chatted
    err = done.stderr
    assert "Traceback" not in err
    for fact in (
        "weights   93.8 MiB",
        "KV cache  23.9 MiB at 2,048 tokens (q8_0)",
        "overhead  48.0 MiB",
    ):
        assert fact in err
    assert "187.0 MiB of a 150.0 MiB budget (125%; AUTOTUNE_MEMORY_BUDGET)" in err
    assert "verdict   will not fit" in err
    assert "profile   fast: quality would use" in err  # what auto picked, and why
    assert "refused:" in err and "even a 512-token context needs 167.6 MiB" in err


def test_without_a_terminal_a_smaller_context_is_named_but_not_taken() -> None:
    done = run(budget="200MiB", stdin="hi\n")
    assert done.returncode == 1 and done.stdout == ""
    assert "verdict   swap risk" in done.stderr
    assert "a 1,280-token context needs 177.3 MiB and fits" in done.stderr
    assert "--context 1280" in done.stderr


@pytest.mark.engine
def test_the_named_context_runs_and_the_planner_holds_the_load_to_it() -> None:
    done = run("--context", "1280", "--max-tokens", "6", "--verbose", budget="200MiB", stdin="Hi\n")
    assert done.returncode == 0, done.stderr
    assert "177.3 MiB of a 200.0 MiB budget" in done.stderr and "verdict   tight" in done.stderr
    assert "plan: profile=fast; ctx=1280" in done.stderr
    assert done.stdout.strip()


@pytest.mark.engine
def test_in_a_terminal_the_smaller_context_is_offered_and_used() -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "autotune", "run", "smollm2:135m", "--max-tokens", "6", "--verbose"],
        env=env("200MiB"),
        encoding="utf-8",
        timeout=45,
        dimensions=(40, 120),
    )
    try:
        child.expect_exact("swap risk")
        child.expect_exact("Use a 1,280-token context instead? [Y/n]")
        child.sendline("")  # the default is yes
        child.expect_exact("Context capped at 1,280 tokens")
        child.expect_exact("you ›")
        child.sendline("Hi")
        child.expect(r"plan: profile=fast; ctx=(\d+)")
        assert child.match.group(1) == "1280"
        child.expect(r"ctx \d+/1,280 tokens")
        child.expect_exact("you ›")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_in_a_terminal_declining_the_offer_starts_nothing() -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "autotune", "run", "smollm2:135m"],
        env=env("200MiB"),
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 120),
    )
    try:
        child.expect_exact("[Y/n]")
        child.sendline("n")
        child.expect_exact("Not started.")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 1


@pytest.mark.engine
def test_a_model_that_fits_gets_the_report_then_the_chat() -> None:
    done = run("--max-tokens", "4", budget="2GiB", stdin="Hi\n")
    assert done.returncode == 0, done.stderr
    assert "verdict   fits comfortably" in done.stderr
    assert "profile   quality: fits comfortably at its 8,192-token context" in done.stderr
    assert "KV cache  180.0 MiB at 8,192 tokens (f16)" in done.stderr
    assert done.stdout.strip()
