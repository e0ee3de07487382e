"""diffrepro.download against a local HTTP server that misbehaves on purpose (no real web)."""

from __future__ import annotations

import hashlib
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from diffrepro import download
from diffrepro.checkpoints import ChecksumMismatch
from diffrepro.download import (DownloadError, DownloadUnavailable, RemoteFile, fetch, main,
                                repin)
from diffrepro.io import read_json, write_json

DATA = random.Random(0).randbytes(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
DROP_AFTER = 100_000
TOKEN = "tok3n"


class Handler(BaseHTTPRequestHandler):
    """Routes by path; each one misbehaves in a single, named way."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        state = self.server.state
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        record = {"path": url.path, "query": query, "headers": dict(self.headers), "sent": 0}
        finished = threading.Event()
        with state["lock"]:
            state["requests"].append(record)
            state["finished"].append(finished)
            hit = sum(r["path"] == url.path for r in state["requests"])
        try:
            self.route(url, query, record, hit)
        finally:
            finished.set()

    def route(self, url, query: dict, record: dict, hit: int) -> None:
        if url.path == "/file.bin":
            record["sent"] = self.send_file()
        elif url.path == "/drop.bin":  # full Content-Length, then the connection dies
            record["sent"] = self.send_file(drop_after=DROP_AFTER if hit == 1 else None)
        elif url.path == "/flaky.bin":
            if hit == 1:
                self.send_error(503)
            else:
                record["sent"] = self.send_file()
        elif url.path == "/down.bin":
            self.send_error(503)
        elif url.path == "/norange.bin":
            record["sent"] = self.send_file(honour_range=False)
        elif url.path == "/uc":
            record["sent"] = self.google_drive(query)
        elif url.path == "/download":  # the form's action (drive.usercontent.google.com)
            if query.get("confirm") == TOKEN and query.get("uuid") == "u-1":
                record["sent"] = self.send_file()
            else:
                self.send_error(400)
        else:
            self.send_error(404)

    def google_drive(self, query: dict) -> int:
        file_id = query.get("id")
        if file_id == "small":  # small files come straight away
            return self.send_file()
        if file_id == "form":
            action = f"http://127.0.0.1:{self.server.server_port}/download"
            return self.send_html(
                f'<html><body><p>Google Drive can\'t scan this file for viruses.</p>'
                f'<form id="download-form" action="{action}" method="get">'
                f'<input type="submit" id="uc-download-link" value="Download anyway"/>'
                f'<input type="hidden" name="id" value="form">'
                f'<input type="hidden" name="export" value="download">'
                f'<input type="hidden" name="confirm" value="{TOKEN}">'
                f'<input type="hidden" name="uuid" value="u-1"></form></body></html>')
        if file_id == "cookie":
            if query.get("confirm") == TOKEN and TOKEN in self.headers.get("Cookie", ""):
                return self.send_file()
            return self.send_html("<html>Virus scan warning</html>",
                                  cookie=f"download_warning_123_abc={TOKEN}; Path=/")
        return self.send_html("<html>Too many users have viewed or downloaded this file "
                              "recently.</html>")

    def send_html(self, html: str, cookie: str | None = None) -> int:
        body = html.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if cookie:
            self.send_header("Set-Cookie", cookie)
        self.end_headers()
        self.wfile.write(body)
        return 0

    def send_file(self, honour_range: bool = True, drop_after: int | None = None) -> int:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(match.group(1)) if match and honour_range else 0
        if start >= len(DATA):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(DATA)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(DATA) - 1}/{len(DATA)}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(DATA) - start))
        self.end_headers()
        body = DATA[start:] if drop_after is None else DATA[start:start + drop_after]
        self.wfile.write(body)
        return len(body)


class RecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    @property
    def requests(self) -> list[dict]:
        """The requests so far, once their handlers have finished: a client can have read the
        whole body before its handler thread records what it sent."""
        for finished in list(self.state["finished"]):
            assert finished.wait(5), "a request handler did not finish"
        return self.state["requests"]


@pytest.fixture
def server():
    httpd = RecordingServer(("127.0.0.1", 0), Handler)
    httpd.state = {"requests": [], "finished": [], "lock": threading.Lock()}
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_port}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def online_env(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "DIFFREPRO_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def paths(tmp_path):
    return tmp_path / "models" / "f.bin", tmp_path / "downloads.lock.json"


def get(remote, dest, lock, server, **kw):
    kw = {"allow_downloads": True, "backoff_s": 0.01, "timeout_s": 5.0,
          "gdrive_url": f"{server.url}/uc", "log": lambda msg: None, **kw}
    return fetch(remote, dest, lock, **kw)


def test_download_pins_sha256_and_second_fetch_makes_no_request(server, paths, monkeypatch):
    dest, lock = paths
    monkeypatch.setattr(download, "PROGRESS_EVERY_S", 0.0)
    remote = RemoteFile("f.bin", f"{server.url}/file.bin")
    logs = []
    assert get(remote, dest, lock, server, log=logs.append) == SHA
    assert any("MB/s" in line for line in logs)
    assert dest.read_bytes() == DATA
    assert not dest.with_name("f.bin.part").exists()
    assert read_json(lock) == {"f.bin": {"sha256": SHA, "size": len(DATA), "url": remote.url}}
    assert server.requests[0]["headers"].get("Range") is None

    assert get(remote, dest, lock, server) == SHA
    assert len(server.requests) == 1


def test_resumes_after_dropped_connection(server, paths):
    dest, lock = paths
    get(RemoteFile("f.bin", f"{server.url}/drop.bin"), dest, lock, server)
    assert dest.read_bytes() == DATA
    first, second = server.requests
    assert first["sent"] == DROP_AFTER and "Range" not in first["headers"]
    assert second["headers"]["Range"] == f"bytes={DROP_AFTER}-"
    assert second["sent"] == len(DATA) - DROP_AFTER  # only the missing bytes
    assert read_json(lock)["f.bin"]["sha256"] == SHA


def test_server_ignoring_range_restarts_from_zero(server, paths):
    dest, lock = paths
    dest.parent.mkdir(parents=True)
    dest.with_name("f.bin.part").write_bytes(b"x" * 5000)  # stale junk must not survive
    get(RemoteFile("f.bin", f"{server.url}/norange.bin"), dest, lock, server)
    assert server.requests[0]["headers"]["Range"] == "bytes=5000-"
    assert dest.read_bytes() == DATA


def test_complete_part_is_checked_not_redownloaded(server, paths):
    dest, lock = paths
    dest.parent.mkdir(parents=True)
    dest.with_name("f.bin.part").write_bytes(DATA)  # killed between download and rename
    assert get(RemoteFile("f.bin", f"{server.url}/file.bin"), dest, lock, server) == SHA
    assert [r["sent"] for r in server.requests] == [0]  # one 416 answer
    assert dest.read_bytes() == DATA


def test_503_is_retried(server, paths):
    dest, lock = paths
    get(RemoteFile("f.bin", f"{server.url}/flaky.bin"), dest, lock, server)
    assert len(server.requests) == 2
    assert dest.read_bytes() == DATA


def test_retries_exhausted(server, paths):
    dest, lock = paths
    url = f"{server.url}/down.bin"
    with pytest.raises(DownloadError, match="after 3 attempts") as err:
        get(RemoteFile("f.bin", url), dest, lock, server, retries=2)
    assert url in str(err.value) and "503" in str(err.value)
    assert len(server.requests) == 3
    assert not dest.exists() and not lock.exists()


def test_404_fails_at_once(server, paths):
    dest, lock = paths
    url = f"{server.url}/missing.bin"
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        get(RemoteFile("f.bin", url), dest, lock, server)
    assert url in str(err.value)
    assert len(server.requests) == 1
    assert not dest.exists()


def test_checksum_mismatch_keeps_dest_absent(server, paths):
    dest, lock = paths
    wrong = "0" * 64
    write_json(lock, {"f.bin": {"sha256": wrong, "size": len(DATA), "url": "x"}})
    with pytest.raises(ChecksumMismatch) as err:
        get(RemoteFile("f.bin", f"{server.url}/file.bin"), dest, lock, server)
    msg = str(err.value)
    for part in ("f.bin", wrong, SHA, str(lock), 'delete the entry "f.bin"', ".rejected"):
        assert part in msg
    assert not dest.exists()
    assert dest.with_name("f.bin.rejected").read_bytes() == DATA
    assert read_json(lock)["f.bin"]["sha256"] == wrong  # the pin is never overwritten


@pytest.mark.parametrize("how", ["config", "HF_HUB_OFFLINE", "DIFFREPRO_OFFLINE"])
def test_offline_names_url_and_path_without_requests(server, paths, monkeypatch, how):
    dest, lock = paths
    if how != "config":
        monkeypatch.setenv(how, "1")
    url = f"{server.url}/file.bin"
    with pytest.raises(DownloadUnavailable) as err:
        get(RemoteFile("f.bin", url), dest, lock, server, allow_downloads=how != "config")
    msg = str(err.value)
    assert url in msg and str(dest.absolute()) in msg and "allow_downloads: true" in msg
    assert isinstance(err.value, RuntimeError)
    assert server.requests == []


def test_hand_placed_file_is_recorded(server, paths):
    dest, lock = paths
    dest.parent.mkdir(parents=True)
    dest.write_bytes(DATA)
    remote = RemoteFile("f.bin", f"{server.url}/file.bin")
    assert get(remote, dest, lock, server, allow_downloads=False) == SHA
    assert read_json(lock) == {"f.bin": {"sha256": SHA, "size": len(DATA), "url": remote.url}}
    assert server.requests == []


def test_hand_placed_wrong_file_is_rejected_but_kept(server, paths):
    dest, lock = paths
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not it")
    write_json(lock, {"f.bin": {"sha256": SHA, "size": len(DATA), "url": "x"}})
    with pytest.raises(ChecksumMismatch, match=SHA):
        get(RemoteFile("f.bin", f"{server.url}/file.bin"), dest, lock, server)
    assert dest.read_bytes() == b"not it"


def test_google_drive_form(server, paths):
    dest, lock = paths
    assert get(RemoteFile("f.bin", "gdrive:form"), dest, lock, server) == SHA
    page, download = server.requests
    assert page["path"] == "/uc" and page["query"] == {"export": "download", "id": "form"}
    assert download["path"] == "/download"
    assert download["query"] == {"id": "form", "export": "download", "confirm": TOKEN,
                                 "uuid": "u-1"}
    assert read_json(lock)["f.bin"]["url"] == "gdrive:form"


def test_google_drive_cookie(server, paths):
    dest, lock = paths
    assert get(RemoteFile("f.bin", "gdrive:cookie"), dest, lock, server) == SHA
    assert [r["query"].get("confirm") for r in server.requests] == [None, TOKEN]


def test_google_drive_small_file_and_resume(server, paths):
    dest, lock = paths
    dest.parent.mkdir(parents=True)
    dest.with_name("f.bin.part").write_bytes(DATA[:1234])
    assert get(RemoteFile("f.bin", "gdrive:small"), dest, lock, server) == SHA
    (request,) = server.requests
    assert request["headers"]["Range"] == "bytes=1234-"
    assert request["sent"] == len(DATA) - 1234


def test_google_drive_without_link(server, paths):
    dest, lock = paths
    with pytest.raises(DownloadError) as err:
        get(RemoteFile("f.bin", "gdrive:quota"), dest, lock, server)
    msg = str(err.value)
    assert "file quota" in msg and "not shared" in msg and str(dest) in msg
    assert len(server.requests) == 1


def test_concurrent_downloads_share_the_lock_file(server, tmp_path):
    lock = tmp_path / "downloads.lock.json"
    names = [f"f{i}.bin" for i in range(6)]
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: get(RemoteFile(n, f"{server.url}/file.bin"), tmp_path / n,
                                    lock, server), names))
    assert sorted(read_json(lock)) == names


def test_repin_cli(tmp_path, capsys):
    lock = tmp_path / "downloads.lock.json"
    write_json(lock, {"a": {"sha256": "1"}, "b": {"sha256": "2"}})
    assert main(["--repin", "a", "--lock", str(lock)]) == 0
    assert read_json(lock) == {"b": {"sha256": "2"}}
    assert not repin("a", lock)
    assert main(["--repin", "a", "--lock", str(lock)]) == 1
