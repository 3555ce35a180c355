"""GPU hang probe: a short TensorFlow computation on /GPU:0 in the DFC image, under a timeout.

The field report: on an L4 the DFC's optimizer hangs forever, while an A100 works. The DFC runs
on TensorFlow, so a TF matmul on the chosen card, in the very image and driver stack the DFC
will use, shows most such problems within a minute or two instead of hours into a build. Run it
once per build before the first DFC stage on GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

from pipeline.errors import ToolchainError
from pipeline.host.launcher import execute_stage
from pipeline.host.stage_command import StageCommand

# TF start-up plus a first JIT of its kernels for a new card (cached on the CUDA cache volume
# afterwards) takes tens of seconds on a healthy A100; two minutes means something is wrong.
DEFAULT_HANG_PROBE_TIMEOUT_S = 120.0

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

    image: str  # "dfc3" | "dfc5": the image the DFC stages will use
    gpu_device_ids: tuple[str, ...]  # the UUIDs the gate chose (empty: no GPU request; tests only)
    gpu_name: str  # e.g. "NVIDIA L4", for the message
    advice: str  # the gate's advice for this card, shown on a hang
    build_dir: Path
    log_path: Path
    timeout_s: float = DEFAULT_HANG_PROBE_TIMEOUT_S
    argv: tuple[str, ...] = PROBE_ARGV


def run_hang_probe(
    probe: HangProbe,
    *,
    native: bool,
    image_tag: Optional[str],
    console: Optional[TextIO] = None,
    docker_client=None,
) -> float:
    """Run the probe; return its duration in seconds or raise ToolchainError.

    A probe still running after `timeout_s` is stopped (its container removed) and reported with
    the card's name and the gate's advice.
    """
    cmd = StageCommand(
        name=f"{probe.image}-gpu-hang-probe",
        image=probe.image,
        argv=probe.argv,
        build_dir=probe.build_dir,
        log_path=probe.log_path,
        gpu_device_ids=probe.gpu_device_ids,
        stall_timeout_s=probe.timeout_s,
    )
    run, stopped, tail = execute_stage(
        cmd, native=native, image_tag=image_tag, console=console,
        docker_client=docker_client, deadline_s=probe.timeout_s,
    )
    if stopped:
        raise ToolchainError(
            f"{probe.gpu_name}: a short TensorFlow matmul on the GPU did not finish within "
            f"{probe.timeout_s:.0f} s in the {probe.image} image, so the DFC would most likely hang "
            f"on this card for hours. Probe log: {probe.log_path}.",
            probe.advice or "Use a documented GPU (A100/A10/RTX 30xx) or build with --cpu.",
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
