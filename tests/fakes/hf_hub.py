"""A fake Hugging Face hub on 127.0.0.1, built from the documented hub API that
``huggingface_hub`` calls (read in its own code: ``HfApi.model_info`` and
``file_download.hf_hub_download`` / ``get_hf_file_metadata`` / ``http_get``).

No network is reachable here, so this Starlette app answers the three requests a GGUF pull
makes, with the hub's own headers and error codes:

* ``GET /api/models/{repo}/revision/{rev}?blobs=true`` — the repo's id, commit ``sha`` and
  ``siblings`` (``rfilename``, ``size``, ``blobId`` and, for LFS files, ``lfs: {sha256, size,
  pointerSize}``); an unknown repo is a 404 with ``X-Error-Code: RepoNotFound``.
* ``HEAD /{repo}/resolve/{rev}/{file}`` — ``X-Repo-Commit``, ``ETag`` (the LFS sha256, quoted),
  ``X-Linked-Etag``, ``X-Linked-Size``, ``Content-Length``, ``Accept-Ranges``; a missing file
  is a 404 with ``X-Error-Code: EntryNotFound``.
* ``GET /{repo}/resolve/{rev}/{file}`` — the bytes, honouring ``Range: bytes=N-`` with a 206
  and ``Content-Range``.

It records every request (method, path, ``Range`` and ``Authorization`` headers), and can
drop the connection once part-way through a download (``cut_after``) or serve bytes that do
not match the listed sha256 (``corrupt``), so resuming and checksum checks can be tested.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["COMMIT", "FakeHub", "HubFile"]

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_CHUNK = 1 << 20


@dataclass
class HubFile:
    """A file the fake serves: from a path on disk, with its sha256 worked out once."""

    path: Path
    sha256: str = ""
    size: int = 0

    def __post_init__(self) -> None:
        if not self.sha256:
            digest = hashlib.sha256()
            with open(self.path, "rb") as fh:
                while block := fh.read(_CHUNK):
                    digest.update(block)
            self.sha256 = digest.hexdigest()
        self.size = self.size or self.path.stat().st_size


@dataclass
class FakeHub:
    """Repos (``org/name`` → {file path in repo: HubFile}); ``requests`` records each call."""

    repos: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: Drop the connection once after sending this many bytes of a download.
    cut_after: int | None = None
    #: Serve bytes that differ from the listed sha256 (one flipped byte at the start).
    corrupt: bool = False

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/models/{org}/{name}/revision/{rev}", self._info, methods=["GET"]),
                Route("/api/models/{org}/{name}", self._info, methods=["GET"]),
                Route(
                    "/{org}/{name}/resolve/{rev}/{file:path}",
                    self._resolve,
                    methods=["GET", "HEAD"],
                ),
            ]
        )

    def _record(self, request: Request) -> None:
        self.requests.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": dict(request.query_params),
                "range": request.headers.get("range"),
                "authorization": request.headers.get("authorization"),
            }
        )

    def _repo(self, request: Request) -> tuple[str, dict[str, HubFile] | None]:
        repo = f"{request.path_params['org']}/{request.path_params['name']}"
        return repo, self.repos.get(repo)

    async def _info(self, request: Request) -> Response:
        self._record(request)
        repo, files = self._repo(request)
        if files is None:
            return _error(404, "RepoNotFound", "Repository not found")
        siblings = [
            {
                "rfilename": name,
                "size": f.size,
                "blobId": f.sha256[:40],
                "lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": 134},
            }
            for name, f in files.items()
        ]
        siblings.append({"rfilename": "README.md", "size": 12, "blobId": "f" * 40})
        return JSONResponse(
            {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}
        )

    async def _resolve(self, request: Request) -> Response:
        self._record(request)
        _, files = self._repo(request)
        if files is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if request.path_params["rev"] not in ("main", COMMIT):
            return _error(404, "RevisionNotFound", "Invalid rev id")
        file = files.get(request.path_params["file"])
        if file is None:
            return _error(404, "EntryNotFound", "Entry not found", commit=True)
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": f'"{file.sha256}"',
            "X-Linked-Etag": f'"{file.sha256}"',
            "X-Linked-Size": str(file.size),
            "Accept-Ranges": "bytes",
        }
        if request.method == "HEAD":
            return Response(headers={**headers, "Content-Length": str(file.size)})
        start = _range_start(request.headers.get("range"))
        return _FileBody(self, file, start, headers)


class _FileBody(Response):
    """The file from ``start`` (206 with Content-Range when resumed), cut once if asked."""

    def __init__(self, hub: FakeHub, file: HubFile, start: int, headers: dict[str, str]):
        super().__init__(status_code=206 if start else 200, headers=headers)
        self.hub, self.file, self.start = hub, file, start
        self.headers["Content-Length"] = str(file.size - start)
        if start:
            self.headers["Content-Range"] = f"bytes {start}-{file.size - 1}/{file.size}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        sent = 0
        with open(self.file.path, "rb") as fh:
            fh.seek(self.start)
            while block := fh.read(_CHUNK):
                if self.hub.corrupt and self.start + sent == 0:
                    block = bytes([block[0] ^ 0xFF]) + block[1:]
                cut = self.hub.cut_after
                if cut is not None and sent + len(block) > cut:
                    self.hub.cut_after = None  # once
                    await send(
                        {
                            "type": "http.response.body",
                            "body": block[: cut - sent],
                            "more_body": True,
                        }
                    )
                    raise ConnectionAbortedError("the fake hub drops the connection on purpose")
                await send({"type": "http.response.body", "body": block, "more_body": True})
                sent += len(block)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _range_start(header: str | None) -> int:
    if not header or not header.startswith("bytes="):
        return 0
    first = header[len("bytes=") :].split("-", 1)[0]
    return int(first) if first.isdigit() else 0


def _error(status: int, code: str, message: str, *, commit: bool = False) -> Response:
    headers = {"X-Error-Code": code, "X-Error-Message": message}
    if commit:
        headers["X-Repo-Commit"] = COMMIT
    return JSONResponse({"error": message}, status_code=status, headers=headers)
