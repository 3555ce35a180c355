"""The user's DFC wheel in `vendor/`: find it, read its version from the name, check its hash.

The DFC is licensed software downloaded from Hailo's Developer Zone; we never fetch it. Doctor,
the image builder and the build all find it through `find_dfc_wheel`, so the rules are in one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.errors import ToolchainError
from pipeline.files import sha256_file
from pipeline.tables import DfcImage, parse_dfc_wheel_name

DEFAULT_VENDOR_DIR = Path("vendor")
_WHEEL_PREFIX = "hailo_dataflow_compiler-"


@dataclass(frozen=True)
class DfcWheel:
    path: Path
    version: str  # e.g. "3.31.0" or "3.31.0+testdouble"

    @property
    def major(self) -> int:
        return int(self.version.split(".", 1)[0])

    @property
    def is_test_double(self) -> bool:
        return "testdouble" in self.version

    def sha256(self) -> str:
        return sha256_file(self.path)


def list_dfc_wheels(vendor_dir: Path = DEFAULT_VENDOR_DIR) -> list[DfcWheel]:
    """Every DFC wheel in vendor_dir. A file that looks like one but is misnamed is an error."""
    vendor_dir = Path(vendor_dir)
    if not vendor_dir.exists():
        return []
    if not vendor_dir.is_dir() or not os.access(vendor_dir, os.R_OK | os.X_OK):
        raise ToolchainError(
            f"{vendor_dir} is not a readable directory.",
            f"Fix its permissions (e.g. chmod u+rx {vendor_dir}) or point --vendor at another folder.",
        )
    wheels = []
    for path in sorted(vendor_dir.iterdir()):
        if not path.name.startswith(_WHEEL_PREFIX):
            continue
        version = parse_dfc_wheel_name(path.name)
        if not os.access(path, os.R_OK):
            raise ToolchainError(f"{path} is not readable.", f"Fix its permissions: chmod u+r {path}.")
        wheels.append(DfcWheel(path=path, version=version))
    return wheels


def find_dfc_wheel(
    image: DfcImage, vendor_dir: Path = DEFAULT_VENDOR_DIR, expected_sha256: Optional[str] = None
) -> DfcWheel:
    """The one wheel in vendor_dir whose DFC major matches `image`; checks sha256 when given."""
    matching = [w for w in list_dfc_wheels(vendor_dir) if w.major == image.dfc_major]
    if not matching:
        raise ToolchainError(
            f"No DFC {image.dfc_major}.x wheel in {vendor_dir}/ (the {image.name} image needs one).",
            f"Download hailo_dataflow_compiler-{image.min_dfc_version}-py3-none-linux_x86_64.whl "
            f"(or newer {image.dfc_major}.x) from Hailo's Developer Zone and put it in {vendor_dir}/. "
            "For a rehearsal without the DFC, `make dfc-double-wheel` puts the test double there.",
        )
    if len(matching) > 1:
        names = ", ".join(w.path.name for w in matching)
        raise ToolchainError(
            f"Several DFC {image.dfc_major}.x wheels in {vendor_dir}/: {names}.",
            "Keep exactly one per DFC major version; move the others out.",
        )
    wheel = matching[0]
    if expected_sha256 and wheel.sha256() != expected_sha256.lower():
        raise ToolchainError(
            f"{wheel.path} has sha256 {wheel.sha256()}, expected {expected_sha256}.",
            "Download the wheel again from Hailo's Developer Zone or correct the expected hash.",
        )
    return wheel


def build_test_double_wheel(source_dir: Path, dest: Path, version: str = "3.31.0+testdouble") -> Path:
    """Build the DFC test double (tests/dfc_double) into a wheel in `dest`, offline.

    Used by `make dfc-double-wheel`; the wheel installs like the real one (same distribution
    name) so container tests exercise the same install path. Its version must say +testdouble.
    """
    import shutil
    import subprocess
    import sys
    import tempfile

    if "+testdouble" not in version:
        raise ToolchainError(f"Test double version {version!r} lacks the +testdouble label.",
                             "Use e.g. 3.31.0+testdouble or 5.1.0+testdouble.")
    source_dir, dest = Path(source_dir), Path(dest)
    if not (source_dir / "pyproject.toml").is_file():
        raise ToolchainError(f"{source_dir} is not the test double's project (no pyproject.toml).",
                             "Run from the repository root.")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "dfc_double"
        shutil.copytree(source_dir, staging, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        wheel_dir = Path(tmp) / "wheel"
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                   "--no-index", "-w", str(wheel_dir), str(staging)]
        done = subprocess.run(command, capture_output=True, text=True,
                              # fixed zip timestamps: the same source gives the same bytes, so the
                              # DFC image (its tag hashes the wheel) is reused across checkouts
                              env={**os.environ, "HAILO_DOUBLE_VERSION": version, "SOURCE_DATE_EPOCH": "315532800"})
        if done.returncode != 0:
            raise ToolchainError(f"Building the test double wheel failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}",
                                 "Install setuptools and wheel in this environment (pip install setuptools wheel).")
        (built,) = wheel_dir.glob("hailo_dataflow_compiler-*.whl")
        target = dest / built.name
        shutil.copy2(built, target)
    return target
