"""Help a user can read: plain metavars (MODEL, N, PATH) where Typer would show ``<str>``,
``<bool>`` or ``{model}``.

Typer (0.29 and later) labels every option with its Python type (``--json <bool>``), every
argument with ``<str>``, and writes a required argument as ``{model}`` in the usage line.
The command classes here show the metavar instead (``--limit N``, ``MODEL``), nothing after a
flag, and click's usual ``MODEL`` / ``[MODEL]`` in the usage line. They only change how
parameters are *shown*; parsing is Typer's own. ``tests/e2e/test_cli_help.py`` reads every
command's ``--help`` so a Typer upgrade that changes this is noticed.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

__all__ = ["PlainCommand", "PlainGroup", "plain_params"]


def _metavar(param: Any) -> str:
    return str(param.metavar or (param.name or "value").upper())


class _PlainArgument(TyperArgument):
    """An argument shown by its metavar alone."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the metavar (MODEL, PATH) already says what to give

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = _metavar(self)
        piece = name if self.required else f"[{name}]"
        return [piece + ("..." if self.nargs != 1 else "")]


class _PlainOption(TyperOption):
    """An option shown with its metavar (``--limit N``), a flag with nothing after it."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        return _metavar(self)


def plain_params(params: list[Any]) -> list[Any]:
    """The same parameter objects, each shown the plain way (Typer's own classes only)."""
    for param in params:
        if type(param) is TyperArgument:
            if param.metavar is None:
                param.metavar = _metavar(param)
            param.__class__ = _PlainArgument
        elif type(param) is TyperOption:
            param.__class__ = _PlainOption
    return params


class PlainCommand(TyperCommand):
    """A Typer command whose help shows plain metavars (pass as ``cls=`` to ``app.command``)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_params(super().get_params(ctx))


class PlainGroup(TyperGroup):
    """A Typer group whose own options show plain metavars (pass as ``cls=`` to ``Typer``)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return plain_params(super().get_params(ctx))
