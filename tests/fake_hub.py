"""A minimal Hugging Face hub on 127.0.0.1 for download tests: the four endpoints
huggingface_hub's snapshot_download uses (repo info, tree listing, HEAD and GET of a file),
serving repositories from local folders, and a log of every request."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        self.failing = False  # answer every request with 503
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body=b"", headers=None):
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                path = urllib.parse.urlparse(self.path).path
                hub.requests.append((self.command, path))
                if hub.failing:
                    return self._send(503, b"unavailable")
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"]:
                    files = hub.repos.get("/".join(parts[2:4]))
                    if files is None:
                        return self._send(404, b'{"error": "Repository not found"}',
                                          {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"})
                    if parts[4] == "revision":
                        body = {"id": "/".join(parts[2:4]), "sha": COMMIT,
                                "siblings": [{"rfilename": name} for name in files]}
                    else:
                        body = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                                for name, data in files.items()]
                    return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
                if "resolve" in parts:
                    at = parts.index("resolve")
                    data = hub.repos.get("/".join(parts[:at]), {}).get("/".join(parts[at + 2:]))
                    if data is None:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                    return self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})
                return self._send(404)

            do_HEAD = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo_id: str, folder: Path, extra: dict[str, bytes] | None = None) -> None:
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        self.repos[repo_id] = {**files, **(extra or {})}

    def downloaded(self) -> set[str]:
        """Files fetched with GET from a repository."""
        return {path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and "/resolve/" in path}

    def close(self) -> None:
        self.server.shutdown()
