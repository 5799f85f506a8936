"""A stand-in of the Hugging Face hub on 127.0.0.1, its storage host on 127.0.0.2.

No hub is reachable from the test machines, so this answers in the hub's own shapes, taken from
huggingface_hub (the client every tool uses) and its tests:

- ``GET /api/models/{repo}/revision/{rev}``: ``HfApi.model_info`` (``hf_api.py``; ``ModelInfo``
  reads ``id``, ``sha``, ``private``, ``gated`` (False, "auto" or "manual"), ``siblings`` of
  ``{"rfilename": …}``); unknown revision -> 404 ``X-Error-Code: RevisionNotFound``.
- ``GET /api/models/{repo}/tree/{rev}?recursive=true``: ``HfApi.list_repo_tree`` (``RepoFile``:
  ``type`` "file", ``path``, ``size``, ``oid`` = git blob id, ``lfs`` = ``{"oid": sha256,
  "size", "pointerSize"}``; ``RepoFolder``: ``type`` "directory"); pages linked by a
  ``Link: <url>; rel="next"`` header (``utils/_pagination.py``).
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: ``get_hf_file_metadata`` /
  ``hf_hub_download`` (``file_download.py``): an LFS file answers 302 to the storage host with
  ``X-Repo-Commit``, ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size``; a small git file answers
  200 with ``ETag: "<git blob id>"``.
- refusals as ``hf_raise_for_status`` (``utils/_http.py``) reads them, and as its tests
  (``tests/test_utils_errors.py``) build them: ``X-Error-Code`` ``RepoNotFound`` (401 for a
  missing or private repository, whether or not it exists), ``GatedRepo`` (401 without a token,
  403 with one that has no access), ``EntryNotFound`` (404), and ``X-Error-Message``.

The storage host is the test suite's :class:`FileServer` bound to 127.0.0.2 (another origin, as
the hub's CDN is), serving each LFS object at ``/lfs/<sha256>``. Every request both hosts
receive is recorded, with its ``Authorization``, so tests can see where a token went.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from _http_server import FileServer

__all__ = ["HubRequest", "HubServer", "Repo"]


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """A repository at one commit. ``lfs`` False keeps files in git (small files); ``digests``
    overrides the SHA-256 the hub publishes for a path (a hub that lies), ``head_digests`` only
    the one its file metadata (``X-Linked-Etag``) gives (a hub that contradicts itself)."""

    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    private: bool = False
    lfs: bool = True
    digests: dict[str, str] = field(default_factory=dict)
    head_digests: dict[str, str] = field(default_factory=dict)  # X-Linked-Etag disagreeing

    def sha256(self, path: str) -> str:
        return self.digests.get(path) or hashlib.sha256(self.files[path]).hexdigest()


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str
    authorization: str | None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing -------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(
            200, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})}
        )

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(
            status,
            body,
            {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"},
        )

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    def _repo(self, repo_id: str) -> Repo | None:
        """The repository, or None after answering as the hub does (it never says whether a
        private repository exists)."""
        repo = self.server.hub.repos.get(repo_id)
        token = self._token()
        if repo is None or (repo.private and token not in self.server.hub.readers.get(repo_id, ())):
            self._error(
                401,
                "RepoNotFound",
                "Repository not found",
            )
            return None
        return repo

    # -- routes ---------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        hub = self.server.hub
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        with hub.lock:
            hub.requests.append(
                HubRequest(self.command, self.path, self.headers.get("Authorization"))
            )
        segments = path.strip("/").split("/")
        if segments[:2] == ["api", "models"] and len(segments) >= 6:
            repo_id = "/".join(segments[2:4])
            repo = self._repo(repo_id)
            if repo is None:
                return
            rev = segments[5] if len(segments) > 5 else "main"
            if segments[4] == "revision":
                self._model_info(repo_id, repo, "/".join(segments[5:]))
            elif segments[4] == "tree":
                self._tree(repo_id, repo, rev, parse_qs(parts.query))
            else:
                self._error(404, "EntryNotFound", "Not found")
            return
        if len(segments) >= 5 and segments[2] == "resolve":
            repo_id = "/".join(segments[:2])
            repo = self._repo(repo_id)
            if repo is not None:
                self._resolve(repo_id, repo, segments[3], "/".join(segments[4:]))
            return
        self._error(404, "EntryNotFound", "Not found")

    def _revision_ok(self, repo: Repo, rev: str) -> bool:
        if rev in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return False

    def _model_info(self, repo_id: str, repo: Repo, rev: str) -> None:
        if not self._revision_ok(repo, rev):
            return
        self._json(
            {
                "_id": "65f0c0ffee",
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": repo.commit,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "private": repo.private,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "library_name": "gguf",
                "tags": ["gguf"],
                "siblings": [{"rfilename": p} for p in sorted(repo.files)],
            }
        )

    def _tree(self, repo_id: str, repo: Repo, rev: str, query: dict[str, list[str]]) -> None:
        if not self._revision_ok(repo, rev):
            return
        recursive = query.get("recursive", ["false"])[0] == "true"
        entries: list[dict[str, Any]] = []
        folders = sorted({p.rsplit("/", 1)[0] for p in repo.files if "/" in p})
        for folder in folders:
            entries.append(
                {
                    "type": "directory",
                    "oid": git_blob_oid(folder.encode()),
                    "size": 0,
                    "path": folder,
                }
            )
        for path in sorted(repo.files):
            if "/" in path and not recursive:
                continue
            data = repo.files[path]
            entry: dict[str, Any] = {
                "type": "file",
                "oid": git_blob_oid(data),
                "size": len(data),
                "path": path,
            }
            if repo.lfs:
                entry["lfs"] = {"oid": repo.sha256(path), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start : start + self.server.hub.page_size]
        headers = {}
        if start + self.server.hub.page_size < len(entries):
            cursor = start + self.server.hub.page_size
            nxt = f"{self.server.hub.url}/api/models/{repo_id}/tree/{rev}?recursive={str(recursive).lower()}&cursor={cursor}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers)

    def _resolve(self, repo_id: str, repo: Repo, rev: str, path: str) -> None:
        hub = self.server.hub
        if not self._revision_ok(repo, rev):
            return
        token = self._token()
        if repo.gated and token not in hub.readers.get(repo_id, ()):
            if token is None:
                self._error(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and "
                    "be authenticated to access it. Please log in.",
                )
            else:
                self._error(
                    403,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted and you are not in the authorized "
                    f"list. Visit https://huggingface.co/{repo_id} to ask for access.",
                )
            return
        data = repo.files.get(path)
        if data is None:
            self._error(404, "EntryNotFound", f'{path} does not exist on "{rev}"')
            return
        common = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if not repo.lfs:
            self._send(200, data, {**common, "ETag": f'"{git_blob_oid(data)}"'})
            return
        sha = repo.sha256(path)
        real = hashlib.sha256(data).hexdigest()
        storage = hub.storage.url(f"/lfs/{real}")
        self._send(
            302,
            b"",
            {
                **common,
                "Location": storage,
                "ETag": f'"{git_blob_oid(data)}"',
                "X-Linked-Etag": f'"{repo.head_digests.get(path, sha)}"',
                "X-Linked-Size": str(len(data)),
            },
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    hub: HubServer


class HubServer:
    """``with HubServer() as hub: hub.add("o/r", Repo({...})); env HF_ENDPOINT=hub.url``."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.readers: dict[str, set[str]] = {}  # repo -> tokens that may read it (gated/private)
        self.requests: list[HubRequest] = []
        self.page_size = 1000
        self.lock = threading.Lock()
        self.storage = FileServer(host="127.0.0.2")
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def add(self, repo_id: str, repo: Repo) -> Repo:
        self.repos[repo_id] = repo
        for data in repo.files.values():
            self.storage.add(f"/lfs/{hashlib.sha256(data).hexdigest()}", data)
        return repo

    def __enter__(self) -> HubServer:
        self.storage.start()
        threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.storage.stop()
