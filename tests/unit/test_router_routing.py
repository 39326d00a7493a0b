"""The router's decisions as pure functions: who serves the model, affinity, least busy, weights."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autotune.backends.metrics_adapters import EngineLoad
from autotune.backends.routing import (
    UpstreamView,
    affinity_key,
    choose_upstream,
    external_load,
    model_name_on,
    servers_of,
)

QWEN = frozenset({"qwen3:8b"})


def view(name: str, **kw: object) -> UpstreamView:
    return UpstreamView(name=name, models=kw.pop("models", QWEN), **kw)  # type: ignore[arg-type]


def test_only_upstreams_that_serve_the_model_and_are_up() -> None:
    views = [
        view("a", models=frozenset({"llama3.2:latest"})),
        view("b", available=False),
        view("c", models=None),  # not known yet: serves nothing
        view("d", in_flight=7),
    ]
    choice = choose_upstream("qwen3:8b", views)
    assert choice is not None and choice.upstream == "d"
    assert choose_upstream("mistral:7b", views) is None
    assert [v.name for v in servers_of("qwen3:8b", views)] == ["b", "d"]


def test_model_names_match_like_ollama() -> None:
    assert model_name_on(["Qwen3:8B"], "qwen3:8b") == "Qwen3:8B"
    assert model_name_on(["llama3.2:latest"], "llama3.2") == "llama3.2:latest"
    assert model_name_on(["llama3.2"], "llama3.2:latest") == "llama3.2"
    assert model_name_on(["llama3.2:1b"], "llama3.2") is None
    assert model_name_on(None, "x") is None


def test_the_chosen_name_is_the_upstreams_own() -> None:
    choice = choose_upstream("llama3.2", [view("a", models=frozenset({"llama3.2:latest"}))])
    assert choice is not None and choice.model == "llama3.2:latest"


def test_least_busy_counts_in_flight_and_the_engines_queue_for_others() -> None:
    views = [view("a", in_flight=2), view("b", in_flight=0, external=3), view("c", in_flight=1)]
    choice = choose_upstream("qwen3:8b", views)
    assert choice is not None and (choice.upstream, choice.reason) == ("c", "least busy")


def test_ties_go_to_the_least_recently_chosen() -> None:
    views = [view("a", last_pick=5), view("b", last_pick=3), view("c", last_pick=9)]
    choice = choose_upstream("qwen3:8b", views)
    assert choice is not None and choice.upstream == "b"


def test_weight_two_takes_twice_the_share() -> None:
    counts = {"big": 0, "small": 0}
    for _ in range(30):
        views = [
            view("big", weight=2.0, in_flight=counts["big"], last_pick=0),
            view("small", weight=1.0, in_flight=counts["small"], last_pick=0),
        ]
        choice = choose_upstream("qwen3:8b", views)
        assert choice is not None
        counts[choice.upstream] += 1
    assert counts == {"big": 20, "small": 10}


def test_affinity_keeps_the_conversation_unless_far_busier() -> None:
    views = [view("a", in_flight=3), view("b", in_flight=0)]
    keep = choose_upstream("qwen3:8b", views, pinned="a", max_imbalance=4)
    assert keep is not None and (keep.upstream, keep.reason) == ("a", "affinity")
    views = [view("a", in_flight=6), view("b", in_flight=0)]
    moved = choose_upstream("qwen3:8b", views, pinned="a", max_imbalance=4)
    assert moved is not None and moved.upstream == "b"
    assert moved.reason.startswith("affinity yielded")


def test_affinity_to_a_down_or_excluded_upstream_is_ignored() -> None:
    views = [view("a", available=False), view("b"), view("c", in_flight=1)]
    assert choose_upstream("qwen3:8b", views, pinned="a").upstream == "b"  # type: ignore[union-attr]
    choice = choose_upstream("qwen3:8b", views, pinned="b", exclude={"b"})
    assert choice is not None and choice.upstream == "c"


def test_affinity_key_is_the_conversation_id_else_system_and_first_user_message() -> None:
    turn1 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    turn2 = [*turn1, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "?"}]
    assert affinity_key(turn1) == affinity_key(turn2)
    other = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Yo"}]
    assert affinity_key(other) != affinity_key(turn1)
    assert affinity_key(turn1, "conv-1") == "conv:conv-1" != affinity_key(turn2, "conv-2")
    assert affinity_key([]) is None
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert affinity_key(parts) == affinity_key([dict(m) for m in parts])


def test_external_load_subtracts_autotunes_own_requests() -> None:
    assert external_load(EngineLoad(running=2, waiting=3), in_flight_at_scrape=4) == 1.0
    assert external_load(EngineLoad(running=1, waiting=0), in_flight_at_scrape=4) == 0.0
    assert external_load(EngineLoad(healthy=True), in_flight_at_scrape=0) == 0.0  # unknown


names = st.sampled_from(["a", "b", "c", "d"])


@given(
    st.lists(
        st.builds(
            UpstreamView,
            name=names,
            models=st.sampled_from([QWEN, frozenset(), None]),
            weight=st.floats(0.1, 10),
            in_flight=st.integers(0, 50),
            external=st.floats(0, 50),
            available=st.booleans(),
            last_pick=st.integers(0, 100),
        ),
        max_size=6,
        unique_by=lambda v: v.name,
    ),
    st.sets(names),
)
def test_a_choice_always_serves_the_model_and_is_least_busy(
    views: list[UpstreamView], exclude: set[str]
) -> None:
    choice = choose_upstream("qwen3:8b", views, exclude=exclude)
    eligible = [v for v in views if v.available and v.models == QWEN and v.name not in exclude]
    if not eligible:
        assert choice is None
        return
    assert choice is not None
    chosen = next(v for v in views if v.name == choice.upstream)
    assert chosen in eligible
    assert chosen.score == min(v.score for v in eligible)
