"""A small Hugging Face Hub stand-in on 127.0.0.1 for end-to-end tests of the real client.

Implements the routes huggingface_hub uses for create_repo, create_branch, create_commit
(regular/base64 files), model_info, list_repo_tree, hf_hub_download and
snapshot_download; private repos (404 without the owner's token, like the Hub); and
failure injection (``fail(pattern, status, times)`` or a dropped connection).
Everything lives in memory; nothing leaves the machine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Repo:
    private: bool
    owner_token: str | None
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)


class HubState:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.failures: list[list] = []  # [regex, status or "drop", remaining]
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, auth header)

    def fail(self, pattern: str, status: int | str = 500, times: int = 1) -> None:
        self.failures.append([re.compile(pattern), status, times])

    def take_failure(self, method: str, path: str):
        for f in self.failures:
            if f[2] > 0 and f[0].search(f"{method} {path}"):
                f[2] -= 1
                return f[1]
        return None


def _new_sha(payload: bytes) -> str:
    return hashlib.sha1(payload + str(time.time_ns()).encode()).hexdigest()


def make_handler(state: HubState, endpoint_ref: list[str]):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        # ---------------------------------------------------------------- helpers ----
        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype="application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj, headers: dict | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), headers)

        def _error(self, status: int, code: str, msg: str) -> None:
            self._json(status, {"error": msg}, {"X-Error-Code": code, "X-Error-Message": msg})

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                return self.rfile.read(n)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            return b""

        def _token(self) -> str | None:
            auth = self.headers.get("authorization") or ""
            return auth[7:] if auth.lower().startswith("bearer ") else None

        def _repo(self, repo_id: str) -> Repo | None:
            repo = state.repos.get(repo_id)
            if repo is None or (repo.private and self._token() != repo.owner_token):
                self._error(404, "RepoNotFound", f"Repository Not Found for url: {repo_id}")
                return None
            return repo

        def _commit(self, repo: Repo, rev: str) -> str | None:
            rev = unquote(rev)
            if rev in repo.branches:
                return repo.branches[rev]
            if rev in repo.commits:
                return rev
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None

        def _dispatch(self) -> None:
            path = urlsplit(self.path).path
            state.requests.append((self.command, path, self.headers.get("authorization")))
            failure = state.take_failure(self.command, path)
            if failure == "drop":
                self._body()
                self.connection.shutdown(2)  # close without an answer
                self.close_connection = True
                return
            if failure is not None:
                self._body()
                self._error(int(failure), "ServerError", "injected failure")
                return
            with state.lock:
                self._route(path)

        do_GET = do_POST = do_HEAD = do_PUT = _dispatch

        # ---------------------------------------------------------------- routes -----
        def _route(self, path: str) -> None:
            m = re.fullmatch(r"/api/repos/create", path)
            if m and self.command == "POST":
                return self._create_repo()
            if path == "/api/validate-yaml":
                self._body()
                return self._json(200, {})
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path)
            if m:
                return self._preupload(m.group(1))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path)
            if m:
                return self._create_commit(m.group(1), m.group(2))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/(.+)", path)
            if m and self.command == "POST":
                return self._create_branch(m.group(1), m.group(2))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
            if m:
                return self._tree(m.group(1), m.group(2), (m.group(3) or "").lstrip("/"))
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
            if m:
                return self._info(m.group(1), m.group(2) or "main")
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self._resolve(m.group(1), m.group(2), unquote(m.group(3)))
            self._error(404, "NotFound", f"no route {self.command} {path}")

        def _create_repo(self) -> None:
            body = json.loads(self._body() or b"{}")
            repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
            endpoint = endpoint_ref[0]
            if repo_id in state.repos:
                return self._json(409, {"error": "You already created this model repo", "url": f"{endpoint}/{repo_id}"})
            private = bool(body.get("private")) or body.get("visibility") == "private"  # 1.x and 2.x clients
            repo = Repo(private=private, owner_token=self._token())
            sha = _new_sha(repo_id.encode())
            repo.commits[sha] = {".gitattributes": b"*.safetensors filter=lfs\n"}
            repo.branches["main"] = sha
            repo.messages[sha] = "initial commit"
            state.repos[repo_id] = repo
            self._json(200, {"url": f"{endpoint}/{repo_id}", "name": repo_id})

        def _preupload(self, repo_id: str) -> None:
            body = json.loads(self._body() or b"{}")
            if self._repo(repo_id) is None:
                return
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in body.get("files", [])]
            self._json(200, {"files": files})

        def _create_commit(self, repo_id: str, rev: str) -> None:
            raw = self._body()
            repo = self._repo(repo_id)
            if repo is None:
                return
            parent = self._commit(repo, rev)
            if parent is None:
                return
            files = dict(repo.commits[parent])
            summary = ""
            for line in raw.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    summary = value.get("summary", "")
                elif key == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: c for p, c in files.items() if not p.startswith(prefix)}
                else:
                    return self._error(400, "BadRequest", f"unsupported commit item {key}")
            sha = _new_sha(raw)
            repo.commits[sha] = files
            repo.messages[sha] = summary
            repo.branches[unquote(rev)] = sha
            self._json(200, {"commitUrl": f"{endpoint_ref[0]}/{repo_id}/commit/{sha}", "commitOid": sha,
                             "success": True, "pullRequestUrl": None})

        def _create_branch(self, repo_id: str, branch: str) -> None:
            body = json.loads(self._body() or b"{}")
            repo = self._repo(repo_id)
            if repo is None:
                return
            branch = unquote(branch)
            if branch in repo.branches:
                return self._error(409, "Conflict", f"branch {branch} already exists")
            start = self._commit(repo, body.get("startingPoint") or "main")
            if start is None:
                return
            repo.branches[branch] = start
            self._json(200, {})

        def _info(self, repo_id: str, rev: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            sha = self._commit(repo, rev)
            if sha is None:
                return
            files = repo.commits[sha]
            self._json(200, {
                "id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                "siblings": [{"rfilename": p, "size": len(c)} for p, c in sorted(files.items())],
                "tags": [], "downloads": 0, "likes": 0, "lastModified": "2026-11-21T00:00:00.000Z",
                "createdAt": "2026-11-21T00:00:00.000Z",
            })

        def _tree(self, repo_id: str, rev: str, prefix: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            sha = self._commit(repo, rev)
            if sha is None:
                return
            recursive = parse_qs(urlsplit(self.path).query).get("recursive", ["false"])[0] == "true"
            prefix = prefix.rstrip("/") + "/" if prefix else ""
            entries, dirs = [], set()
            for p, c in sorted(repo.commits[sha].items()):
                if not p.startswith(prefix):
                    continue
                rest = p[len(prefix):]
                if not recursive and "/" in rest:
                    dirs.add(prefix + rest.split("/")[0])
                    continue
                if recursive:
                    parts = rest.split("/")[:-1]
                    for i in range(1, len(parts) + 1):
                        dirs.add(prefix + "/".join(parts[:i]))
                entries.append({"type": "file", "path": p, "size": len(c), "oid": hashlib.sha1(c).hexdigest()})
            entries += [{"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in sorted(dirs)]
            self._json(200, entries)

        def _resolve(self, repo_id: str, rev: str, path: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            sha = self._commit(repo, rev)
            if sha is None:
                return
            files = repo.commits[sha]
            if path not in files:
                return self._error(404, "EntryNotFound", f"{path} does not exist at {rev}")
            content = files[path]
            etag = f'"{hashlib.sha256(content).hexdigest()}"'
            self._send(200, content, {"X-Repo-Commit": sha, "ETag": etag}, ctype="application/octet-stream")

    return Handler


class LocalHub:
    """``with LocalHub() as hub: ...``; ``hub.endpoint`` is its base URL."""

    def __init__(self, port: int = 0) -> None:
        self.state = HubState()
        endpoint_ref = [""]
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), make_handler(self.state, endpoint_ref))
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        endpoint_ref[0] = self.endpoint
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        repo = self.state.repos[repo_id]
        return repo.commits[repo.branches[rev]]

    def corrupt(self, repo_id: str, path: str, data: bytes, rev: str = "main") -> None:
        """Replace a file's content in place (same commit), as a broken mirror would."""
        self.files(repo_id, rev)[path] = data
