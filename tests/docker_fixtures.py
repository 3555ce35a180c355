"""Real Docker for the tests without a registry: the offline base image and wheelhouse of
`pipeline.host.offline_images` (shared with `invoke rehearsal`), and the export/DFC images built
from them with the DFC test double.

Reusable by any test module (the end-to-end build test too):
    ensure_test_base_image() -> "whisper-hailo-debootstrap:bookworm"
    ensure_wheelhouse() -> Path
    ensure_dfc_test_wheel(vendor_dir) -> Path   (the DFC test double as a wheel)
    build_test_image(target, vendor_dir) -> ImageRef   (export or dfc3 FROM the base, offline)
Everything is cached (image by tag, wheelhouse by the hash of the constraints files), so only the
first run on a fresh machine pays for debootstrap, pip download and the image builds.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.host import offline_images
from pipeline.host.docker_engine import REPO_ROOT, ImageRef, ensure_image
from pipeline.host.vendor import build_test_double_wheel

CACHE_DIR = Path(os.environ.get("WHISPER_HAILO_TEST_CACHE", Path.home() / ".cache" / "whisper-hailo"))
CONSTRAINTS = offline_images.CONSTRAINTS


def ensure_test_base_image() -> str:
    """A minimal Debian bookworm with python3 as a local image (debootstrap + docker import)."""
    return offline_images.ensure_base_image()


def ensure_wheelhouse() -> Path:
    """Every wheel the images install, keyed by the constraints files, under CACHE_DIR."""
    return offline_images.ensure_wheelhouse(CACHE_DIR)


def ensure_dfc_test_wheel(vendor_dir: Path) -> Path:
    """The DFC test double (tests/dfc_double) as a wheel in vendor_dir (built once per folder)."""
    vendor_dir = Path(vendor_dir)
    existing = sorted(vendor_dir.glob("hailo_dataflow_compiler-3.*.whl"))
    if existing:
        return existing[0]
    return build_test_double_wheel(REPO_ROOT / "tests" / "dfc_double", vendor_dir)


def build_test_image(target: str, vendor_dir: Path) -> ImageRef:
    """The `target` image built FROM the debootstrapped base with the host wheelhouse (no network
    inside the build). The DFC test double wheel goes into vendor_dir (used by dfc3) and its
    own dependencies into the wheelhouse."""
    base = ensure_test_base_image()
    wheelhouse = ensure_wheelhouse()
    # for every target: the wheelhouse listing is part of each image's tag, so it must be final
    # before the first build of a session
    offline_images.add_wheel_dependencies(wheelhouse, ensure_dfc_test_wheel(Path(vendor_dir)))
    return ensure_image(
        target, base_image=base, wheelhouse=wheelhouse, vendor_dir=Path(vendor_dir),
        log_dir=CACHE_DIR / "image-logs",
    )


if __name__ == "__main__":  # warm the caches by hand: python -m tests.docker_fixtures
    print(ensure_test_base_image())
    print(ensure_wheelhouse())


def build_inputs_or_skip(vendor_dir: Path) -> tuple[Path, str, Path]:
    """(vendor folder with the double's wheel, base image, wheelhouse) for a Docker-mode test build,
    the export and dfc3 test images built; the test is skipped where they cannot be made here."""
    import shutil

    import pytest

    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    try:
        # The build's own ensure_image then finds these images by their content tags.
        for target in ("export", "dfc3"):
            build_test_image(target, vendor_dir)
        return vendor_dir, ensure_test_base_image(), ensure_wheelhouse()
    except Exception as err:  # no daemon, no debootstrap: the containers' tests say why
        pytest.skip(f"test images cannot be made here: {err}")
