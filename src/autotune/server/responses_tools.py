"""The Responses API's tools in the engine's terms: function tools as they are, ``namespace``
groups flattened into functions (and a call to one named back as the client expects), the
platform's built-in tools left out with a note for the plan. Pure.

Codex sends, by default, a ``namespace`` group (``multi_agent_v1``: spawn_agent, send_input …)
and ``web_search``. A local engine knows only functions: each function of a group becomes a
function named as inside its group (``spawn_agent``), or ``<namespace>__<name>`` where that
name is taken by another tool; a call to it comes back as Codex sent it, ``name`` and
``namespace``. The built-in tools run on OpenAI's platform (web search, file search, code
interpreter, image generation, computer use, remote MCP): no engine here runs them, so they are
not offered to the model — it can never call one — and the plan says
``tools=dropped web_search``. Any other tool type (``custom``, ``local_shell`` …) is refused
with a 400 naming it: it would be the client's to run, and the engine cannot call it as such.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.ground.decision import Decision
from autotune.server.wire_kit import bad

__all__ = ["BUILT_IN", "Tools", "translate_tools"]

#: Built-in tool types (and their dated variants) that run on OpenAI's platform.
BUILT_IN = (
    "web_search",
    "file_search",
    "code_interpreter",
    "image_generation",
    "computer_use",
    "mcp",
)
_SEPARATOR = "__"


@dataclass
class Tools:
    """A request's tools as the engine takes them, and what to say and map back."""

    functions: list[dict[str, Any]] = field(default_factory=list)
    #: The engine's name of a function from a group → (namespace, name inside it).
    namespaced: dict[str, tuple[str, str]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    flattened: list[str] = field(default_factory=list)

    def engine_name(self, name: str, namespace: str | None) -> str:
        """The engine's name for a call the client sent back (``name`` in ``namespace``)."""
        if namespace is None:
            return name
        for flat, (ns, inner) in self.namespaced.items():
            if ns == namespace and inner == name:
                return flat
        return f"{namespace}{_SEPARATOR}{name}"

    def client_name(self, name: str) -> tuple[str, str | None]:
        """A call's (name, namespace) as the client knows the function."""
        if name in self.namespaced:
            namespace, inner = self.namespaced[name]
            return inner, namespace
        return name, None

    def notes(self) -> list[Decision]:
        parts = []
        if self.flattened:
            parts.append("flattened " + ",".join(self.flattened))
        if self.dropped:
            parts.append("dropped " + ",".join(self.dropped))
        if not parts:
            return []
        why = (
            "namespace groups offered as functions; built-in tools run on OpenAI's platform, "
            "not here, and are not offered to the model"
        )
        return [Decision("tools", " ".join(parts), why)]


def _function(tool: Mapping[str, Any], name: str) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _name(tool: Mapping[str, Any], where: str) -> str:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.name must be a non-empty string.", f"{where}.name")
    return name


def _group(tool: Mapping[str, Any], where: str) -> list[tuple[Mapping[str, Any], str]]:
    inner = tool.get("tools")
    if not isinstance(inner, list):
        raise bad(f"{where}.tools must be a list of function tools.", f"{where}.tools")
    out = []
    for i, member in enumerate(inner):
        at = f"{where}.tools[{i}]"
        if not isinstance(member, Mapping) or member.get("type", "function") != "function":
            raise bad(f"{at}: a namespace holds function tools only.", f"{at}.type")
        out.append((member, at))
    return out


def _kind(tool: Any, where: str) -> str:
    if not isinstance(tool, Mapping):
        raise bad(f"{where} must be an object.", where)
    kind = tool.get("type")
    if kind in ("function", "namespace"):
        return str(kind)
    if isinstance(kind, str) and kind.startswith(BUILT_IN):
        return "built-in"
    raise bad(
        f"{where}: the tool type {kind!r} is not offered by local engines; only function "
        "tools (and namespace groups of them) are.",
        f"{where}.type",
    )


def translate_tools(tools: Any) -> Tools:
    """``tools`` as sent, in the engine's terms and order; raises the 400 naming a tool it
    cannot take."""
    if not isinstance(tools, list):
        raise bad("'tools' must be a list.", "tools")
    out = Tools()
    # (namespace or None, the function, its path), in the order sent
    members: list[tuple[str | None, Mapping[str, Any], str]] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        kind = _kind(tool, where)
        if kind == "function":
            members.append((None, tool, where))
        elif kind == "namespace":
            namespace = _name(tool, where)
            out.flattened.append(namespace)
            members += [(namespace, m, at) for m, at in _group(tool, where)]
        else:
            out.dropped.append(str(tool["type"]))
    names = [_name(m, at) for _, m, at in members]
    taken = {n for (ns, _, _), n in zip(members, names, strict=True) if ns is None}
    for (group, member, _), name in zip(members, names, strict=True):
        flat = name
        if group is not None:
            if name in taken or names.count(name) > 1:
                flat = f"{group}{_SEPARATOR}{name}"
            out.namespaced[flat] = (group, name)
        out.functions.append(_function(member, flat))
    return out
