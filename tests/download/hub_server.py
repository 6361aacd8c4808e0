"""A loopback HTTP server that answers the few Hugging Face Hub endpoints huggingface_hub's snapshot_download uses.

It is not a double of our code: the code under test (installer/download.py) and huggingface_hub itself run
unmodified against it through HF_ENDPOINT, exactly as they would against a mirror. Endpoints:
  GET  /api/{models|datasets}/<repo>/revision/<rev>   repo info (sha + siblings) or a hub-style error
  GET  /api/{models|datasets}/<repo>/tree/<rev>       file listing (huggingface_hub >= 1.0 lists the tree of a
                                                       commit-hash revision instead of asking for repo info)
  HEAD/GET /[datasets/]<repo>/resolve/<rev>/<path>     file bytes with X-Repo-Commit / ETag headers (Range ok)
Per-repo `access` reproduces the hub's answers: "public"; "gated" (403 + X-Error-Code: GatedRepo unless the
request carries `Authorization: Bearer <good_token>`); "missing" (401 + X-Error-Code: RepoNotFound). Any request
with a bearer token other than good_token gets the hub's invalid-token answer (401, X-Error-Message).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Repo:
    repo_id: str
    sha: str
    files: dict[str, bytes] = field(default_factory=dict)
    repo_type: str = "model"
    access: str = "public"


class HubState:
    def __init__(self, good_token: str = "hf_good_token") -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.good_token = good_token
        self.file_gets: list[str] = []

    def add(self, repo: Repo) -> Repo:
        self.repos[(repo.repo_type, repo.repo_id)] = repo
        return repo


_API = re.compile(r"^/api/(models|datasets)/(.+?)/revision/([^/]+)$")
_TREE = re.compile(r"^/api/(models|datasets)/(.+?)/tree/([^/]+)/?$")
_RESOLVE = re.compile(r"^/(?:(datasets)/)?(.+?)/resolve/([^/]+)/(.+)$")


def _handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _denied(self, repo: Repo | None, head: bool) -> bool:
            auth = self.headers.get("Authorization", "")
            token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
            if token is not None and token != state.good_token:
                self._send(401, b'{"error":"Invalid credentials in Authorization header"}',
                           {"X-Error-Message": "Invalid credentials in Authorization header"}, head)
                return True
            if repo is None or repo.access == "missing":
                self._send(401, b'{"error":"Repository not found"}',
                           {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, head)
                return True
            if repo.access == "gated" and token != state.good_token:
                self._send(403, b'{"error":"Access to this repo is restricted"}',
                           {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"}, head)
                return True
            return False

        def _serve(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            m = _API.match(path)
            if m and not head:
                kind = "dataset" if m.group(1) == "datasets" else "model"
                repo = state.repos.get((kind, m.group(2)))
                if self._denied(repo, head):
                    return
                body = json.dumps({
                    "id": repo.repo_id, "sha": repo.sha, "private": False,
                    "siblings": [{"rfilename": name} for name in sorted(repo.files)],
                }).encode()
                self._send(200, body, {"Content-Type": "application/json"})
                return
            m = _TREE.match(path)
            if m and not head:
                kind = "dataset" if m.group(1) == "datasets" else "model"
                repo = state.repos.get((kind, m.group(2)))
                if self._denied(repo, head):
                    return
                body = json.dumps([
                    {"type": "file", "path": name, "size": len(data),
                     "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
                    for name, data in sorted(repo.files.items())
                ]).encode()
                self._send(200, body, {"Content-Type": "application/json"})
                return
            m = _RESOLVE.match(path)
            if m:
                kind = "dataset" if m.group(1) else "model"
                repo = state.repos.get((kind, m.group(2)))
                if self._denied(repo, head):
                    return
                data = repo.files.get(m.group(4))
                if data is None:
                    self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                    return
                headers = {"X-Repo-Commit": repo.sha, "ETag": '"' + hashlib.sha1(data).hexdigest() + '"',
                           "Accept-Ranges": "bytes"}
                rng = self.headers.get("Range")
                if not head:
                    state.file_gets.append(f"{repo.repo_id}/{m.group(4)}" + (f" {rng}" if rng else ""))
                if rng and not head:
                    start = int(rng.split("=")[1].split("-")[0])
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                    self._send(206, data[start:], headers)
                    return
                if head:
                    self.send_response(200)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return
                self._send(200, data, headers)
                return
            self._send(404, b"")

        def do_GET(self):  # noqa: N802
            self._serve(head=False)

        def do_HEAD(self):  # noqa: N802
            self._serve(head=True)

    return Handler


class HubServer:
    """Context manager: `with HubServer(state) as url:` serves on 127.0.0.1 (loopback only)."""

    def __init__(self, state: HubState) -> None:
        self.state = state
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
