"""Small file helpers every stage shares: content hashes and atomic writes.

A killed run must never leave a file that looks finished, so every artifact is written under a
temporary name in the same directory and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
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
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())  # no "." or "-": the name stays parseable
    writer = f"{host}-{os.getpid()}-{threading.get_native_id()}"
    return path.with_name(f".{path.stem}.partial-{writer}{path.suffix}")


_PARTIAL_TOKEN = r"partial-(?:[A-Za-z0-9_]+-)?\d+(?:-\d+)?"  # temp_path_for's writer, or a bare pid
_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\." + _PARTIAL_TOKEN + r"(?P<suffix>\.[^.]*)?$")


def final_path_for(path: str | os.PathLike) -> Path:
    """The artifact a temporary name (`temp_path_for`) becomes; other paths unchanged."""
    path = Path(path)
    m = _TEMP_NAME.match(path.name)
    return path.with_name(m["stem"] + (m["suffix"] or "")) if m else path


# Hidden names of unfinished work: temp_path_for's `.x.partial-<host>-<pid>-<thread>.ext`, the export's
# `.export-partial-*` work folder, the bundle's `.bundle.partial-<pid>` / `.bundle.old-<pid>`.
_PARTIAL_NAME = re.compile(r"^\..*(\." + _PARTIAL_TOKEN + r"|-partial-\w+|\.old-\d+)")
_KEPT_FOLDERS = ("download", ".cache")  # resumable downloads and the model cache manage their own


def remove_partial_files(root: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left under `root` (files and folders with a partial name); returns them.

    Call only while holding the build lock: a live writer's partial files look the same.
    """
    removed = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _KEPT_FOLDERS]
        for name in [d for d in dirs if _PARTIAL_NAME.match(d)]:
            shutil.rmtree(Path(folder) / name, ignore_errors=True)
            dirs.remove(name)
            removed.append(Path(folder) / name)
        for name in files:
            if _PARTIAL_NAME.match(name):
                (Path(folder) / name).unlink(missing_ok=True)
                removed.append(Path(folder) / name)
    return removed


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
    except OSError as err:
        if err.filename is None:  # a write to the open file (e.g. a full disk): name what was written
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
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
