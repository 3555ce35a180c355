"""Small file helpers every stage shares: content hashes and atomic writes.

A killed run must never leave a file that looks finished, so every artifact is written under a
temporary name in the same directory and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
from pathlib import Path
from typing import Iterator

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temp_path_for(path: str | os.PathLike) -> Path:
    """The temporary name an artifact is written under before it is renamed into place.

    Hidden, the same for one writer (host, process, thread) and different between writers, keeping
    the suffix (`.x.partial-host-123-456.har` for `x.har`): some writers (numpy, the DFC's save_har)
    insist on their extension. The pid alone is not enough: two threads of one build, or two matrix
    tasks with the same pid on two hosts sharing a store, may write one file (the stage cache's
    hash memo) at the same time.
    """
    path = Path(path)
    writer = f"{socket.gethostname()}-{os.getpid()}-{threading.get_native_id()}"
    return path.with_name(f".{path.stem}.partial-{writer}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to `path` only if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary file is removed and `path`
    is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, value) -> Path:
    return write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
