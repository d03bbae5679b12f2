"""The dataset downloader against a loopback HTTP server: resume, truncation, checksums, unpacking."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import pytest

from hloc_hndesc.pipelines import download as dl


class _Files:
    """What the server serves: name -> bytes; names listed in ``truncate_once`` are cut the first time."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.truncate_once: set[str] = set()
        self.ranges: list[str | None] = []


def _handler(files: _Files):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            name = self.path.rsplit("/", 1)[-1]
            if name not in files.data:
                self.send_error(404)
                return
            body, start = files.data[name], 0
            header = self.headers.get("Range")
            files.ranges.append(header)
            if header:
                start = int(header.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if name in files.truncate_once:
                files.truncate_once.discard(name)
                self.wfile.write(body[start : start + (len(body) - start) // 3])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

    return Handler


@pytest.fixture()
def server():
    files = _Files()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(files))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield files, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    return buffer.getvalue()


def test_every_dataset_has_real_urls():
    for name, assets in dl.DATASETS.items():
        assert assets, name
        for asset in assets:
            assert asset.url.startswith(("https://", "http://")) and Path(asset.url).name == Path(asset.path).name


def test_truncated_download_resumes_and_records_checksum(server, tmp_path):
    files, url = server
    payload = bytes(range(256)) * 4096  # 1 MiB
    files.data["blob.bin"] = payload
    files.truncate_once.add("blob.bin")
    target = tmp_path / "blob.bin"
    with pytest.raises(dl.DownloadError, match="truncated"):
        dl.fetch(f"{url}/blob.bin", target)
    part = target.with_name("blob.bin.part")
    assert not target.exists() and 0 < part.stat().st_size < len(payload)
    digest = dl.fetch(f"{url}/blob.bin", target)
    assert files.ranges[-1] == f"bytes={len(payload) // 3}-"  # continued, not restarted
    assert target.read_bytes() == payload and not part.exists()
    assert digest == hashlib.sha256(payload).hexdigest()


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    files, url = server
    files.data["blob.bin"] = b"not what was promised" * 1000
    target = tmp_path / "blob.bin"
    with pytest.raises(dl.DownloadError, match="does not match"):
        dl.fetch(f"{url}/blob.bin", target, expected_sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_download_dataset_unpacks_records_and_verifies(server, tmp_path, monkeypatch):
    files, url = server
    archive = _zip({"scene/images/0000.jpg": b"a", "scene/images/0001.jpg": b"b"})
    files.data["toy.zip"] = archive
    monkeypatch.setitem(dl.DATASETS, "toy", (dl.Asset("https://example.invalid/toy.zip", "downloads/toy.zip", "."),))
    assert dl.main(["toy", str(tmp_path), "--mirror", url]) == 0
    assert (tmp_path / "scene/images/0001.jpg").read_bytes() == b"b"
    manifest = json.loads((tmp_path / dl.MANIFEST).read_text())
    assert manifest == {"downloads/toy.zip": hashlib.sha256(archive).hexdigest()}
    # a second run fetches nothing; a file changed on disk no longer matches the recorded checksum
    requests = len(files.ranges)
    assert dl.main(["toy", str(tmp_path), "--mirror", url]) == 0
    assert len(files.ranges) == requests
    (tmp_path / "downloads/toy.zip").write_bytes(b"tampered")
    assert dl.main(["toy", str(tmp_path), "--mirror", url]) == 1


def test_user_checksum_rejects_the_server_file(server, tmp_path, monkeypatch):
    files, url = server
    files.data["toy.zip"] = _zip({"a.txt": b"a"})
    monkeypatch.setitem(dl.DATASETS, "toy", (dl.Asset("https://example.invalid/toy.zip", "downloads/toy.zip", "."),))
    assert dl.main(["toy", str(tmp_path), "--mirror", url, "--sha256", "toy.zip=" + "ab" * 32]) == 1
    assert not (tmp_path / "downloads/toy.zip").exists() and not (tmp_path / "downloads/toy.zip.part").exists()
    assert not (tmp_path / "a.txt").exists()


def test_unsafe_archive_member_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    archive.write_bytes(_zip({"../escape.txt": b"x"}))
    with pytest.raises(dl.DownloadError, match="unsafe"):
        dl.unpack(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
