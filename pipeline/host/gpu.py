"""The GPU gate: which of this host's NVIDIA cards may run the DFC stages, and why.

The DFC's optimizer runs on TensorFlow/CUDA. On some cards it works (A100), on others it hangs
forever (L4, per the seed log), and without a usable card it silently falls back to the CPU,
where quantization-aware fine-tuning takes hours per epoch. So before a build we read the cards
and judge each one against the policy of the DFC image that will run, which the DFC version picks
(`pipeline/dfc_images.py`: the GPU code its TensorFlow carries, field reports, `min_driver`).
The policy is data in the tables; this module only applies it.

Reading the host:  `read_gpus()` asks NVML (nvidia-ml-py) and falls back to `nvidia-smi` when
the NVML library is missing; a host without GPUs gives an empty `GpuInventory` with a note.
Judging:           `judge(gpu, image)` -> `Verdict` (supported / refused) with its basis:
                   native, JIT (with the one-time cost), unsupported, field report, driver.
                   `check_card(name, compute, dfc_version, driver)` answers without the card,
                   for choosing which cloud GPU to rent.
Choosing:          `choose_devices(inventory, image, allow_gpu=, cpu=)` -> `GpuChoice`, whose
                   `device_ids` (UUIDs) go into the container's GPU request.
"""

from __future__ import annotations

import csv
import enum
import io
import re
import subprocess
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional, Sequence, Union

from pipeline.errors import ToolchainError
from pipeline.tables import DOCUMENTED_COMPUTE, IMAGES, DfcImage, GpuCode, JitEstimate, image_for_dfc

# What the seed log measured for quantization-aware fine-tuning on a CPU: 417 steps at ~21 s,
# "2:18:40" left for epoch 1 of 6 (tiny encoder, 3340 calibration entries).
CPU_FINETUNE_EPOCH_ESTIMATE = "about 2 h 18 min per epoch"

SMI_QUERY = ["index", "uuid", "name", "compute_cap", "memory.total", "driver_version"]
SMI_ARGV = ["nvidia-smi", f"--query-gpu={','.join(SMI_QUERY)}", "--format=csv,noheader,nounits"]
SMI_TIMEOUT_S = 30  # nvidia-smi can take seconds on a busy multi-GPU host; never wait forever

SmiRunner = Callable[[Sequence[str]], str]


class Status(str, enum.Enum):
    SUPPORTED = "supported"
    REFUSED = "refused"


class Basis(str, enum.Enum):
    """Why a verdict is what it is; the reason text starts with it."""

    NATIVE = "native"  # the image's TensorFlow ships code for the card
    JIT = "JIT"  # only PTX: compiled once at first start, cached afterwards
    UNSUPPORTED = "unsupported"  # nothing in the image can run on the card
    FIELD_REPORT = "field report"  # refused by name after a report, whatever the code says
    DRIVER = "driver"  # driver older than the image's minimum


@dataclass(frozen=True)
class Gpu:
    """One NVIDIA card as NVML (or nvidia-smi) reports it."""

    index: int  # NVML/nvidia-smi index; -1 for a card described by hand (`check_card`)
    uuid: str  # "GPU-xxxxxxxx-..."; "" when unknown
    name: str  # e.g. "NVIDIA A100-SXM4-80GB"
    compute: tuple[int, int]  # CUDA compute capability, e.g. (8, 0)
    memory_mib: Optional[int] = None
    driver: str = ""  # e.g. "535.104.05"; "" when unknown

    @property
    def compute_str(self) -> str:
        return f"{self.compute[0]}.{self.compute[1]}"

    @property
    def driver_major(self) -> Optional[int]:
        match = re.match(r"\s*(\d+)", self.driver)
        return int(match.group(1)) if match else None

    @property
    def device_id(self) -> str:
        """What the container's GPU request names: the UUID (stable), else the index."""
        return self.uuid or str(self.index)

    @property
    def label(self) -> str:
        where = f"GPU {self.index} " if self.index >= 0 else ""
        return f"{where}{self.name} (compute {self.compute_str})"

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "compute": self.compute_str,
            "memory_mib": self.memory_mib,
            "driver": self.driver,
        }


@dataclass(frozen=True)
class GpuInventory:
    """The host's cards and where the answer came from ("nvml", "nvidia-smi" or "none")."""

    gpus: tuple[Gpu, ...]
    source: str
    note: str = ""  # why there are no GPUs, or how they were read

    @property
    def driver(self) -> str:
        return self.gpus[0].driver if self.gpus else ""


@dataclass(frozen=True)
class Verdict:
    status: Status
    reason: str  # starts with the basis: "native: ...", "JIT: ...", "unsupported: ...", "field report: ..."
    advice: str = ""
    basis: Basis = Basis.NATIVE
    jit: Optional[JitEstimate] = None  # the one-time warm-up, for a JIT verdict

    @property
    def supported(self) -> bool:
        return self.status is Status.SUPPORTED

    def message(self, gpu: Gpu, image: DfcImage) -> str:
        """One sentence for the user, e.g. 'NVIDIA L4 (compute 8.9) is refused for ...: <reason>.'"""
        what = "is supported" if self.supported else "is refused"
        text = (f"{gpu.label} {what} for the {image.name} image (TensorFlow {image.tensorflow}, "
                f"CUDA {image.cuda}): {self.reason}.")
        return f"{text} {self.advice}".strip()


@dataclass(frozen=True)
class GpuChoice:
    """What a build will run the DFC stages on."""

    mode: str  # "gpu" | "cpu"
    devices: tuple[Gpu, ...]  # empty in cpu mode
    warnings: tuple[str, ...] = ()
    verdicts: tuple[tuple[Gpu, Verdict], ...] = ()  # every card on the host, judged

    @property
    def device_ids(self) -> tuple[str, ...]:
        """UUIDs for the container request (`StageCommand.gpu_device_ids`)."""
        return tuple(g.device_id for g in self.devices)

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(g.index for g in self.devices)

    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "devices": [g.to_json() for g in self.devices],
            "device_ids": list(self.device_ids),
            "warnings": list(self.warnings),
            "verdicts": [
                {"gpu": g.to_json(), "status": v.status.value, "basis": v.basis.value, "reason": v.reason,
                 "advice": v.advice, "jit": v.jit.summary() if v.jit else None,
                 "jit_ceiling_s": v.jit.ceiling_s if v.jit else None}
                for g, v in self.verdicts
            ],
        }


# --- reading the host --------------------------------------------------------------------------


def _text(value: Union[str, bytes]) -> str:
    """nvidia-ml-py < 11.5 returns bytes, newer versions str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_nvml(nvml: ModuleType) -> tuple[Gpu, ...]:
    nvml.nvmlInit()
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                Gpu(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    compute=(int(major), int(minor)),
                    memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // (1 << 20),
                    driver=driver,
                )
            )
        return tuple(gpus)
    finally:
        nvml.nvmlShutdown()


def run_nvidia_smi(argv: Sequence[str]) -> str:
    """Run nvidia-smi and return stdout; raises FileNotFoundError when it is not installed."""
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=SMI_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout


def parse_nvidia_smi(csv_text: str) -> tuple[Gpu, ...]:
    """Parse `nvidia-smi --query-gpu=index,uuid,name,compute_cap,memory.total,driver_version
    --format=csv,noheader,nounits` output, one card per line."""
    gpus = []
    for row in csv.reader(io.StringIO(csv_text), skipinitialspace=True):
        if not row or not "".join(row).strip():
            continue
        if len(row) != len(SMI_QUERY):
            raise ValueError(f"unexpected nvidia-smi line {','.join(row)!r}")
        index, uuid, name, compute, memory, driver = (field.strip() for field in row)
        major, _, minor = compute.partition(".")
        gpus.append(
            Gpu(
                index=int(index),
                uuid=uuid,
                name=name,
                compute=(int(major), int(minor or 0)),
                memory_mib=int(memory) if memory.isdigit() else None,  # "[N/A]" on some cards
                driver=driver,
            )
        )
    return tuple(gpus)


def _first_line(text: str) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


def _read_smi(smi: SmiRunner, why_not_nvml: str) -> GpuInventory:
    try:
        gpus = parse_nvidia_smi(smi(SMI_ARGV))
    except FileNotFoundError:
        return GpuInventory((), "none", f"{why_not_nvml}, and nvidia-smi is not installed: no NVIDIA GPU on this host")
    except subprocess.CalledProcessError as err:
        detail = _first_line(err.stderr) or _first_line(err.stdout) or f"exit code {err.returncode}"
        return GpuInventory((), "none", f"{why_not_nvml}, and nvidia-smi failed: {detail}")
    except subprocess.TimeoutExpired:
        return GpuInventory((), "none", f"{why_not_nvml}, and nvidia-smi did not answer in {SMI_TIMEOUT_S} s")
    except (OSError, ValueError) as err:
        return GpuInventory((), "none", f"{why_not_nvml}, and nvidia-smi gave no usable answer: {err}")
    if not gpus:
        return GpuInventory((), "nvidia-smi", f"{why_not_nvml}; nvidia-smi lists no GPUs")
    return GpuInventory(gpus, "nvidia-smi", f"{why_not_nvml}; read with nvidia-smi")


def read_gpus(nvml: Optional[ModuleType] = None, smi: Optional[SmiRunner] = None) -> GpuInventory:
    """The host's NVIDIA GPUs. Never raises for a host without GPUs, driver or NVML.

    `nvml` is the pynvml module (injected by tests), `smi` runs nvidia-smi and returns stdout.
    """
    smi = smi or run_nvidia_smi
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            return _read_smi(smi, "nvidia-ml-py is not installed")
    try:
        gpus = _read_nvml(nvml)
    except nvml.NVMLError as err:
        # LibraryNotFound (no driver installed), DriverNotLoaded, NoPermission, ...: the CLI may
        # still work (e.g. a container with nvidia-smi but without libnvidia-ml on the path).
        kind = type(err).__name__.replace("NVMLError_", "")
        return _read_smi(smi, f"NVML unavailable ({kind}: {err})")
    if not gpus:
        return GpuInventory((), "nvml", "NVML answered but lists no GPUs")
    return GpuInventory(gpus, "nvml", "")


# --- judging -------------------------------------------------------------------------------------


def _native_cubin(compute: tuple[int, int], code: GpuCode) -> Optional[tuple[int, int]]:
    """The cubin a card runs natively: same major, minor at most the card's (newest such)."""
    fitting = [sm for sm in code.native_sm if sm[0] == compute[0] and sm[1] <= compute[1]]
    return max(fitting) if fitting else None


def _sm(cc: tuple[int, int]) -> str:
    return f"sm_{cc[0]}{cc[1]}"


def _native_elsewhere(compute: tuple[int, int]) -> list[str]:
    return [name for name, i in IMAGES.items() if _native_cubin(compute, i.gpu_code)]


def _code_verdict(gpu: Gpu, image: DfcImage) -> tuple[Basis, str, str]:
    """(basis, reason, advice) from the GPU code the image's TensorFlow carries for this card."""
    code, cc, tf = image.gpu_code, gpu.compute, f"TensorFlow {image.tensorflow}"
    cubin = _native_cubin(cc, code)
    if cubin:
        listed = "" if cc in DOCUMENTED_COMPUTE else " (not in Hailo's documented Pascal/Turing/Ampere list; the code is there)"
        return Basis.NATIVE, f"native: {tf} ships {_sm(cubin)} code, which runs on compute {gpu.compute_str}{listed}", ""
    others = [n for n in _native_elsewhere(cc) if n != image.name]
    elsewhere = f"The {', '.join(others)} image (another DFC release) runs it natively. " if others else ""
    if cc >= code.no_jit_from or cc < code.ptx and not cubin:
        why = code.no_jit_reason if cc >= code.no_jit_from else (
            f"its oldest code is {_sm(min(code.native_sm))} and its PTX (compute_{code.ptx[0]}{code.ptx[1]}) "
            "needs a newer card")
        return (Basis.UNSUPPORTED, f"unsupported: {tf} has no code that runs on compute {gpu.compute_str}: {why}",
                elsewhere + "Use an A100/A10/RTX 30xx-class card, or --cpu (hours).")
    jit = code.jit.summary() if code.jit else "size and time not measured"
    return (Basis.JIT,
            f"JIT: {tf} has no code for compute {gpu.compute_str}, only PTX (compute_{code.ptx[0]}{code.ptx[1]}); "
            f"the first start JIT-compiles its kernels: {jit}, then they come from the CUDA cache",
            elsewhere + "Allowed: the first start is slow once; later runs reuse the compiled kernels.")


def judge(gpu: Gpu, image: DfcImage) -> Verdict:
    """Apply `image`'s GPU policy (pipeline/dfc_images.py) to one card.

    Refused: a field report (known-bad name), a driver below `min_driver`, or no code in the
    image's TensorFlow that can run on the card (unsupported). Supported: native code, or PTX the
    driver JIT-compiles once (the verdict says how long).
    """
    reasons, advice, bases = [], [], []
    for bad in image.known_bad:
        if re.search(bad.name_pattern, gpu.name, flags=re.IGNORECASE):
            reasons.append(bad.reason)
            advice.append(bad.advice)
            bases.append(Basis.FIELD_REPORT)
    driver_major = gpu.driver_major
    if driver_major is not None and driver_major < image.min_driver:
        reasons.append(
            f"driver {gpu.driver} is older than {image.min_driver}, the minimum for this image (CUDA {image.cuda})"
        )
        advice.append(f"Update the NVIDIA driver to {image.min_driver} or newer.")
        bases.append(Basis.DRIVER)
    basis, reason, code_advice = _code_verdict(gpu, image)
    if basis is Basis.UNSUPPORTED:
        reasons.append(reason)
        advice.append(code_advice)
        bases.append(basis)
    if reasons:
        return Verdict(Status.REFUSED, "; ".join(reasons), " ".join(advice), bases[0])
    jit = image.gpu_code.jit if basis is Basis.JIT else None
    return Verdict(Status.SUPPORTED, reason, code_advice, basis, jit)


def parse_compute(compute: Union[str, float, tuple[int, int]]) -> tuple[int, int]:
    """'8.9' / 8.9 / (8, 9) -> (8, 9)."""
    if isinstance(compute, tuple):
        return int(compute[0]), int(compute[1])
    match = re.fullmatch(r"\s*(\d+)\.(\d)\s*", str(compute))
    if not match:
        raise ToolchainError(
            f"Compute capability {compute!r} is not of the form MAJOR.MINOR.",
            "Pass it like 8.9 (see `nvidia-smi --query-gpu=compute_cap --format=csv` or NVIDIA's CUDA GPUs list).",
        )
    return int(match.group(1)), int(match.group(2))


def check_card(name: str, compute, dfc_version: str, driver: Union[str, int, None] = None) -> tuple[Gpu, Verdict]:
    """Judge a card you don't have yet (e.g. before renting it) for the image DFC `dfc_version` uses.

    Without `driver`, the driver rule is not applied.
    """
    image = image_for_dfc(dfc_version)
    if not str(name).strip():
        raise ToolchainError("The GPU name is empty.", 'Pass the name NVML reports, e.g. --name "NVIDIA L4".')
    if driver is not None and not re.fullmatch(r"\d+(\.\d+)*", str(driver).strip()):
        raise ToolchainError(f"Driver version {driver!r} is not a version number.",
                             "Pass the NVIDIA driver version as nvidia-smi shows it, e.g. --driver 535 or "
                             "--driver 535.104.05, or leave --driver out.")
    gpu = Gpu(index=-1, uuid="", name=str(name).strip(), compute=parse_compute(compute),
              driver="" if driver is None else str(driver))
    return gpu, judge(gpu, image)


# --- choosing ------------------------------------------------------------------------------------


def choose_devices(
    inventory: GpuInventory, image: DfcImage, *, allow_gpu: bool = False, cpu: bool = False
) -> GpuChoice:
    """Which devices the DFC stages use.

    cpu: no GPU on purpose (warns that fine-tuning takes hours). Otherwise the supported cards;
    with none supported, `allow_gpu` takes the refused cards that have code to run (else all) with
    a loud warning, and without it the build is refused with every card's reason.
    """
    if cpu and allow_gpu:
        raise ToolchainError("--cpu and --allow-gpu contradict each other.", "Pass only one of them.")
    verdicts = tuple((g, judge(g, image)) for g in inventory.gpus)
    if cpu:
        return GpuChoice(
            mode="cpu",
            devices=(),
            warnings=(
                "--cpu: the DFC stages run on the CPU on purpose. Quantization-aware fine-tuning takes "
                f"hours ({CPU_FINETUNE_EPOCH_ESTIMATE} for the tiny encoder in the seed log).",
            ),
            verdicts=verdicts,
        )
    if not inventory.gpus:
        raise ToolchainError(
            f"No NVIDIA GPU found ({inventory.note}).",
            f"Build on a host with a GPU the {image.name} image runs natively (e.g. an A100), or pass "
            "--cpu to run the DFC stages on the CPU on purpose (fine-tuning takes hours).",
        )
    # Native cards first: a JIT card is used only when no card runs the image's code natively.
    supported = tuple(g for g, v in verdicts if v.supported and v.basis is Basis.NATIVE) or tuple(
        g for g, v in verdicts if v.supported)
    if supported:
        skipped = tuple(f"Not using {v.message(g, image)}" for g, v in verdicts if g not in supported)
        return GpuChoice(mode="gpu", devices=supported, warnings=skipped + jit_warnings(verdicts, supported, image),
                         verdicts=verdicts)
    if allow_gpu:
        # A card refused by report or driver may still run; one with no code for it cannot.
        chosen = tuple(g for g, v in verdicts if v.basis is not Basis.UNSUPPORTED) or tuple(inventory.gpus)
        warnings = tuple(
            f"--allow-gpu: USING {g.label} ANYWAY although it is {v.status.value} for the "
            f"{image.name} image: {v.reason}. The optimizer may hang or fail; the stage watchdog "
            "stops a stalled stage."
            for g, v in verdicts
            if g in chosen
        )
        return GpuChoice(mode="gpu", devices=chosen, warnings=warnings, verdicts=verdicts)
    advice = list(dict.fromkeys(v.advice for _, v in verdicts if v.advice))  # once each, in order
    raise ToolchainError(
        f"No supported GPU for the {image.name} image (TensorFlow {image.tensorflow}, CUDA {image.cuda}): "
        + "; ".join(f"{g.label} is {v.status.value}: {v.reason}" for g, v in verdicts)
        + ".",
        " ".join(advice),
    )


def jit_warnings(verdicts, chosen: tuple[Gpu, ...], image: DfcImage) -> tuple[str, ...]:
    """The one-time JIT warm-up, stated before the build starts, for each chosen JIT card."""
    return tuple(
        f"{g.label} needs a one-time JIT warm-up in the {image.name} image: {v.jit.summary() if v.jit else 'not measured'}. "
        f"The GPU hang probe allows up to {v.jit.ceiling_s / 60 if v.jit else 30:.0f} min while the GPU "
        "kernel cache grows; later runs reuse the compiled kernels."
        for g, v in verdicts
        if g in chosen and v.basis is Basis.JIT
    )
