"""Which image `invoke image` builds, decided without Docker or the network: the Dockerfile
target (export, or the CUDA stack the DFC wheel's version needs) and the base it starts from
(pinned by `--base-image`, docker/images.lock or the table; else to be pinned on first use).
`invoke image --dry-run` prints this plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.errors import ToolchainError
from pipeline.host.base_pins import LOCK_PATH, OVERRIDE, BasePin, lookup_pin
from pipeline.host.vendor import DEFAULT_VENDOR_DIR, DfcWheel, find_dfc_wheel, list_dfc_wheels
from pipeline.tables import IMAGES, SERIES, DfcRelease, dfc_major_minor, dfc_release

# Dockerfile targets are tables.STAGE_IMAGES (export, dfc-cuda11, dfc-cuda12).
# What `invoke image --target` takes: export, or a DFC series whose wheel picks the target.
KINDS = ("export", *SERIES)

# The export image is CPU only; its base is not in pipeline/tables.py (that table is about DFCs).
# Digest of the python:3.11-slim-bookworm index as quoted by several public Dockerfiles (2026-09).
EXPORT_BASE_IMAGE = "python:3.11-slim-bookworm"
EXPORT_BASE_DIGEST = "sha256:528257d48c1da0dcecc2e725d1ae34498d60c965f1241e39cd6a85a8859bdf84"


@dataclass(frozen=True)
class ImagePlan:
    """What `invoke image` would build, decided without Docker: target, base, wheel."""

    kind: str  # export | dfc3 | dfc5
    target: str  # Dockerfile target
    base: BasePin
    wheel: Optional[DfcWheel]  # None for export, or for a --dfc-version dry run without the wheel
    dfc_version: Optional[str]
    release: Optional[DfcRelease]

    def describe(self) -> str:
        """The --dry-run answer."""
        lines = [f"target      {self.target}"]
        if self.release is not None:
            image = IMAGES[self.target]
            lines[0] += (f" (DFC {self.dfc_version}: DFC {self.release.versions} -> TensorFlow "
                         f"{self.release.tensorflow}, Python {self.release.python}; image CUDA {image.cuda}, "
                         f"cuDNN {image.cudnn}, Python {image.python})")
        lines.append(f"base image  {self.base.tag}")
        if self.base.source == OVERRIDE:
            lines.append("digest      as given by --base-image")
        elif self.base.digest:
            lines.append(f"digest      {self.base.digest} (from {self.base.source})")
        else:
            lines.append("digest      not pinned: `invoke image` asks the registry on first use and records it "
                         "in docker/images.lock (offline: pass --base-image)")
        if self.kind != "export":
            lines.append(f"DFC wheel   {self.wheel.path if self.wheel else 'none looked up (--dfc-version given)'}")
        return "\n".join(lines)


def plan_image(
    kind: Optional[str],
    *,
    dfc_version: Optional[str] = None,
    vendor_dir: Path = DEFAULT_VENDOR_DIR,
    base_image: Optional[str] = None,
    lock_path: Path = LOCK_PATH,
    dfc_wheel_sha256: Optional[str] = None,
) -> ImagePlan:
    """Which Dockerfile target and base `kind` needs, without Docker or the network.

    kind: "export", or the DFC series "dfc3"/"dfc5" (None: the series of `dfc_version`, else of
    the only DFC major in vendor_dir). The
    DFC target comes from the wheel's version in vendor_dir (or `dfc_version` when given, which
    must then match the wheel if one is looked up) through the release table.
    """
    if kind is None and dfc_version is None:
        majors = sorted({w.major for w in list_dfc_wheels(Path(vendor_dir))})
        if len(majors) != 1:
            found = f"DFC wheels of majors {', '.join(map(str, majors))}" if majors else "no DFC wheel"
            raise ToolchainError(f"No image named, and {vendor_dir}/ holds {found}.",
                                 f"Pass --target ({', '.join(KINDS)}) or --dfc-version.")
        kind = f"dfc{majors[0]}"
    if kind is None:
        kind = f"dfc{dfc_major_minor(dfc_version)[0]}"
    _check_kind(kind)
    if kind == "export":
        base = (BasePin(base_image, "", OVERRIDE) if base_image
                else lookup_pin(EXPORT_BASE_IMAGE, EXPORT_BASE_DIGEST, lock_path, "pipeline/host/docker_engine.py"))
        return ImagePlan("export", "export", base, None, None, None)
    series = SERIES[kind]
    wheel = None
    if dfc_version is None:
        wheel = find_dfc_wheel(series, Path(vendor_dir), dfc_wheel_sha256)
        dfc_version = wheel.version
    if dfc_major_minor(dfc_version)[0] != series.dfc_major:
        raise ToolchainError(f"DFC {dfc_version} is not a {series.dfc_major}.x version, which {kind} needs.",
                             f"Pass a {series.dfc_major}.x version or the matching --target.")
    release = dfc_release(dfc_version)
    image = IMAGES[release.image]
    base = (BasePin(base_image, "", OVERRIDE) if base_image
            else lookup_pin(image.base_image, image.base_image_digest, lock_path))
    return ImagePlan(kind, image.name, base, wheel, dfc_version, release)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ToolchainError(f"Unknown image target {kind!r}.", f"Choose one of: {', '.join(KINDS)}.")
