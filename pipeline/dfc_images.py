"""The DFC images: which CUDA/cuDNN/TensorFlow stack each DFC release needs, and what GPU code
that stack carries (the GPU policy the gate applies).

Two tables, facts only (re-exported by pipeline.tables):
  DFC_RELEASES  DFC version ranges -> image, Python, TensorFlow, with their sources beside them;
                a version the table does not know (3.32, anything newer) is refused, not guessed.
  IMAGES        one Dockerfile target per CUDA stack: base image, CUDA/cuDNN, driver minimum,
                the TensorFlow wheels' GPU code (native cubins, PTX, JIT cost) and field reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

from pipeline.errors import ToolchainError

UNKNOWN = "unknown"


@dataclass(frozen=True)
class KnownBadGpu:
    """A card that is refused by name, whatever its code says (a field report)."""

    name_pattern: str  # case-insensitive regex matched against the NVML name
    reason: str
    advice: str


@dataclass(frozen=True)
class JitEstimate:
    """What the first start costs on a card that gets TensorFlow's kernels JIT-compiled from PTX."""

    compiled_mb: int  # compiled code the driver produces
    cpu_minutes: int  # ptxas as a stand-in, all modules
    measured_wall_s: int  # one real first start through the driver
    cache_mb: int  # what it leaves in CUDA_CACHE_PATH (CUDA_CACHE_MAXSIZE must exceed it)
    evidence: str

    @property
    def ceiling_s(self) -> float:
        """How long a hang probe may keep compiling: twice the measured warm-up, in whole 5 min."""
        return -(-2 * self.measured_wall_s // 300) * 300.0

    def summary(self) -> str:
        return (f"~{self.compiled_mb} MB of kernels, ~{self.cpu_minutes} CPU-minutes "
                f"({self.measured_wall_s} s measured on an H100), once")


@dataclass(frozen=True)
class GpuCode:
    """The GPU code an image's TensorFlow (with its cuDNN/cuBLAS) carries: what each card runs.

    A cubin for sm_XY runs natively on compute X.Z with Z >= Y; PTX for compute_XY is JIT-compiled
    by the driver for any newer card, except where `no_jit_from` says it cannot be.
    """

    native_sm: tuple[tuple[int, int], ...]
    ptx: tuple[int, int]
    no_jit_from: tuple[int, int]  # from this compute capability on nothing runs
    no_jit_reason: str
    jit: Optional[JitEstimate]  # cost of the JIT between the newest cubin and no_jit_from
    evidence: str


@dataclass(frozen=True)
class DfcImage:
    """One DFC container: a CUDA/cuDNN stack, a Dockerfile target, and its GPU policy."""

    name: str  # Dockerfile target
    base_image: str  # CUDA/cuDNN runtime image tag; pinned by digest (docker/images.lock)
    ubuntu: str
    python: str  # what the base's Ubuntu ships
    cuda: str
    cudnn: str
    tensorflow: str  # what the DFC wheels of the releases using this image pin
    min_driver: int
    gpu_code: GpuCode
    known_bad: tuple[KnownBadGpu, ...]
    # "sha256:..." of base_image's index where a public source quoted it; UNKNOWN otherwise, and
    # `invoke image` pins it on first use (pipeline/host/base_pins.py, docker/images.lock).
    base_image_digest: str = UNKNOWN

    @property
    def lazy_module_loading(self) -> bool:
        """CUDA_MODULE_LOADING=LAZY exists from CUDA 11.7 on."""
        return tuple(int(p) for p in self.cuda.split(".")[:2]) >= (11, 7)


# Pascal (6.x), Turing (7.5), Ampere (8.0/8.6/8.7): the GPU families Hailo's DFC pages list.
DOCUMENTED_COMPUTE = ((6, 0), (6, 1), (6, 2), (7, 5), (8, 0), (8, 6), (8, 7))

_L4_FIELD_REPORT = KnownBadGpu(
    name_pattern=r"\bL4\b",
    reason=("field report: the optimizer hung endlessly on an L4 (DFC 3.32, seed log) while an A100 "
            "works; cause unknown (an L4 runs the same native sm_80 code as an A100, so not JIT)"),
    advice="Use an A100/A10/RTX 30xx, or --cpu (hours), or --allow-gpu to try anyway.",
)

# Kernel evidence: fatbin listings of the cp310 manylinux TensorFlow wheels and the H100
# measurement in ../shared/reference/dfc-api.md ("What GPU code each TensorFlow carries").
_TF212_CODE = GpuCode(
    native_sm=((3, 5), (5, 0), (6, 0), (7, 0), (7, 5), (8, 0)),
    ptx=(8, 0),
    no_jit_from=(10, 0),
    no_jit_reason="cuDNN 8.9 has no PTX for most of its kernels",
    jit=JitEstimate(compiled_mb=251, cpu_minutes=12, measured_wall_s=800, cache_mb=420,
                    evidence="dfc-api.md: 264 PTX modules, 800 s on an H100, 420 MB of cache, 1.1 s from cache"),
    evidence="TF 2.12 wheel: cubins sm_35/50/60/70/75/80 + PTX compute_80; cuDNN 8.9.6/cuBLAS 11.11 native to sm_90",
)
_TF218_CODE = GpuCode(
    native_sm=((6, 0), (7, 0), (8, 0), (8, 9), (9, 0)),
    ptx=(9, 0),
    no_jit_from=(10, 0),
    no_jit_reason=("its generated kernels carry PTX for sm_90a only, which cannot be compiled for "
                   "newer cards (public reports of CUDA_ERROR_INVALID_PTX)"),
    jit=None,  # no card between sm_90 and 10.0 exists to JIT for
    evidence="TF 2.18/2.19 wheels: cubins sm_60/70/80/89/90 + PTX compute_90 (generated kernels: sm_90a)",
)

IMAGES: Mapping[str, DfcImage] = {
    i.name: i
    for i in (
        DfcImage(
            name="dfc-cuda11",
            base_image="nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04",
            ubuntu="22.04",
            python="3.10",
            cuda="11.8",
            cudnn="8.9",
            tensorflow="2.12",
            min_driver=525,
            gpu_code=_TF212_CODE,
            known_bad=(_L4_FIELD_REPORT,),
            # Quoted for this tag by several public Dockerfiles/build records (2026); not re-checked
            # from here (no registry). `invoke image --repin` replaces it via docker/images.lock.
            base_image_digest="sha256:85fb7ac694079fff1061a0140fd5b5a641997880e12112d92589c3bbb1e8b7ca",
        ),
        DfcImage(
            name="dfc-cuda12",
            base_image="nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04",
            ubuntu="22.04",
            python="3.10",
            cuda="12.5.1",
            cudnn="9",  # Hailo asks for 9.10; the base ships its own cuDNN 9 build (not checked here)
            tensorflow="2.18/2.19",
            min_driver=525,
            gpu_code=_TF218_CODE,
            # The L4 report came from DFC 3.32, whose stack is unknown: refused in both images.
            known_bad=(_L4_FIELD_REPORT,),
            base_image_digest=UNKNOWN,  # no public source found: pinned on first use
        ),
    )
}


@dataclass(frozen=True)
class DfcRelease:
    """DFC versions first..last (major.minor) and the stack Hailo documents for them."""

    first: tuple[int, int]
    last: tuple[int, int]
    image: str  # key into IMAGES; UNKNOWN when the stack is not known
    python: str
    tensorflow: str
    sources: tuple[str, ...]

    @property
    def versions(self) -> str:
        first, last = (f"{a}.{b}" for a, b in (self.first, self.last))
        return first if first == last else f"{first}-{last}"

    def covers(self, major_minor: tuple[int, int]) -> bool:
        return self.first <= major_minor <= self.last


_MZ = "hailo-ai/hailo_model_zoo"
_SRC_TF212 = (
    "Model Zoo README.rst badges as found in copies at DFC 3.26.0 and (a fork's) 3.31.0: Python 3.8-3.10, "
    "TensorFlow 2.12.0, CUDA 11.8",
    "Hailo DFC 3.29 install guide as quoted by github.com/8ehemoth/Hailo_tutorial: driver 525, CUDA 11.8, cuDNN 8.9",
)
_SRC_TF218 = (
    f"{_MZ} README.rst badges at DFC 3.33.0: Python 3.10-3.12, TensorFlow 2.18.0, CUDA 12.5.1",
    f"{_MZ} docs/GETTING_STARTED.rst at DFC 5.2.0: Python 3.10-3.12, driver 525, CUDA 12.5.1, cuDNN 9.10",
)
_SRC_ISSUE = "../shared/reference/dfc-api.md (Hailo docs / Model Zoo pages); no page found by our search"

# Sources beside each row; ../shared/reference/dfc-api.md "Versions" has the whole table.
DFC_RELEASES: tuple[DfcRelease, ...] = (
    DfcRelease((3, 25), (3, 31), "dfc-cuda11", "3.8-3.10", "2.12", _SRC_TF212),
    DfcRelease((3, 32), (3, 32), UNKNOWN, UNKNOWN, UNKNOWN, ("not resolved: no source found",)),
    DfcRelease((3, 33), (3, 33), "dfc-cuda12", "3.10-3.12", "2.18", _SRC_TF218),
    DfcRelease((5, 0), (5, 0), "dfc-cuda11", "3.8-3.10", "2.12", (_SRC_ISSUE,)),
    DfcRelease((5, 1), (5, 2), "dfc-cuda12", "3.10-3.12", "2.18", _SRC_TF218),
    DfcRelease((5, 3), (5, 4), "dfc-cuda12", "3.10-3.12", "2.19.1",
               (f"{_MZ} README.rst badges at DFC 5.4.0: Python 3.10-3.12, TensorFlow 2.19.1, CUDA 12.5.1",)),
)


def dfc_major_minor(version: str) -> tuple[int, int]:
    """'3.33.1' / '3.31.0+testdouble' -> (3, 33)."""
    match = re.match(r"^\s*(\d+)\.(\d+)", str(version))
    if not match:
        raise ToolchainError(f"DFC version {version!r} is not a version number.",
                             "Pass it like 3.33.1 (the version in the wheel's file name).")
    return int(match.group(1)), int(match.group(2))


def _known_versions() -> str:
    return ", ".join(r.versions for r in DFC_RELEASES if r.image != UNKNOWN)


def dfc_release(version: str) -> DfcRelease:
    """The release row for a DFC version, or a ToolchainError saying what to do."""
    major_minor = dfc_major_minor(version)
    release = next((r for r in DFC_RELEASES if r.covers(major_minor)), None)
    fix = (f"Use a DFC version the table knows ({_known_versions()}; the Model Zoo's Whisper HEFs are "
           "built with 3.33.1), or add the release's Python/TensorFlow/CUDA from Hailo's release notes to "
           "DFC_RELEASES in pipeline/dfc_images.py, with the source beside it.")
    if release is None:
        raise ToolchainError(f"DFC {version} is not in the DFC release -> image table.", fix)
    if release.image == UNKNOWN:
        raise ToolchainError(
            f"DFC {version}: which TensorFlow/CUDA stack DFC {release.versions} needs is unknown "
            "(no Hailo page we could find states it), so no image can be chosen.", fix)
    return release


def image_for_dfc(version: str) -> DfcImage:
    """The image (CUDA stack) that runs DFC `version`."""
    return IMAGES[dfc_release(version).image]
