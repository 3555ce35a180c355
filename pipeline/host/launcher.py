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
from typing import Optional, TextIO

from pipeline.errors import ToolchainError
from pipeline.host.stage_command import (CUDA_CACHE_MAXSIZE, StageCommand, StageRun, native_argv, stage_environment,
                                         stage_watchdog)
from pipeline.host.stage_log import StageLog
from pipeline.host.stop_signals import parent_death_signal
from pipeline.host.watchdog import STOP_GRACE_S, StallWatchdog

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
            f"(`invoke build --stall-limit {cmd.name}=MINUTES`); if it hangs on a GPU, see the GPU "
            "advice from `invoke doctor` or run with --cpu.",
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
        preexec_fn=parent_death_signal(),  # a SIGKILLed or OOM-killed build takes its stage along
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
        if proc.poll() is None:  # Ctrl-C, SIGTERM/SIGHUP or an error in the launcher: leave nothing running
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
