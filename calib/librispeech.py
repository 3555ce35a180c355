"""Optional download of LibriSpeech dev-clean (5.4 h of read English speech, 2703 FLAC files).

The URL and the archive's sha256 are pinned here, once. The download resumes (HTTP Range) into
`<archive>.partial`, shows progress, and the checksum is verified before anything is extracted;
a mismatch removes the bad file and says so. Extraction refuses members that would land outside
the destination. Needs internet; everything else in calib/ works offline on any audio folder.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from calib.config import DEV_CLEAN_URL
from pipeline.errors import ToolchainError
from pipeline.files import sha256_file

# openslr.org resource 12 (calib.config.DEV_CLEAN_URL); the sha256 is of the archive as served there.
DEV_CLEAN_SHA256 = "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3"
DEV_CLEAN_DIR = "LibriSpeech/dev-clean"  # what the archive extracts to

_CHUNK = 1 << 20
# The way around a download that cannot work here (offline host, blocked server).
OWN_AUDIO_HINT = "`make hef CALIB=DIR` or `invoke build --calib DIR` with a folder of wav/flac/ogg speech"


@dataclass(frozen=True)
class DownloadSpec:
    """One archive to fetch: where from, its sha256, and the folder it extracts to."""

    url: str = DEV_CLEAN_URL
    sha256: str = DEV_CLEAN_SHA256
    extracts_to: str = DEV_CLEAN_DIR
    timeout_s: float = 60.0


def download_file(url: str, dest: Path, *, timeout_s: float = 60.0, progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming a previous `<dest>.partial` with an HTTP Range request."""
    partial = dest.with_name(dest.name + ".partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to fetch: the partial file is complete
            os.replace(partial, dest)
            return dest
        raise ToolchainError(f"Downloading {url} failed: HTTP {err.code} {err.reason}.",
                             "Check the URL and your internet connection, then run the command again, or use "
                             f"your own speech recordings instead: {OWN_AUDIO_HINT}.") from None
    except (urllib.error.URLError, OSError) as err:
        raise ToolchainError(f"Downloading {url} failed: {getattr(err, 'reason', err)}.",
                             "Check your internet connection (or proxy), then run the command again (the "
                             f"download resumes where it stopped), or use your own speech recordings instead: "
                             f"{OWN_AUDIO_HINT}.") from None
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server ignored the Range header: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(partial, "ab" if resumed else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress
        ) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                bar.update(len(chunk))
    os.replace(partial, dest)
    return dest


def verify_sha256(path: Path, expected: str) -> None:
    """Raise (and delete `path`) when its sha256 is not `expected`."""
    actual = sha256_file(path)
    if actual != expected.lower():
        path.unlink(missing_ok=True)
        raise ToolchainError(
            f"Checksum mismatch for {path.name}: sha256 {actual}, expected {expected}; the file was removed.",
            "Run the command again to download it afresh; if it keeps failing the mirror serves a different "
            "file (check the pinned sha256 in calib/librispeech.py against openslr.org).",
        )


def extract(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz under `dest`, refusing members that point outside it."""
    with tarfile.open(archive, "r:*") as tar:
        try:
            tar.extractall(dest, filter="data")
        except tarfile.FilterError as err:
            raise ToolchainError(f"{archive.name} holds an unsafe member: {err}.", "Use the official archive.") from None


def download_librispeech(dest: str | os.PathLike, spec: DownloadSpec = DownloadSpec(), *, progress: bool = True) -> Path:
    """Fetch, verify and extract the archive under `dest`; return the extracted audio folder.

    Idempotent: an already extracted folder is returned as is (delete it to re-fetch).
    """
    dest = Path(dest)
    target = dest / spec.extracts_to
    done_marker = dest / f".{Path(spec.extracts_to).name}.complete"
    if target.is_dir() and done_marker.exists():
        return target
    archive = dest / Path(spec.url.split("?")[0]).name
    if not archive.exists():
        download_file(spec.url, archive, timeout_s=spec.timeout_s, progress=progress)
    verify_sha256(archive, spec.sha256)
    # Extract beside the target and move it into place whole: an interrupted extraction never
    # leaves a tree that looks like the full corpus.
    staging = dest / ".extract-partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        extract(archive, staging)
        if not (staging / spec.extracts_to).is_dir():
            raise ToolchainError(f"{archive.name} did not contain {spec.extracts_to}.", "Check the pinned URL.")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / spec.extracts_to, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    done_marker.write_text(spec.sha256 + "\n")
    archive.unlink()
    return target
