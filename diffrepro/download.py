"""Download the paper's pretrained files, resumably, and pin their sha256 on first use.

No checksums are published for the DiT checkpoints or the ADM reference batch, so the
first successful download records one in a lock file (trust on first use) and every later
download or hand-placed copy must match it. The lock file is JSON, keyed by file name:

    {"DiT-XL-2-256x256.pt": {"sha256": "...", "size": 123, "url": "https://..."}}

Bytes go to `<dest>.part` and only a verified file is renamed onto `dest`, so a killed or
corrupt download never looks finished. `gdrive:<id>` URLs go through Google Drive's
"can't scan for viruses" confirmation page.

    python -m diffrepro.download --repin NAME [--lock PATH]   # forget a pinned checksum
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urljoin

import requests
import urllib3

from .checkpoints import ChecksumMismatch
from .io import read_json, sha256_file, write_json

DEFAULT_LOCK = "config/paper/downloads.lock.json"
CHUNK = 1 << 20
PROGRESS_EVERY_S = 10.0
OFFLINE_ENV = ("HF_HUB_OFFLINE", "DIFFREPRO_OFFLINE")
# Hugging Face loads (hub models, CLIP weights) are also off with transformers' own variable,
# as huggingface_hub reads it.
HUB_OFFLINE_ENV = (*OFFLINE_ENV, "TRANSFORMERS_OFFLINE")
TRUE_VALUES = ("1", "true", "yes", "on")  # huggingface_hub's ENV_VARS_TRUE_VALUES, any case


@dataclass(frozen=True)
class RemoteFile:
    name: str  # key in the lock file, e.g. "DiT-XL-2-256x256.pt"
    url: str   # an http(s) URL, or "gdrive:<file id>" for a Google Drive file

    @property
    def gdrive_id(self) -> str | None:
        return self.url[len("gdrive:"):] if self.url.startswith("gdrive:") else None

    @property
    def browser_url(self) -> str:
        """Where a person can fetch the file by hand."""
        if self.gdrive_id:
            return f"https://drive.google.com/uc?export=download&id={self.gdrive_id}"
        return self.url


class DownloadError(RuntimeError):
    """The file could not be downloaded (HTTP error, retries exhausted, Drive refused)."""


class DownloadUnavailable(DownloadError):
    """The file is missing and downloads are disabled."""


class _Transient(Exception):
    """A failure worth retrying (5xx, 429, short body)."""


# urllib3's errors surface unwrapped because the body is read from response.raw.
_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              urllib3.exceptions.HTTPError, _Transient)


def fetch(remote: RemoteFile, dest: str | os.PathLike, lock_path: str | os.PathLike, *,
          allow_downloads: bool, retries: int = 5, backoff_s: float = 1.0,
          timeout_s: float = 60.0, gdrive_url: str = "https://drive.google.com/uc",
          log: Callable[[str], object] = print) -> str:
    """Make sure `dest` holds `remote`, verified against (or pinned into) the lock; returns
    its sha256. `retries` is how many failed attempts in a row, without new bytes, are retried."""
    dest = Path(dest).absolute()
    lock_path = Path(lock_path)
    if dest.exists():
        # Already downloaded, or placed by hand: verify, never re-download.
        return _verify_or_pin(remote, dest, lock_path, log, on_mismatch=(
            f"{dest} was left as it is; if it is the wrong file, delete it and rerun"))

    reason = offline_reason(allow_downloads)
    if reason:
        raise DownloadUnavailable(
            f"{remote.name} is missing and downloads are disabled ({reason}). Either download "
            f"{remote.browser_url} yourself and place it at {dest}, or allow downloads (config "
            f"key `allow_downloads: true`, with HF_HUB_OFFLINE and DIFFREPRO_OFFLINE unset).")

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = Path(f"{dest}.part")
    log(f"downloading {remote.name} from {remote.url} to {dest}")
    with requests.Session() as session:
        _download_with_retries(session, remote, dest, part, retries, backoff_s, timeout_s,
                               gdrive_url, log)

    rejected = Path(f"{dest}.rejected")
    try:
        digest = _verify_or_pin(remote, part, lock_path, log, on_mismatch=(
            f"the downloaded bytes were moved to {rejected} and {dest} was not created"))
    except ChecksumMismatch:
        os.replace(part, rejected)  # keep the bytes for inspection; never leave them as `dest`
        raise
    os.replace(part, dest)
    return digest


def verify_placed(path: str | os.PathLike | None, remote: dict | None, lock_path: str | os.PathLike,
                  log: Callable[[str], object] = print) -> None:
    """A file the download rule fetched, or one placed by hand ({file, url} `remote`; None: not a
    download), checked against (or pinned into) the lock. Snakemake never reruns the download
    rule for a file that exists, so the jobs that read downloads verify them with this."""
    if isinstance(remote, dict) and path:
        fetch(RemoteFile(remote["file"], remote["url"]), path, lock_path, allow_downloads=False, log=log)


def repin(name: str, lock_path: str | os.PathLike = DEFAULT_LOCK) -> bool:
    """Forget the pinned checksum of `name`; the next download pins a new one."""
    lock_path = Path(lock_path)
    with _locked(lock_path):
        pins = _read_lock(lock_path)
        if pins.pop(name, None) is None:
            return False
        write_json(lock_path, pins)
        return True


# --------------------------------------------------------------------------------------
# Lock file
# --------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the lock file across concurrent Snakemake jobs."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{lock_path}.lock", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


def _read_lock(lock_path: Path) -> dict:
    return read_json(lock_path) if lock_path.exists() else {}


def _verify_or_pin(remote: RemoteFile, path: Path, lock_path: Path, log, on_mismatch: str) -> str:
    digest = sha256_file(path)  # hashed outside the lock: it takes seconds for large files
    with _locked(lock_path):
        pins = _read_lock(lock_path)
        entry = pins.get(remote.name)
        if entry is None:
            pins[remote.name] = {"sha256": digest, "size": path.stat().st_size, "url": remote.url}
            write_json(lock_path, pins)
            log(f"pinned {remote.name}: sha256 {digest} in {lock_path}")
            return digest
    if entry["sha256"] != digest:
        raise ChecksumMismatch(
            f"checksum mismatch for {remote.name} ({remote.url}): expected sha256 "
            f"{entry['sha256']} (pinned in {lock_path}), found {digest}; {on_mismatch}. If the "
            f"upstream file changed on purpose, re-pin it: delete the entry \"{remote.name}\" "
            f"from {lock_path} (or run `python -m diffrepro.download --repin {remote.name} "
            f"--lock {lock_path}`) and rerun.")
    return digest


def offline_reason(allow_downloads: bool, variables: tuple[str, ...] = OFFLINE_ENV) -> str | None:
    """Why no download may happen now (None: downloads allowed). The variables are read now,
    on every call (huggingface_hub reads its own once, at import), each with huggingface_hub's
    notion of true (1/true/yes/on, any case: HF_HUB_OFFLINE=0 or =false leaves downloads on);
    any one of them set true turns downloads off."""
    if not allow_downloads:
        return "allow_downloads is false"
    for var in variables:
        if os.environ.get(var, "").strip().lower() in TRUE_VALUES:
            return f"{var}={os.environ[var]}"
    return None


# --------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------

def _download_with_retries(session, remote, dest, part, retries, backoff_s, timeout_s,
                           gdrive_url, log) -> None:
    attempts = failures = 0
    while True:
        before = _size(part)
        attempts += 1
        try:
            _attempt(session, remote, dest, part, timeout_s, gdrive_url, log)
            return
        except _RETRYABLE as e:
            # An attempt that added bytes resets the count, so a flaky link still finishes
            # a multi-GB file; one that added nothing counts towards giving up.
            failures = 0 if _size(part) > before else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"giving up on {remote.url} ({remote.name}) after {attempts} attempts "
                    f"({failures} in a row without progress); last error: {e}. {_size(part)} "
                    f"bytes are kept in {part}, so rerunning resumes; or download "
                    f"{remote.browser_url} yourself and place it at {dest}.") from e
            delay = backoff_s * 2 ** max(failures - 1, 0)
            log(f"{remote.name}: {e}; retrying in {delay:.1f} s (attempt {attempts + 1})")
            time.sleep(delay)


def _attempt(session, remote, dest, part, timeout_s, gdrive_url, log) -> None:
    """One GET, resumed from what `part` holds; raises _Transient for retryable answers."""
    offset = _size(part)
    response = _open(session, remote, dest, offset, timeout_s, gdrive_url)
    with response:
        status = response.status_code
        if status == 416:
            total = _range_total(response.headers.get("Content-Range"))
            if offset and total == offset:
                return  # the part was already complete
            part.unlink(missing_ok=True)  # larger than the remote file: it cannot be resumed
            raise _Transient(f"HTTP 416 for a {offset}-byte partial file; restarting from zero")
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status} from {response.url}")
        if status not in (200, 206):
            raise DownloadError(
                f"HTTP {status} from {remote.url} while downloading {remote.name}; not retrying. "
                f"Check the URL, or download it yourself and place it at {dest}.")
        if status == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"server resumed at byte {start}, not {offset}; restarting")
            mode = "ab"
        else:
            if offset:
                log(f"{remote.name}: server ignored the Range request; restarting from zero")
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        received = _stream(response, part, mode, offset, length, remote.name, log)
    if length is not None and received != int(length):
        raise _Transient(f"connection closed after {received} of {length} bytes")


def _stream(response, part: Path, mode: str, offset: int, length: str | None, name: str,
            log) -> int:
    total = f"{(offset + int(length)) / 1e6:.1f} MB" if length is not None else "? MB"
    received, started = 0, time.monotonic()
    last_log = started
    with open(part, mode) as f:
        # raw.read1 hands over whatever has arrived; iter_content would drop the last
        # partly-filled chunk when the connection breaks, and resuming needs every byte.
        while chunk := response.raw.read1(CHUNK, decode_content=False):
            f.write(chunk)
            received += len(chunk)
            now = time.monotonic()
            if now - last_log >= PROGRESS_EVERY_S:
                last_log = now
                log(f"{name}: {(offset + received) / 1e6:.1f} of {total} "
                    f"({received / 1e6 / (now - started):.1f} MB/s)")
    return received


def _open(session, remote, dest, offset, timeout_s, gdrive_url) -> requests.Response:
    # identity: a gzip-encoded body would make byte offsets meaningless for resuming
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    file_id = remote.gdrive_id
    if file_id is None:
        return session.get(remote.url, headers=headers, stream=True, timeout=timeout_s)

    url, params = gdrive_url, {"export": "download", "id": file_id}
    for _ in range(3):
        response = session.get(url, params=params, headers=headers, stream=True,
                               timeout=timeout_s)
        if response.status_code >= 400 or not _is_html(response):
            return response
        # Drive answered with its "can't scan for viruses" page instead of the file.
        html, page_url, cookies = response.text, response.url, response.cookies
        response.close()
        confirm = _gdrive_confirmation(html, page_url, cookies, params)
        if confirm is None:
            raise DownloadError(
                f"Google Drive did not serve file {file_id} ({remote.name}): its page has no "
                f"download link (the daily download quota is exceeded, or the file is not "
                f"shared publicly). Download {remote.browser_url} in a browser and place it at "
                f"{dest}, or retry later.")
        url, params = confirm
    raise DownloadError(f"Google Drive kept answering with an HTML page for file {file_id} "
                        f"({remote.name}); download {remote.browser_url} in a browser and "
                        f"place it at {dest}.")


def _gdrive_confirmation(html: str, page_url: str, cookies, params: dict
                         ) -> tuple[str, dict] | None:
    """The (url, params) that confirm the download, from either known form of the page."""
    form = _DownloadForm()
    form.feed(html)
    if form.action:  # current form: <form id="download-form" action=...> with hidden inputs
        return urljoin(page_url, form.action), form.inputs
    for key, value in cookies.items():  # older form: a download_warning_* cookie holds the token
        if key.startswith("download_warning"):
            return page_url.split("?")[0], {**params, "confirm": value}
    return None


class _DownloadForm(HTMLParser):
    def __init__(self):
        super().__init__()
        self.action: str | None = None
        self.inputs: dict[str, str] = {}
        self._inside = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id") == "download-form":
            self.action, self._inside = attrs.get("action"), True
        elif (tag == "input" and self._inside and attrs.get("name")
              and attrs.get("type", "text") != "submit"):
            self.inputs[attrs["name"]] = attrs.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form":
            self._inside = False


def _is_html(response) -> bool:
    return response.headers.get("Content-Type", "").lower().startswith("text/html")


def _range_start(content_range: str | None) -> int | None:
    match = re.match(r"bytes (\d+)-\d+/", content_range or "")
    return int(match.group(1)) if match else None


def _range_total(content_range: str | None) -> int | None:
    match = re.match(r"bytes [^/]+/(\d+)", content_range or "")
    return int(match.group(1)) if match else None


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repin", metavar="NAME", required=True,
                        help="forget the pinned sha256 of NAME; the next download pins a new one")
    parser.add_argument("--lock", default=DEFAULT_LOCK, help=f"lock file (default {DEFAULT_LOCK})")
    args = parser.parse_args(argv)
    if repin(args.repin, args.lock):
        print(f"removed {args.repin} from {args.lock}; the next download pins a new sha256")
        return 0
    print(f"{args.repin} is not pinned in {args.lock}")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
