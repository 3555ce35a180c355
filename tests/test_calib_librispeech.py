"""calib/librispeech.py against a local HTTP server (127.0.0.1) serving a small LibriSpeech-like tarball."""

import hashlib
import http.server
import io
import re
import tarfile
import threading

import numpy as np
import pytest
import soundfile

from calib.audio import find_audio_files
from calib.librispeech import DEV_CLEAN_SHA256, DEV_CLEAN_URL, DownloadSpec, download_file, download_librispeech
from pipeline.errors import ToolchainError


def _tarball() -> bytes:
    """LibriSpeech/dev-clean/<speaker>/<chapter>/*.flac + transcript, gzipped."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for speaker, chapter, utt in [(84, 121123, 0), (84, 121123, 1), (174, 50561, 0)]:
            audio = io.BytesIO()
            soundfile.write(audio, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000, format="FLAC")
            for name, data in [(f"{speaker}-{chapter}-{utt:04d}.flac", audio.getvalue()),
                               (f"{speaker}-{chapter}.trans.txt", b"TEXT\n")]:
                info = tarfile.TarInfo(f"LibriSpeech/dev-clean/{speaker}/{chapter}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class _Server:
    """A tiny HTTP server with Range support; records the Range header of each request."""

    def __init__(self, payload: bytes, honour_range: bool = True):
        self.payload, self.honour_range, self.ranges = payload, honour_range, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if not self.path.endswith("/dev-clean.tar.gz"):
                    self.send_error(404)
                    return
                header = self.headers.get("Range")
                server.ranges.append(header)
                data, status = server.payload, 200
                if header and server.honour_range:
                    start = int(re.match(r"bytes=(\d+)-", header).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    data, status = data[start:], 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dev-clean.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served():
    payload = _tarball()
    server = _Server(payload)
    yield server, payload, hashlib.sha256(payload).hexdigest()
    server.close()


def test_url_and_checksum_are_pinned_once():
    assert DEV_CLEAN_URL == "https://www.openslr.org/resources/12/dev-clean.tar.gz"
    assert re.fullmatch(r"[0-9a-f]{64}", DEV_CLEAN_SHA256)
    assert DownloadSpec().url == DEV_CLEAN_URL and DownloadSpec().sha256 == DEV_CLEAN_SHA256


def test_download_verifies_extracts_and_the_tree_is_usable_audio(served, tmp_path):
    server, _, sha = served
    folder = download_librispeech(tmp_path, DownloadSpec(url=server.url, sha256=sha), progress=False)
    assert folder == tmp_path / "LibriSpeech" / "dev-clean"
    assert find_audio_files(folder) == ["174/50561/174-50561-0000.flac", "84/121123/84-121123-0000.flac",
                                        "84/121123/84-121123-0001.flac"]
    assert not (tmp_path / "dev-clean.tar.gz").exists()  # archive removed once extracted
    # A second call finds the finished folder and does not download again.
    assert download_librispeech(tmp_path, DownloadSpec(url=server.url, sha256=sha), progress=False) == folder
    assert server.ranges == [None]


def test_an_interrupted_download_resumes_with_a_range_request(served, tmp_path):
    server, payload, sha = served
    (tmp_path / "dev-clean.tar.gz.partial").write_bytes(payload[:1000])
    download_librispeech(tmp_path, DownloadSpec(url=server.url, sha256=sha), progress=False)
    assert server.ranges == ["bytes=1000-"]
    assert (tmp_path / "LibriSpeech" / "dev-clean" / "84" / "121123" / "84-121123-0001.flac").is_file()


def test_a_server_without_range_support_restarts_from_zero(served, tmp_path):
    server, payload, _ = served
    server.honour_range = False
    (tmp_path / "a.tar.gz.partial").write_bytes(b"stale bytes")
    download_file(server.url, tmp_path / "a.tar.gz", progress=False)
    assert (tmp_path / "a.tar.gz").read_bytes() == payload
    assert not (tmp_path / "a.tar.gz.partial").exists()


def test_a_complete_partial_file_is_accepted_on_416(served, tmp_path):
    server, payload, _ = served
    (tmp_path / "a.tar.gz.partial").write_bytes(payload)
    download_file(server.url, tmp_path / "a.tar.gz", progress=False)
    assert (tmp_path / "a.tar.gz").read_bytes() == payload


def test_an_interrupted_extraction_leaves_no_tree_and_the_next_run_finishes(served, tmp_path, monkeypatch):
    import calib.librispeech as librispeech

    server, _, sha = served
    real_extract = librispeech.extract

    def extract_then_fail(archive, dest):
        real_extract(archive, dest)
        raise KeyboardInterrupt

    monkeypatch.setattr(librispeech, "extract", extract_then_fail)
    with pytest.raises(KeyboardInterrupt):
        download_librispeech(tmp_path, DownloadSpec(url=server.url, sha256=sha), progress=False)
    assert find_audio_files(tmp_path) == []  # nothing that looks like (part of) the corpus
    assert (tmp_path / "dev-clean.tar.gz").is_file()  # the verified archive is kept for the next run
    monkeypatch.setattr(librispeech, "extract", real_extract)
    folder = download_librispeech(tmp_path, DownloadSpec(url=server.url, sha256=sha), progress=False)
    assert len(find_audio_files(folder)) == 3 and server.ranges == [None]


def test_a_checksum_mismatch_is_an_error_and_the_bad_file_is_removed(served, tmp_path):
    server, _, _ = served
    with pytest.raises(ToolchainError, match=r"Checksum mismatch for dev-clean\.tar\.gz: sha256 [0-9a-f]{64}, "
                                             r"expected 0{64}; the file was removed\. Run the command again"):
        download_librispeech(tmp_path, DownloadSpec(url=server.url, sha256="0" * 64), progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing extracted, no archive, no partial


def test_an_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(ToolchainError, match=r"Downloading http://127\.0\.0\.1:9/x\.tar\.gz failed: .*resumes"):
        download_file("http://127.0.0.1:9/x.tar.gz", tmp_path / "x.tar.gz", timeout_s=5, progress=False)


def test_a_missing_file_on_the_server_is_a_clear_error(served, tmp_path):
    server, _, _ = served
    with pytest.raises(ToolchainError, match=r"Downloading http://127.0.0.1:\d+/missing.tar.gz failed: HTTP 404"):
        download_file(server.url.replace("dev-clean", "missing"), tmp_path / "m.tar.gz", progress=False)
    assert list(tmp_path.iterdir()) == []
