"""Real Docker for the tests without a registry: a debootstrapped Debian base image, a host
wheelhouse for offline image builds, and the export/DFC images built from them.

Reusable by any test module (the end-to-end build test too):
    ensure_test_base_image() -> "whisper-hailo-test-base:bookworm"
    ensure_wheelhouse(extra_wheels=()) -> Path
    ensure_dfc_test_wheel(vendor_dir) -> Path   (the DFC test double as a wheel, or a dev stand-in)
    build_test_image(target, vendor_dir) -> ImageRef   (export or dfc3 FROM the test base, offline)
Everything is cached (image by tag, wheelhouse by the hash of the constraints files), so only the
first run on a fresh machine pays for debootstrap, pip download and the image builds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.host.docker_engine import REPO_ROOT, ImageRef, ensure_image

TEST_BASE_IMAGE = "whisper-hailo-test-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# python3 for the stages; passwd for useradd in the Dockerfile; espeak-ng and sox because the
# export image runs the calibration stage, which synthesizes speech with them.
DEBOOTSTRAP_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates", "passwd", "espeak-ng", "sox")
CACHE_DIR = Path(os.environ.get("WHISPER_HAILO_TEST_CACHE", Path.home() / ".cache" / "whisper-hailo"))
CONSTRAINTS = (REPO_ROOT / "docker" / "constraints-export.txt", REPO_ROOT / "docker" / "constraints-dfc.txt")
# What the images install (docker/install-venv.sh), downloaded on the host for offline builds.
EXPORT_REQUIREMENTS = ("torch", "transformers", "onnx", "onnxruntime", "onnxslim", "soundfile", "soxr", "tqdm", "numpy")
DFC_REQUIREMENTS = ("onnxruntime", "numpy")
TORCH_WHEELS = Path("/opt/wheels")  # torch CPU wheels on this machine (pip's find-links)


def _image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def ensure_test_base_image(tag: str = TEST_BASE_IMAGE) -> str:
    """A minimal Debian bookworm with python3 as a local image (no registry needed): debootstrap
    into a temp dir, `docker import` it. Skipped when the image exists."""
    if _image_exists(tag):
        return tag
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap); .ci/run installs it")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="whisper-hailo-rootfs-") as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=" + ",".join(DEBOOTSTRAP_PACKAGES),
             "bookworm", str(root), DEBIAN_MIRROR],
            check=True, stdout=subprocess.DEVNULL,
        )
        # apt caches make the image bigger for nothing
        shutil.rmtree(root / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise RuntimeError("tar of the debootstrapped root failed")
    print(f"built {tag} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return tag


def _constraints_key() -> str:
    digest = hashlib.sha256()
    for path in CONSTRAINTS:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_wheelhouse() -> Path:
    """Every wheel the images install (torch from /opt/wheels), keyed by the constraints files."""
    wheelhouse = CACHE_DIR / f"wheelhouse-{_constraints_key()}"
    done = wheelhouse / ".complete"
    if done.exists():
        return wheelhouse
    partial = wheelhouse.with_name(wheelhouse.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial),
           "--only-binary=:all:", "--find-links", str(TORCH_WHEELS)]
    if not list(TORCH_WHEELS.glob("torch-*+cpu-*.whl")):  # no local torch: PyTorch's CPU index
        pip += ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]
    subprocess.run(pip + ["-c", str(CONSTRAINTS[0]), *EXPORT_REQUIREMENTS], check=True)
    subprocess.run(pip + ["-c", str(CONSTRAINTS[1]), *DFC_REQUIREMENTS], check=True)
    (partial / ".complete").write_text("ok\n")
    shutil.rmtree(wheelhouse, ignore_errors=True)
    partial.rename(wheelhouse)
    return wheelhouse


def ensure_dfc_test_wheel(vendor_dir: Path) -> Path:
    """The DFC test double as a wheel in vendor_dir.

    Built by `invoke dfc-double-wheel --dest DIR` (the DFC workstream's task) when tests/dfc_double
    exists; until then a minimal stand-in wheel named like the double, so the image build can be
    exercised (it provides no hailo_sdk_client API at all).
    """
    vendor_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(vendor_dir.glob("hailo_dataflow_compiler-3.*.whl"))
    if existing:
        return existing[0]
    invoke = Path(sys.executable).with_name("invoke")
    listing = subprocess.run([str(invoke), "--list"], capture_output=True, text=True, cwd=REPO_ROOT).stdout
    if "dfc-double-wheel" in listing:
        subprocess.run([str(invoke), "dfc-double-wheel", "--dest", str(vendor_dir)], check=True, cwd=REPO_ROOT)
        wheels = sorted(vendor_dir.glob("hailo_dataflow_compiler-3.*.whl"))
        if wheels:
            return wheels[0]
    return _stand_in_wheel(vendor_dir)


def _stand_in_wheel(vendor_dir: Path) -> Path:
    import zipfile

    name = "hailo_dataflow_compiler-3.31.0+testdouble-py3-none-any.whl"
    dist_info = "hailo_dataflow_compiler-3.31.0+testdouble.dist-info"
    files = {
        "hailo_dfc_stand_in/__init__.py": "VERSION = '3.31.0+testdouble'\n",
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\nName: hailo-dataflow-compiler\nVersion: 3.31.0+testdouble\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: whisper-hailo-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist_info}/RECORD,,\n"
    path = vendor_dir / name
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, text in files.items():
            zf.writestr(arcname, text)
        zf.writestr(f"{dist_info}/RECORD", record)
    return path


def build_test_image(target: str, vendor_dir: Path) -> ImageRef:
    """The `target` image built FROM the debootstrapped base with the host wheelhouse (no network
    inside the build). The DFC test double wheel goes into vendor_dir (used by dfc3) and its
    own dependencies into the wheelhouse."""
    base = ensure_test_base_image()
    wheelhouse = ensure_wheelhouse()
    # for every target: the wheelhouse listing is part of each image's tag, so it must be final
    # before the first build of a session
    _add_dependencies(wheelhouse, ensure_dfc_test_wheel(Path(vendor_dir)))
    return ensure_image(
        target, base_image=base, wheelhouse=wheelhouse, vendor_dir=Path(vendor_dir),
        log_dir=CACHE_DIR / "image-logs",
    )


def _add_dependencies(wheelhouse: Path, wheel: Path) -> None:
    """Download what `wheel` requires into the wheelhouse (not the wheel itself)."""
    marker = wheelhouse / f".deps-{hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]}"
    if marker.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--dest", tmp, "--only-binary=:all:",
             "-c", str(CONSTRAINTS[1]), str(wheel)],
            check=True,
        )
        for path in Path(tmp).iterdir():
            if not path.name.startswith("hailo_dataflow_compiler-") and not (wheelhouse / path.name).exists():
                shutil.copy2(path, wheelhouse / path.name)
    marker.write_text("ok\n")


if __name__ == "__main__":  # warm the caches by hand: python -m tests.docker_fixtures
    print(ensure_test_base_image())
    print(ensure_wheelhouse())
