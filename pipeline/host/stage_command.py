"""What one stage run is: the command (`StageCommand`: image, argv, mounts, GPUs, environment) and
its result (`StageRun`). Shared by the native launcher (pipeline/host/launcher.py) and the
container runner (pipeline/host/docker_engine.py), which both import it and not each other.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

from pipeline.errors import ToolchainError
from pipeline.host.stage_log import StageLog
from pipeline.host.watchdog import StallWatchdog, default_stall_limit, directory_size
from pipeline.tables import STAGE_IMAGES

_PYTHON_NAMES = ("python", "python3")
# CUDA's default JIT cache is 256 MiB; TF 2.12's kernels compiled for an H100 fill ~420 MB
# (../shared/reference/dfc-api.md), so a smaller cache would repeat the JIT on every start.
CUDA_CACHE_MAXSIZE = 4 * 1024**3


def default_jit_cache_root() -> Path:
    """Where the CUDA JIT caches live on the host, one folder per DFC image: kept across builds,
    because the first start of a JIT card compiles for minutes and every later one reuses it."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper-hailo" / "cuda-jit"


@dataclass(frozen=True)
class StageCommand:
    """One stage invocation. Paths are absolute host paths (made absolute on construction)."""

    name: str  # e.g. "encoder-optimize"; names the container, labels it, picks the stall limit
    image: str  # "export" | a DFC image target ("dfc-cuda11", "dfc-cuda12")
    argv: tuple[str, ...]  # ("python", "-m", "pipeline.dfc.optimize", ...)
    build_dir: Path  # mounted read-write
    log_path: Path  # written by the host side: the container only prints
    read_only_paths: tuple[Path, ...] = ()  # model cache, inputs: mounted read-only
    gpu_device_ids: tuple[str, ...] = ()  # GPU UUIDs the gate chose; empty = no GPU
    env: Mapping[str, str] = field(default_factory=dict)  # e.g. HF_TOKEN, given at run time only
    stall_timeout_s: Optional[float] = None  # None: the stage kind's default (pipeline.host.watchdog)
    # Host folder for CUDA's JIT cache (DFC images): mounted / set as CUDA_CACHE_PATH, and its
    # growth counts as progress for the stall watchdog. None: Docker's named cache volume.
    jit_cache_dir: Optional[Path] = None
    jit_note: str = "compiling GPU kernels once; later runs reuse them"  # logged when the cache grows

    def __post_init__(self):
        if self.image not in STAGE_IMAGES:
            raise ToolchainError(
                f"Stage {self.name!r} names image {self.image!r}.",
                f"Use one of: {', '.join(STAGE_IMAGES)}.",
            )
        if not self.argv:
            raise ToolchainError(f"Stage {self.name!r} has an empty argv.", "Give the command to run.")
        object.__setattr__(self, "argv", tuple(str(a) for a in self.argv))
        object.__setattr__(self, "build_dir", Path(self.build_dir).absolute())
        object.__setattr__(self, "log_path", Path(self.log_path).absolute())
        object.__setattr__(self, "read_only_paths", tuple(Path(p).absolute() for p in self.read_only_paths))
        object.__setattr__(self, "gpu_device_ids", tuple(self.gpu_device_ids))
        if self.jit_cache_dir is not None:
            object.__setattr__(self, "jit_cache_dir", Path(self.jit_cache_dir).absolute())
        if self.image == "export" and self.gpu_device_ids:
            raise ToolchainError(
                f"Stage {self.name!r} asks for GPUs {', '.join(self.gpu_device_ids)} in the export image.",
                "Export and calibration run on CPU; pass no gpu_device_ids for them.",
            )

    @property
    def stall_limit_s(self) -> float:
        return default_stall_limit(self.name) if self.stall_timeout_s is None else float(self.stall_timeout_s)


@dataclass(frozen=True)
class StageRun:
    exit_code: int
    duration_s: float
    log_path: Path
    cache_grew: bool = False  # the JIT cache grew while it ran (it compiled GPU kernels)


def stage_watchdog(cmd: StageCommand, on_stall, log: StageLog, deadline_s: Optional[float]) -> StallWatchdog:
    """The watchdog for `cmd`: output, and growth of its JIT cache folder when it has one."""
    if cmd.jit_cache_dir is None:
        return StallWatchdog(cmd.stall_limit_s, on_stall, deadline_s=deadline_s)
    cache = cmd.jit_cache_dir
    cache.mkdir(parents=True, exist_ok=True)  # ours, so the container (our uid) can write it
    return StallWatchdog(cmd.stall_limit_s, on_stall, deadline_s=deadline_s,
                         progress=lambda: directory_size(cache),
                         on_growth=lambda: log.note(f"GPU kernel cache {cache} is growing: {cmd.jit_note}"))


def native_argv(argv: Sequence[str]) -> list[str]:
    """The stage argv with "python" replaced by this interpreter (the one that has our package)."""
    argv = list(argv)
    if argv and argv[0] in _PYTHON_NAMES:
        argv[0] = sys.executable
    return argv


def stage_environment(cmd: StageCommand) -> dict[str, str]:
    """Variables every stage gets on top of cmd.env, in both modes."""
    # Unbuffered output: the watchdog and the log must see progress as it happens.
    return {**cmd.env, "PYTHONUNBUFFERED": "1"}
