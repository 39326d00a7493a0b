"""Fakes of engines that cannot run here, built from their documented replies, served over HTTP."""

__all__: list[str] = []
