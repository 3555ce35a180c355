"""The image build context and its tag, without Docker: which repository files an image holds
(Dockerfile, docker/ and only the stage modules that containers run), the tar context with the
DFC wheel and the wheelhouse, and the content hash that names the image. `docker_engine` builds
and runs images from these; keeping this apart keeps that module to what talks to docker-py.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Optional

from pipeline.errors import ToolchainError
from pipeline.host.base_pins import LOCK_PATH
from pipeline.host.code_closure import STAGE_ENTRY_MODULES, module_closure
from pipeline.host.vendor import DfcWheel

IMAGE_REPOSITORY = "whisper-hailo"  # tags: whisper-hailo:<target>-<16 hex of the inputs hash>

# What goes into the build context besides the wheel and the wheelhouse (see the Dockerfile):
# these paths whole, plus only the modules of pipeline/ and calib/ that stage containers run
# (code_closure.STAGE_ENTRY_MODULES and what they import). Host-only modules (build, doctor,
# this one, ...) stay out, so editing them neither rebuilds images nor reruns stages.
CONTEXT_PATHS = ("Dockerfile", "docker")
# pyproject.toml and README.md are not read by the build: left out so doc edits keep the tag.
# docker/images.lock is read on the host only (the digest reaches the build as BASE_IMAGE).
_SKIPPED_NAMES = ("__pycache__", ".pytest_cache", LOCK_PATH.name)
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


# --- tags --------------------------------------------------------------------


def _context_files(repo_root: Path) -> list[tuple[Path, str]]:
    """(host path, path in the context) of the repository files the Dockerfile uses."""
    repo_root = Path(repo_root)
    files = [(path, path.relative_to(repo_root).as_posix())
             for path in sorted(module_closure(STAGE_ENTRY_MODULES, root=repo_root).values())]
    for top in CONTEXT_PATHS:
        path = repo_root / top
        if path.is_file():
            files.append((path, top))
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_NAMES)
            for name in sorted(filenames):
                if not name.endswith(_SKIPPED_SUFFIXES) and name not in _SKIPPED_NAMES:
                    full = Path(dirpath) / name
                    files.append((full, full.relative_to(repo_root).as_posix()))
    return files


def _wheelhouse_files(wheelhouse: Optional[Path]) -> list[Path]:
    if wheelhouse is None:
        return []
    wheelhouse = Path(wheelhouse)
    if not wheelhouse.is_dir():
        raise ToolchainError(
            f"Wheelhouse {wheelhouse} is not a directory.",
            "Pass a folder of wheels (`pip download -d DIR ...`, see docker/README.md) or leave "
            "--wheelhouse out to install from PyPI.",
        )
    files = sorted(p for p in wheelhouse.iterdir() if p.is_file() and p.suffix in (".whl", ".gz", ".zip"))
    if not files:
        raise ToolchainError(f"Wheelhouse {wheelhouse} has no wheels.", "Fill it as docker/README.md shows.")
    return files


def build_args_for(target: str, base_image: str, wheel: Optional[DfcWheel], wheel_sha256: str) -> dict:
    args = {"BASE_IMAGE": base_image}
    if wheel is not None:
        args["DFC_WHEEL"] = wheel.path.name
        args["DFC_WHEEL_SHA256"] = wheel_sha256
    return args


def inputs_hash(
    target: str, build_args: dict, repo_root: Path, wheelhouse_files: Iterable[Path]
) -> str:
    """sha256 over the context files' contents, the wheelhouse listing and the build arguments.

    The wheelhouse counts by file name and size (wheel names carry their versions), so a
    gigabyte of wheels is not re-read on every call; the DFC wheel counts by its sha256, which
    is a build argument.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps({"target": target, "build_args": build_args}, sort_keys=True).encode())
    for path, arcname in _context_files(repo_root):
        digest.update(f"\0file {arcname} ".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for path in wheelhouse_files:
        digest.update(f"\0wheel {path.name} {path.stat().st_size}".encode())
    return digest.hexdigest()


def image_tag(target: str, inputs_sha256: str) -> str:
    return f"{IMAGE_REPOSITORY}:{target}-{inputs_sha256[:16]}"



def _write_context(fileobj, repo_root: Path, wheel: Optional[DfcWheel], wheels: list[Path]) -> None:
    """A tar build context: repository files, vendor/<the DFC wheel>, wheelhouse/<wheels>.

    vendor/ and wheelhouse/ are always present (maybe empty): the Dockerfile COPYs both.
    """
    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        for path, arcname in _context_files(repo_root):
            tar.add(path, arcname=arcname, recursive=False)
        for folder in ("vendor", "wheelhouse"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        if wheel is not None:
            tar.add(wheel.path, arcname=f"vendor/{wheel.path.name}")
        for path in wheels:
            tar.add(path, arcname=f"wheelhouse/{path.name}")
