"""Image inputs that need no registry: a debootstrapped Debian base image and a host wheelhouse.

The rehearsal (`invoke rehearsal`) and the Docker tests build the `export` and DFC images FROM
these with `pipeline.host.docker_engine.ensure_image(base_image=..., wheelhouse=...)`, so no
image registry is needed; only Debian's mirror (debootstrap) and the Python package index (pip
download) are. Both are cached: the base image by tag, a wheelhouse by the hash of the
constraints files (and, for the DFC wheel's own dependencies, by the wheel's hash).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from pipeline.errors import ToolchainError
from pipeline.layout import REPO_ROOT

OFFLINE_BASE_IMAGE = "whisper-hailo-debootstrap:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# python3 for the stages; passwd for useradd in the Dockerfile; espeak-ng and sox because the
# export image runs the calibration stage (docker/install-system.sh skips apt when they are there).
DEBOOTSTRAP_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "passwd", "espeak-ng", "sox")
CONSTRAINTS = (REPO_ROOT / "docker" / "constraints-export.txt", REPO_ROOT / "docker" / "constraints-dfc.txt")
# What the images install (docker/install-venv.sh), downloaded on the host for offline builds.
EXPORT_REQUIREMENTS = ("torch", "transformers", "onnx", "onnxruntime", "onnxslim", "soundfile", "soxr", "tqdm", "numpy")
DFC_REQUIREMENTS = ("onnxruntime", "numpy")
LOCAL_TORCH_WHEELS = Path("/opt/wheels")  # torch CPU wheels, where a machine keeps them (pip find-links)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_COMPLETE = ".complete"


def _image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def debootstrap_problem() -> Optional[str]:
    """Why this host cannot make the base image (None when it can): debootstrap needs root."""
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (apt-get install debootstrap)"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return "debootstrap needs root (run as root, or build the base image once as root)"
    return None


def base_image_problem(tag: str = OFFLINE_BASE_IMAGE) -> Optional[str]:
    """Why the base image can be neither found nor made here (None when it can)."""
    return None if _image_exists(tag) else debootstrap_problem()


def ensure_base_image(tag: str = OFFLINE_BASE_IMAGE, log: Callable[[str], None] = lambda _: None) -> str:
    """A minimal Debian bookworm with python3 as a local image: debootstrap into a temp dir and
    `docker import` it (about 50 s on 2 cores). Skipped when the image exists."""
    if _image_exists(tag):
        return tag
    problem = debootstrap_problem()
    if problem:
        raise ToolchainError(f"Cannot make the offline base image {tag}: {problem}.",
                             "Install debootstrap and run as root, or run without Docker.")
    log(f"making the base image {tag} with debootstrap (about a minute)")
    with tempfile.TemporaryDirectory(prefix="whisper-hailo-rootfs-") as tmp:
        root = Path(tmp) / "root"
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=" + ",".join(DEBOOTSTRAP_PACKAGES),
             "bookworm", str(root), DEBIAN_MIRROR],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        if done.returncode != 0:
            raise ToolchainError(f"debootstrap of Debian bookworm failed:\n{done.stderr[-2000:]}",
                                 f"Check that {DEBIAN_MIRROR} is reachable and the disk has 1 GiB free.")
        # apt caches make the image bigger for nothing
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise ToolchainError("tar of the debootstrapped root failed.", "Check free space under /tmp.")
    return tag


def constraints_key() -> str:
    digest = hashlib.sha256()
    for path in CONSTRAINTS:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _pip_download(dest: Path, constraints: Path, requirements: tuple[str, ...]) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest), "--only-binary=:all:",
               "-c", str(constraints)]
    if list(LOCAL_TORCH_WHEELS.glob("torch-*+cpu-*.whl")):
        command += ["--find-links", str(LOCAL_TORCH_WHEELS)]
    else:  # PyPI's Linux torch is the CUDA build; the CPU build comes from PyTorch's index
        command += ["--extra-index-url", TORCH_CPU_INDEX]
    done = subprocess.run(command + list(requirements), capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolchainError(f"pip download of the image packages failed:\n{done.stderr[-2000:]}",
                             "Check the connection to the package index (and to the PyTorch CPU index).")


def ensure_wheelhouse(cache_dir: Path) -> Path:
    """Every wheel the images install, in <cache_dir>/wheelhouse-<constraints hash>, made once."""
    wheelhouse = Path(cache_dir) / f"wheelhouse-{constraints_key()}"
    if (wheelhouse / _COMPLETE).exists():
        return wheelhouse
    partial = wheelhouse.with_name(wheelhouse.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _pip_download(partial, CONSTRAINTS[0], EXPORT_REQUIREMENTS)
    _pip_download(partial, CONSTRAINTS[1], DFC_REQUIREMENTS)
    (partial / _COMPLETE).write_text("ok\n")
    shutil.rmtree(wheelhouse, ignore_errors=True)
    partial.rename(wheelhouse)
    return wheelhouse


def add_wheel_dependencies(wheelhouse: Path, wheel: Path) -> None:
    """Download what `wheel` (a DFC wheel) requires into the wheelhouse, not the wheel itself.

    Call it before the first image build of a session: the wheelhouse listing is part of every
    image's content tag."""
    marker = Path(wheelhouse) / f".deps-{hashlib.sha256(Path(wheel).read_bytes()).hexdigest()[:16]}"
    if marker.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--dest", tmp, "--only-binary=:all:",
             "-c", str(CONSTRAINTS[1]), str(wheel)],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            raise ToolchainError(f"pip download of {Path(wheel).name}'s dependencies failed:\n{done.stderr[-2000:]}",
                                 "Check the connection to the package index.")
        for path in Path(tmp).iterdir():
            if not path.name.startswith("hailo_dataflow_compiler-") and not (Path(wheelhouse) / path.name).exists():
                shutil.copy2(path, Path(wheelhouse) / path.name)
    marker.write_text("ok\n")
