"""The README agrees with the code: the Profiles table, and links that resolve in the project."""

from __future__ import annotations

import re
from pathlib import Path

from autotune.ground.profiles import PROFILES

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_profiles_table_matches_the_profiles() -> None:
    rows = {
        m.group(1): m.groups()[1:]
        for m in re.finditer(r"^\| `(\w+)` \| ([\d,]+) \| ([\d.]+) \| (\w+)", README, re.M)
    }
    assert set(rows) == set(PROFILES)
    for name, (cap, temperature, kv) in rows.items():
        profile = PROFILES[name]
        assert int(cap.replace(",", "")) == profile.context_cap, name
        assert float(temperature) == profile.temperature, name
        assert kv == profile.kv_cache_type, name
    assert "apply at the model's next load" in README  # a loaded model keeps its KV type


def test_links_point_inside_the_project() -> None:
    assert "../shared" not in README and "project workspace" not in README
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target
    assert "docs/ENGINES.md" in README
