"""The router's config file: a bad one is refused with one line per problem, naming the key's
path and what was expected; the shipped example is valid and documents every key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from autotune.backends.router_config import (
    RouterConfig,
    RouterConfigError,
    UpstreamConfig,
    load_router_config,
    parse_router_config,
)
from autotune.ground.config import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "router.yaml"


def problems(data: Any) -> list[str]:
    with pytest.raises(RouterConfigError) as caught:
        parse_router_config(data, "router.yaml")
    return caught.value.problems


def up(**kw: Any) -> dict[str, Any]:
    return {"url": "http://127.0.0.1:8080", "kind": "llamacpp", **kw}


def test_a_wrong_type_names_the_path_and_what_was_expected() -> None:
    bad = problems({"upstreams": [up(), up(url="http://127.0.0.1:8081", weight="heavy")]})
    assert bad == ['upstreams[1].weight: expected a number, got "heavy"']


def test_an_unknown_key_lists_the_known_ones() -> None:
    bad = problems({"upstreams": [up(wieght=2)], "cooldwon": 3})
    assert bad[0].startswith("upstreams[0].wieght: unknown key (expected one of: name, url,")
    assert "weight" in bad[0]
    assert bad[1].startswith("cooldwon: unknown key (expected one of: upstreams, affinity,")


def test_duplicate_upstreams_are_refused() -> None:
    bad = problems(
        {
            "upstreams": [
                up(name="a"),
                up(name="b", url="http://127.0.0.1:8080/v1"),  # the same server
                up(name="a", url="http://127.0.0.1:9000"),
            ]
        }
    )
    assert bad == [
        'upstreams[1].url: duplicate upstream "http://127.0.0.1:8080/v1" (also upstreams[0])',
        'upstreams[2].name: duplicate upstream name "a" (also upstreams[0])',
    ]


def test_every_problem_at_once_one_line_each() -> None:
    bad = problems(
        {
            "upstreams": [
                {"url": "ftp://x", "kind": "tgi", "models": "qwen3:8b", "weight": 0},
                {"kind": "vllm"},
            ],
            "affinity": "yes",
            "cooldown": -1,
        }
    )
    assert bad == [
        'upstreams[0].url: expected an http:// or https:// URL with a host, got "ftp://x"',
        "upstreams[0].kind: expected one of 'ollama', 'lmstudio', 'llamacpp', 'openai', "
        "'vllm', 'sglang' or 'mlx', got \"tgi\"",
        'upstreams[0].models: expected a list, got "qwen3:8b"',
        "upstreams[0].weight: expected a number above 0, got 0",
        "upstreams[1].url: missing (this key is required)",
        'affinity: expected true or false, got "yes"',
        "cooldown: expected a number of at least 0, got -1",
    ]


def test_empty_or_shapeless_files() -> None:
    assert problems({"upstreams": []}) == ["upstreams: expected at least 1 item(s), got []"]
    assert problems(["http://x"]) == ['(top level): expected a table of keys, got ["http://x"]']
    assert problems({}) == ["upstreams: missing (this key is required)"]


def test_api_key_env_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_TEST_KEY", raising=False)
    assert problems({"upstreams": [up(api_key_env="ROUTER_TEST_KEY")]}) == [
        "upstreams[0].api_key_env: the environment variable ROUTER_TEST_KEY is not set"
    ]
    monkeypatch.setenv("ROUTER_TEST_KEY", "sk-1")
    config = parse_router_config({"upstreams": [up(api_key_env="ROUTER_TEST_KEY")]})
    assert config.upstreams[0].resolved_api_key() == "sk-1"
    assert problems({"upstreams": [up(api_key="a", api_key_env="ROUTER_TEST_KEY")]}) == [
        "upstreams[0]: give api_key or api_key_env, not both"
    ]


def test_yaml_and_toml_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text(
        "upstreams:\n  - url: http://127.0.0.1:8000/v1/\n    kind: vllm\n    weight: 2\n"
    )
    config = load_router_config(yaml_file)
    assert config.upstreams[0].url == "http://127.0.0.1:8000/v1"
    assert config.upstreams[0].display_name == "127.0.0.1:8000"
    assert config.upstreams[0].weight == 2.0
    toml_file = tmp_path / "r.toml"
    toml_file.write_text(
        'cooldown = 1\n[[upstreams]]\nname = "box"\nurl = "http://h:1"\nkind = "sglang"\n'
    )
    config = load_router_config(toml_file)
    assert (config.cooldown, config.upstreams[0].name) == (1.0, "box")


def test_unreadable_files_say_why(tmp_path: Path) -> None:
    with pytest.raises(RouterConfigError) as missing:
        load_router_config(tmp_path / "nope.yaml")
    assert missing.value.problems == ["(file): not found"]
    broken = tmp_path / "broken.toml"
    broken.write_text("upstreams = [\n")
    with pytest.raises(RouterConfigError) as syntax:
        load_router_config(broken)
    assert syntax.value.problems[0].startswith("(syntax): ")
    assert str(broken) in syntax.value.message


def _keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def test_the_example_is_valid_and_documents_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "sk-example")
    config = load_router_config(EXAMPLE)
    assert len(config.upstreams) == 3
    text = EXAMPLE.read_text()
    for key in _keys(RouterConfig) + _keys(UpstreamConfig):
        # Each key appears as "key:" with a comment on its line.
        line = re.search(rf"^\s*(- )?{key}:.*#", text, re.MULTILINE)
        assert line is not None, f"{key} is not documented in {EXAMPLE.name}"


def test_settings_point_at_the_file() -> None:
    settings = Settings(router_config=EXAMPLE)
    assert settings.router_config == EXAMPLE
