"""The plan of a matrix build, before anything runs: the cells (variant x arch), each cell's stage
graph with the resources every stage asks the scheduler for, and the GPU gate applied to the
accelerator types a Ray cluster reports. No Ray here: `pipeline.host.matrix` submits the plan.

Ray labels a GPU node with the card's short name (`accelerator_type:A100` resource and the
`ray.io/accelerator-type` label; Ray derives it from the NVML name, e.g. "NVIDIA A100-SXM4-80GB"
-> "A100", "NVIDIA GeForce RTX 3090" -> "GeForce-RTX-3090": ray/_private/accelerators/nvidia_gpu.py).
Ray sets the label on every GPU node (ray/_private/resource_and_label_spec.py). The gate
(`pipeline.host.gpu.judge`) needs a compute capability, so `RAY_ACCELERATOR_COMPUTE` maps those
names to NVIDIA's published compute capabilities. A type not in the table is refused: an optimize
task never lands on a card nobody vouched for. The image judged for is the one `invoke doctor`
judges for: the one the series' DFC wheel in vendor/ needs, else the series' oldest release's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from pathlib import Path

from pipeline.errors import ToolchainError
from pipeline.host.gpu import Basis, Gpu, Status, Verdict, judge
from pipeline.host.stage_cache import STAGE_ORDER, UPSTREAM
from pipeline.host.vendor import find_dfc_wheel
from pipeline.tables import ARCHS, MODELS, VARIANTS, BuildSpec, DfcImage, get_arch, image_for_dfc, resolve_spec

ACCELERATOR_LABEL = "ray.io/accelerator-type"
ACCELERATOR_RESOURCE_PREFIX = "accelerator_type:"

# Ray accelerator type -> CUDA compute capability (NVIDIA's CUDA GPUs list).
RAY_ACCELERATOR_COMPUTE: Mapping[str, tuple[int, int]] = {
    "P100": (6, 0), "P4": (6, 1), "P40": (6, 1),
    "V100": (7, 0), "T4": (7, 5), "GeForce-RTX-2080-Ti": (7, 5),
    "A100": (8, 0), "A30": (8, 0),
    "A10": (8, 6), "A10G": (8, 6), "A40": (8, 6), "A2": (8, 6), "RTX-A4000": (8, 6), "RTX-A5000": (8, 6),
    "RTX-A6000": (8, 6), "GeForce-RTX-3060": (8, 6), "GeForce-RTX-3080": (8, 6), "GeForce-RTX-3090": (8, 6),
    "L4": (8, 9), "L40": (8, 9), "L40S": (8, 9), "GeForce-RTX-4090": (8, 9),
    "H100": (9, 0), "H200": (9, 0), "B200": (10, 0),
}


@dataclass(frozen=True)
class Cell:
    """One build of the matrix: a variant for an arch, in `<store>/<variant>-<arch>`."""

    variant: str
    arch: str

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.arch}"

    def spec(self, seconds: Optional[float] = None, seq_len: Optional[int] = None) -> BuildSpec:
        return resolve_spec(self.variant, self.arch, seconds, seq_len)


@dataclass(frozen=True)
class NodeInfo:
    """A live node of the cluster as the plan needs it."""

    node_id: str
    address: str
    cpus: float
    gpus: float
    accelerator_type: Optional[str]  # Ray's short card name, None for a CPU node


@dataclass(frozen=True)
class GpuPlacement:
    """Where an arch's optimize tasks may run: the accelerator types its DFC image's gate supports."""

    arch: str
    image: DfcImage  # the DFC image the gate judged the cards for
    allowed_types: tuple[str, ...]  # present in the cluster and supported, sorted
    refused: tuple[str, ...]  # the gate's sentence for every other GPU type present

    @property
    def label_selector(self) -> dict[str, str]:
        return {ACCELERATOR_LABEL: f"in({','.join(self.allowed_types)})"}

    def refusal(self) -> ToolchainError:
        image = self.image
        found = "; ".join(self.refused) if self.refused else "the cluster has no GPU node"
        return ToolchainError(
            f"No supported GPU in the cluster for {self.arch} (the {image.name} image, TensorFlow {image.tensorflow}, "
            f"CUDA {image.cuda}): {found}.",
            "Add nodes with a supported card (e.g. A100, A10G, T4), or pass --cpu to optimize on CPUs "
            "(fine-tuning takes hours).",
        )


def parse_list(text: str, what: str, known: Sequence[str]) -> tuple[str, ...]:
    """'tiny, base' -> ('tiny', 'base'); unknown or repeated names fail with the choices."""
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    if not names:
        raise ToolchainError(f"No {what} given.", f"Pass a comma-separated list of: {', '.join(known)}.")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ToolchainError(f"Unknown {what} {', '.join(map(repr, unknown))}.", f"Choose from: {', '.join(known)}.")
    if len(set(names)) != len(names):
        raise ToolchainError(f"A {what} is named twice in {text!r}.", "Name each once.")
    return names


def make_cells(variants: str, archs: str) -> tuple[Cell, ...]:
    """Every variant for every arch, checked against the tables before anything runs."""
    return tuple(Cell(v, a) for v in parse_list(variants, "variant", tuple(VARIANTS))
                 for a in parse_list(archs, "arch", tuple(ARCHS)))


def cell_stages(models: Sequence[str] = MODELS) -> tuple[str, ...]:
    """The stages a cell runs, in build order. With one model: its chain only (the decoder's
    calibration set is made from the encoder's); bundle and report need both HEFs."""
    wanted = set(models)
    if not wanted or wanted - set(MODELS):
        raise ToolchainError(f"Unknown model(s) in {', '.join(models)!r}.", f"Choose from: {', '.join(MODELS)}.")
    needed = {"export", "encoder-calib"}
    for model in wanted:
        needed |= {f"{model}-calib", f"{model}-parse", f"{model}-optimize", f"{model}-compile"}
    if wanted == set(MODELS):
        needed |= {"bundle", "report"}
    return tuple(s for s in STAGE_ORDER if s in needed)


def stage_upstream(stage: str, stages: Sequence[str]) -> tuple[str, ...]:
    """The stages `stage` waits for within a cell (the stage cache's table, limited to `stages`)."""
    return tuple(s for s in UPSTREAM[stage] if s in stages)


def needs_gpu(stage: str) -> bool:
    """Only the optimizer (statistics, fine-tune) uses a GPU; parse and the compiler's partition
    search are CPU work and must not hold a rented GPU."""
    return stage.endswith("-optimize")


def dfc_image_for(arch: str, vendor_dir: Path) -> DfcImage:
    """The image the gate judges `arch`'s cards for (the doctor's rule, from the driver's vendor/)."""
    series = get_arch(arch).dfc
    try:
        version = find_dfc_wheel(series, Path(vendor_dir)).version
    except ToolchainError:
        version = series.min_dfc_version
    return image_for_dfc(version)


def accelerator_verdict(accelerator_type: str, image: DfcImage) -> Verdict:
    """The gate's verdict for a Ray accelerator type on `image`."""
    compute = RAY_ACCELERATOR_COMPUTE.get(accelerator_type)
    if compute is None:
        return Verdict(Status.REFUSED, f"Ray accelerator type {accelerator_type!r} is not in our table of cards "
                                       "(pipeline.host.matrix_plan.RAY_ACCELERATOR_COMPUTE)",
                       "Add it with its compute capability, or use a listed card.", Basis.UNSUPPORTED)
    return judge(_card(accelerator_type, compute), image)


def _card(accelerator_type: str, compute: tuple[int, int]) -> Gpu:
    return Gpu(index=-1, uuid="", name=f"NVIDIA {accelerator_type.replace('-', ' ')}", compute=compute)


def plan_gpus(arch: str, nodes: Sequence[NodeInfo], image: DfcImage) -> GpuPlacement:
    """Which of the cluster's accelerator types may run `arch`'s optimize tasks in `image`."""
    allowed, refused = [], []
    for kind in sorted({n.accelerator_type for n in nodes if n.gpus > 0 and n.accelerator_type}):
        verdict = accelerator_verdict(kind, image)
        if verdict.supported:
            allowed.append(kind)
        else:
            compute = RAY_ACCELERATOR_COMPUTE.get(kind)
            refused.append(verdict.message(_card(kind, compute), image) if compute else f"{kind}: {verdict.reason}")
    if any(n.gpus > 0 and not n.accelerator_type for n in nodes):
        refused.append("a GPU node without an accelerator type (Ray could not name its card)")
    return GpuPlacement(arch, image, tuple(allowed), tuple(refused))
