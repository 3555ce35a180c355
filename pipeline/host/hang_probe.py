"""GPU hang probe: a short TensorFlow computation on /GPU:0 in the DFC image, before the build.

The field report: on an L4 the DFC's optimizer hangs forever, while an A100 works. The DFC runs
on TensorFlow, so a TF matmul on the chosen card, in the very image and driver stack the DFC
will use, shows most such problems within minutes instead of hours into a build. Run it once per
build before the first DFC stage on GPU.

A slow first start is not a hang: a TensorFlow 2.12 image on an H100 JIT-compiles its kernels
from PTX for ~13 minutes without printing a line (../shared/reference/dfc-api.md). So progress is
console output OR growth of the CUDA JIT cache folder; only neither for `timeout_s` is a hang.
A probe whose cache keeps growing runs on up to `ceiling_s` (from the image table's JIT estimate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

from pipeline.errors import ToolchainError
from pipeline.host.launcher import execute_stage
from pipeline.host.stage_command import StageCommand

# TF start-up on a card with native code takes tens of seconds; two minutes with no output and
# no JIT cache growth means something is wrong.
DEFAULT_HANG_PROBE_TIMEOUT_S = 120.0
# Total limit for a card the gate expects to run natively (a little JIT of generated kernels may
# still happen); a JIT card gets its image's ceiling (JitEstimate.ceiling_s, 30 min for TF 2.12).
DEFAULT_PROBE_CEILING_S = 10 * 60.0

PROBE_SCRIPT = """\
import sys
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
if not gpus:
    print("hang probe: TensorFlow sees no GPU", flush=True)
    sys.exit(3)
with tf.device("/GPU:0"):
    a = tf.random.stateless_normal([2048, 2048], seed=[1, 2])
    total = float(tf.reduce_sum(tf.linalg.matmul(a, a)))
print(f"hang probe: matmul on {gpus[0].name} finished (sum {total:.1f})", flush=True)
"""
PROBE_ARGV = ("python", "-c", PROBE_SCRIPT)
NO_GPU_EXIT_CODE = 3


@dataclass(frozen=True)
class HangProbe:
    """What to probe and how long to wait. `argv` is injectable (tests run one that hangs)."""

    image: str  # the DFC image target the stages will use, e.g. "dfc-cuda11"
    gpu_device_ids: tuple[str, ...]  # the UUIDs the gate chose (empty: no GPU request; tests only)
    gpu_name: str  # e.g. "NVIDIA L4", for the message
    advice: str  # the gate's advice for this card, shown on a hang
    build_dir: Path
    log_path: Path
    timeout_s: float = DEFAULT_HANG_PROBE_TIMEOUT_S  # no output and no cache growth: a hang
    argv: tuple[str, ...] = PROBE_ARGV
    ceiling_s: float = DEFAULT_PROBE_CEILING_S  # total, even while the cache grows
    jit_cache_dir: Optional[Path] = None  # host folder of the CUDA JIT cache the stages share
    jit_expected: str = ""  # the gate's JIT estimate for this card ("" when it runs natively)

    @property
    def compiling_note(self) -> str:
        return f"compiling GPU kernels for {self.gpu_name} once; later runs reuse them"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run_hang_probe(
    probe: HangProbe,
    *,
    native: bool,
    image_tag: Optional[str],
    console: Optional[TextIO] = None,
    docker_client=None,
) -> float:
    """Run the probe; return its duration in seconds or raise ToolchainError.

    Stopped when it neither prints nor grows the JIT cache for `timeout_s` (a hang), or when it
    runs longer than `ceiling_s` in total; the error says which, with the gate's advice.
    """
    cmd = StageCommand(
        name=f"{probe.image}-gpu-hang-probe",
        image=probe.image,
        argv=probe.argv,
        build_dir=probe.build_dir,
        log_path=probe.log_path,
        gpu_device_ids=probe.gpu_device_ids,
        stall_timeout_s=probe.timeout_s,
        jit_cache_dir=probe.jit_cache_dir,
        jit_note=probe.compiling_note,
    )
    if probe.jit_expected and console is not None:
        console.write(f"[whisper-hailo] hang probe: {probe.gpu_name} has no native code in the {probe.image} "
                      f"image: {probe.jit_expected}; {probe.compiling_note}. Allowing up to "
                      f"{_duration(probe.ceiling_s)} while the GPU kernel cache grows.\n")
    run, stopped, tail = execute_stage(
        cmd, native=native, image_tag=image_tag, console=console,
        docker_client=docker_client, deadline_s=probe.ceiling_s,
    )
    if stopped == "stall":
        watched = " and its GPU kernel cache did not grow" if probe.jit_cache_dir else ""
        raise ToolchainError(
            f"{probe.gpu_name}: the GPU probe (a short TensorFlow matmul) printed nothing{watched} for "
            f"{probe.timeout_s:.0f} s in the {probe.image} image: a hang, not kernel compilation. The DFC "
            f"would most likely hang on this card for hours. Probe log: {probe.log_path}.",
            probe.advice or "Use a GPU the image runs natively (A100/A10/RTX 30xx) or build with --cpu.",
        )
    if stopped == "deadline":
        if run.cache_grew:
            raise ToolchainError(
                f"{probe.gpu_name}: the GPU probe was still compiling GPU kernels (its cache kept growing) "
                f"after {_duration(probe.ceiling_s)}, the ceiling for the {probe.image} image. "
                f"Probe log: {probe.log_path}.",
                "Run the build again: what was compiled stays in the cache, so the next start goes on "
                "from there. Or use a card the image runs natively (`invoke gpu-check`).",
            )
        raise ToolchainError(
            f"{probe.gpu_name}: a short TensorFlow matmul on the GPU did not finish within "
            f"{probe.ceiling_s:.0f} s in the {probe.image} image, so the DFC would most likely hang "
            f"on this card for hours. Probe log: {probe.log_path}.",
            probe.advice or "Use a GPU the image runs natively (A100/A10/RTX 30xx) or build with --cpu.",
        )
    if run.exit_code == NO_GPU_EXIT_CODE:
        raise ToolchainError(
            f"TensorFlow in the {probe.image} image sees no GPU although {probe.gpu_name} was "
            f"given to it. Last lines:\n{tail}\n",
            "Check the NVIDIA driver and Container Toolkit (`nvidia-smi`, `docker run --gpus all "
            "... nvidia-smi`), or build with --cpu.",
        )
    if run.exit_code != 0:
        raise ToolchainError(
            f"The GPU probe failed on {probe.gpu_name} (exit code {run.exit_code}). Last lines:\n{tail}\n",
            f"Full log: {probe.log_path}. Fix the GPU setup or build with --cpu.",
        )
    return run.duration_s
