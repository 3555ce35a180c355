"""Base images pinned by digest, on first use: `docker/images.lock`.

Every image starts FROM a registry tag (`nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04`); a tag
moves, a digest does not. The digest of a base comes from, in this order: `--base-image` (used as
given, e.g. a locally loaded image on an offline host), the lock file (written by a previous
pin), the digest quoted in pipeline/dfc_images.py where a public source gave one. When none has
it, `invoke image` asks the registry through the Docker Engine (docker_engine.registry_digest:
docker-py `images.get_registry_data(tag).id`, the index digest), records it in the lock file
atomically, says so loudly, and every later build uses `tag@digest`. `invoke image --repin` asks
again. This module never talks to Docker itself: the caller passes the registry lookup in.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TextIO

from pipeline.errors import ToolchainError
from pipeline.files import write_json_atomic

LOCK_PATH = Path(__file__).resolve().parents[2] / "docker" / "images.lock"
LOCK_FORMAT = 1
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
OVERRIDE, LOCKED, TABLE, UNPINNED, RESOLVED = (
    "--base-image", "docker/images.lock", "pipeline/dfc_images.py", "not pinned", "resolved from the registry now")


@dataclass(frozen=True)
class BasePin:
    """A base image tag and the digest it is built from, with where that digest came from."""

    tag: str
    digest: str  # "sha256:<64 hex>"; "" when not pinned, or for --base-image
    source: str  # OVERRIDE | LOCKED | TABLE | UNPINNED | RESOLVED

    @property
    def pinned(self) -> bool:
        return self.source == OVERRIDE or bool(self.digest)

    @property
    def ref(self) -> str:
        """What FROM gets: the override as given, else tag@digest."""
        if self.source == OVERRIDE:
            return self.tag
        if not self.digest:
            raise ToolchainError(f"Base image {self.tag} is not pinned.", "Run `invoke image` on a host that "
                                 "reaches the registry (it pins it), or pass --base-image.")
        return f"{self.tag}@{self.digest}"


def _lock_error(path: Path, what: str) -> ToolchainError:
    return ToolchainError(
        f"{path}: {what}.",
        f"Fix or delete the entry (or the file) and run `invoke image --repin` on a host that reaches the "
        "registry; on an offline host pass --base-image with a local image instead.",
    )


def read_lock(path: Path = LOCK_PATH) -> dict[str, dict]:
    """tag -> {"digest", "pinned_at", "how"} from the lock file ({} when there is none); validated."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise _lock_error(path, f"not readable JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT or not isinstance(data.get("bases"), dict):
        raise _lock_error(path, f'not a format-{LOCK_FORMAT} lock ({{"format": {LOCK_FORMAT}, "bases": {{...}}}})')
    for tag, entry in data["bases"].items():
        digest = entry.get("digest") if isinstance(entry, dict) else entry
        if not isinstance(digest, str) or not DIGEST.match(digest):
            raise _lock_error(path, f"the digest for {tag} is {digest!r}, not sha256: followed by 64 hex digits")
    return data["bases"]


def lookup_pin(tag: str, table_digest: str, lock_path: Path = LOCK_PATH, table_source: str = TABLE) -> BasePin:
    """The pin known without asking the registry: the lock file first, then the table's digest."""
    entry = read_lock(lock_path).get(tag)
    if entry:
        return BasePin(tag, entry["digest"], LOCKED)
    if DIGEST.match(table_digest or ""):
        return BasePin(tag, table_digest, table_source)
    return BasePin(tag, "", UNPINNED)


def record_pin(tag: str, digest: str, lock_path: Path = LOCK_PATH) -> None:
    """Add or replace one entry; the file is replaced atomically, other entries kept."""
    bases = dict(read_lock(lock_path))
    bases[tag] = {
        "digest": digest,
        "pinned_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "how": "registry answer through docker-py images.get_registry_data(tag).id (`invoke image`)",
    }
    write_json_atomic(lock_path, {"format": LOCK_FORMAT, "bases": bases})


def pin_base(
    tag: str,
    table_digest: str,
    *,
    resolve: Callable[[str], str],
    lock_path: Path = LOCK_PATH,
    repin: bool = False,
    console: Optional[TextIO] = None,
) -> BasePin:
    """The pinned base for `tag`; asks the registry (and records the answer) when nothing pins it
    or `repin` is set. `resolve(tag)` returns the registry's digest or raises ToolchainError; it is
    only called when needed, and an answer that is not a sha256 digest is refused, not recorded."""
    known = lookup_pin(tag, table_digest, lock_path)
    if known.pinned and not repin:
        return known
    digest = resolve(tag)
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise ToolchainError(f"The registry answered {digest!r} for {tag}, which is not a sha256 digest.",
                             f"Retry with `invoke image --repin`; offline, pass --base-image with a local copy of {tag}.")
    record_pin(tag, digest, lock_path)
    was = f" (was {known.digest}, from {known.source})" if known.digest and known.digest != digest else ""
    if console is not None:
        console.write(
            f"\n*** PINNED base image {tag} to {digest}{was}\n"
            f"*** recorded in {lock_path}; later builds use {tag}@{digest}.\n"
            "*** Commit that file so every host builds the same base; `invoke image --repin` refreshes it.\n\n"
        )
        console.flush()
    return BasePin(tag, digest, RESOLVED)
