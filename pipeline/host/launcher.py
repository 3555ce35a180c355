"""Run one stage (`python -m pipeline.<stage> ...`) in its container or natively, with the same
log tee and stall watchdog either way.

Host paths are bind-mounted at the same absolute paths inside the container, so a StageCommand's
argv is identical in both modes; native mode (`--no-docker`, e.g. a rented pod that is already a
container) only swaps "python" for the current interpreter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, TextIO

from pipeline.errors import ToolchainError
from pipeline.host.stage_log import StageLog
from pipeline.host.watchdog import StallWatchdog, default_stall_limit, directory_size
from pipeline.tables import IMAGES

STAGE_IMAGES = ("export", *IMAGES)
# CUDA's default JIT cache is 256 MiB; TF 2.12's kernels compiled for an H100 fill ~420 MB
# (../shared/reference/dfc-api.md), so a smaller cache would repeat the JIT on every start.
CUDA_CACHE_MAXSIZE = 4 * 1024**3


def default_jit_cache_root() -> Path:
    """Where the CUDA JIT caches live on the host, one folder per DFC image: kept across builds,
    because the first start of a JIT card compiles for minutes and every later one reuses it."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper-hailo" / "cuda-jit"
_PYTHON_NAMES = ("python", "python3")
# After a stop request, how long a process gets to exit on SIGTERM before SIGKILL.
STOP_GRACE_S = 10.0


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


def run_stage(
    cmd: StageCommand,
    *,
    native: bool,
    image_tag: Optional[str],
    console: Optional[TextIO] = None,
    docker_client=None,
) -> StageRun:
    """Run `cmd` to completion; raise ToolchainError (last log lines + log path) unless it exits 0.

    native: run with this interpreter as a subprocess; else in a container from `image_tag`
    (made by `pipeline.host.docker_engine.ensure_image`). `docker_client`: a docker.DockerClient to reuse.
    """
    result, stopped, tail = execute_stage(
        cmd, native=native, image_tag=image_tag, console=console, docker_client=docker_client
    )
    if stopped == "stall":
        raise ToolchainError(
            f"Stage {cmd.name} printed nothing{' and its GPU kernel cache did not grow' if cmd.jit_cache_dir else ''} "
            f"for {cmd.stall_limit_s:.0f} s and was stopped (stall watchdog). Last log lines:\n{tail}\n",
            f"Full log: {cmd.log_path}. If the stage is just slow, raise its stall limit "
            "(StageCommand.stall_timeout_s); if it hangs on a GPU, see the GPU advice from "
            "`invoke doctor` or run with --cpu.",
        )
    if result.exit_code != 0:
        raise ToolchainError(
            f"Stage {cmd.name} failed with exit code {result.exit_code}. Last log lines:\n{tail}\n",
            f"Full log: {cmd.log_path}.",
        )
    return result


def execute_stage(
    cmd: StageCommand,
    *,
    native: bool,
    image_tag: Optional[str],
    console: Optional[TextIO] = None,
    docker_client=None,
    deadline_s: Optional[float] = None,
    user: Optional[str] = None,
) -> tuple[StageRun, Optional[str], str]:
    """Run `cmd` without judging its exit code: (StageRun, stopped, log tail).

    stopped: None, "stall" (no output and no JIT cache growth for longer than the limit) or
    "deadline" (ran longer than deadline_s). `user` ("uid:gid") overrides the caller's ids for the container.
    """
    start = time.monotonic()
    with StageLog(cmd.log_path, console) as log:
        if native:
            exit_code, stopped, grew = _run_native(cmd, log, deadline_s)
        else:
            if not image_tag:
                raise ToolchainError(
                    f"Stage {cmd.name} needs an image tag in Docker mode.",
                    "Call pipeline.host.docker_engine.ensure_image() first, or run with --no-docker.",
                )
            from pipeline.host import docker_engine  # host side only: native mode needs no docker-py

            exit_code, stopped, grew = docker_engine.run_stage_container(
                cmd, image_tag, log, client=docker_client, deadline_s=deadline_s, user=user
            )
        if stopped:
            log.note(f"stopped: {stopped} (exit code {exit_code})")
    return StageRun(exit_code, time.monotonic() - start, cmd.log_path, grew), stopped, log.tail()


def check_native_dfc() -> str:
    """For --no-docker DFC stages: the DFC must import in this interpreter. Returns its location."""
    import importlib.util

    spec = importlib.util.find_spec("hailo_sdk_client")
    if spec is None:
        raise ToolchainError(
            f"--no-docker: hailo_sdk_client does not import in this Python ({sys.executable}).",
            "Install your DFC wheel into this environment (`pip install "
            "vendor/hailo_dataflow_compiler-<version>-py3-none-linux_x86_64.whl`), or run with Docker.",
        )
    return str(spec.origin)


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


def _run_native(cmd: StageCommand, log: StageLog, deadline_s: Optional[float]) -> tuple[int, Optional[str], bool]:
    env = {**os.environ, **stage_environment(cmd)}
    if cmd.jit_cache_dir is not None:
        env.update(CUDA_CACHE_PATH=str(cmd.jit_cache_dir), CUDA_CACHE_MAXSIZE=str(CUDA_CACHE_MAXSIZE))
    if cmd.gpu_device_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(cmd.gpu_device_ids)
    elif cmd.image != "export":
        env["CUDA_VISIBLE_DEVICES"] = ""  # --cpu: hide every GPU, as the container would
    log.note(f"native: {' '.join(native_argv(cmd.argv))}")
    proc = subprocess.Popen(
        native_argv(cmd.argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # own process group: a stop reaches the stage's children too
    )

    def stop() -> None:
        _stop_process_group(proc)

    try:
        with stage_watchdog(cmd, stop, log, deadline_s) as watchdog:
            reader = threading.Thread(target=_pump, args=(proc.stdout, log, watchdog), daemon=True)
            reader.start()
            while reader.is_alive():
                reader.join(0.5)
            exit_code = proc.wait()
    finally:
        if proc.poll() is None:  # Ctrl-C or an error in the launcher: leave nothing running
            _stop_process_group(proc)
    stopped = "deadline" if watchdog.timed_out else "stall" if watchdog.stalled else None
    return exit_code, stopped, watchdog.grew


def _pump(stream, log: StageLog, watchdog: StallWatchdog) -> None:
    fd = stream.fileno()
    while chunk := os.read(fd, 65536):
        watchdog.feed()
        log.write(chunk)


def _stop_process_group(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
