"""The one module that talks to Docker (docker-py): build the toolchain images and run stage
containers.

Images are tagged with a hash of everything that goes into them (Dockerfile, docker/, the stage
modules of pipeline/ and calib/, the DFC wheel's sha256, the wheelhouse listing, the build
arguments), so `ensure_image`
skips the build when an image with that tag exists. Stage containers get the host paths at the
same absolute paths, the caller's uid:gid, the GPUs the gate chose and a label per stage; they
are always removed, also on Ctrl-C and when the stall watchdog stops them. Which target and base
an image build uses is decided without Docker in pipeline/host/image_plan.py.

The build context and image tags (no Docker) are in pipeline/host/image_context.py.
"""

from __future__ import annotations

import contextlib
import os
import sys
import socket
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, TextIO

import docker
import docker.errors
from docker.types import DeviceRequest, Mount

from pipeline.errors import ToolchainError
from pipeline.host.build_lock import LOCK_NAME, pid_is_running
from pipeline.host.base_pins import LOCK_PATH, OVERRIDE, pin_base
from pipeline.host.stage_command import CUDA_CACHE_MAXSIZE, StageCommand, stage_environment, stage_watchdog
from pipeline.host.stage_log import StageLog
from pipeline.host.image_context import (  # noqa: F401  (re-exported for callers and tests)
    CONTEXT_PATHS,
    IMAGE_REPOSITORY,
    _write_context,
    _wheelhouse_files,
    build_args_for,
    image_tag,
    inputs_hash,
)
from pipeline.host.image_plan import (  # noqa: F401  (re-exported: callers plan through this module)
    EXPORT_BASE_DIGEST,
    EXPORT_BASE_IMAGE,
    KINDS,
    ImagePlan,
    plan_image,
)
from pipeline.host.vendor import DEFAULT_VENDOR_DIR
from pipeline.host.watchdog import STOP_GRACE_S, StallWatchdog
from pipeline.layout import REPO_ROOT
from pipeline.tables import IMAGES

LABEL_STAGE = "whisper-hailo.stage"
LABEL_BUILD_DIR = "whisper-hailo.build-dir"
LABEL_INPUTS = "whisper-hailo.inputs"
# The build that started a stage container ("pid@host") and the lock it held: a build SIGKILLed
# or OOM-killed cannot stop its container, so the next build in that folder does (before locking).
LABEL_OWNER = "whisper-hailo.owner"
LABEL_LOCK = "whisper-hailo.lock"

# CUDA's JIT cache in DFC containers: the first run on a card without native code JIT-compiles PTX
# (minutes); later containers reuse it. A host folder per image when the StageCommand names one
# (its growth is watched), else this named volume. Size limit: launcher.CUDA_CACHE_MAXSIZE.
CUDA_CACHE_VOLUME = "whisper-hailo-cuda-cache"
CUDA_CACHE_DIR = "/var/cache/whisper-hailo/cuda"

BUILD_LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class ImageRef:
    tag: str
    id: str
    target: str = ""  # the Dockerfile target it was built from


# --- connecting ------------------------------------------------------------------------------


def client_from_env(timeout_s: float) -> docker.DockerClient:
    """A docker-py client for DOCKER_HOST or the default socket, not pinged yet (the doctor probes it)."""
    return docker.from_env(timeout=timeout_s)


def connect(base_url: Optional[str] = None) -> docker.DockerClient:
    """A docker-py client that has answered a ping; clear errors when the daemon can't be used.

    base_url: e.g. "unix:///var/run/docker.sock"; None uses DOCKER_HOST or the default socket.
    """
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as err:
        raise explain_connection_error(err, base_url or os.environ.get("DOCKER_HOST", "")) from None
    except OSError as err:
        raise explain_connection_error(err, base_url or "") from None


def registry_digest(client: docker.DockerClient, tag: str) -> str:
    """The registry's digest for `tag` (its multi-arch index), asked through the Docker Engine."""
    fix = (f"On a host without registry access pass --base-image with a local copy of {tag} "
           "(`docker save` / `docker load`); or run `invoke image --repin` where the registry is reachable "
           "and commit docker/images.lock.")
    try:
        return client.images.get_registry_data(tag).id
    except docker.errors.NotFound as err:
        raise ToolchainError(f"The registry does not know {tag} ({_first_line(str(err.explanation or err))}).",
                             "Check the tag in pipeline/dfc_images.py, or pass --base-image.") from None
    except (docker.errors.DockerException, OSError) as err:  # APIError, timeouts, connection errors
        text = str(getattr(err, "explanation", None) or err)
        raise ToolchainError(f"The registry did not answer for {tag} ({_first_line(text)}).", fix) from None


def explain_connection_error(err: BaseException, where: str) -> ToolchainError:
    text = str(err)
    where = where or "unix:///var/run/docker.sock"
    if "Permission denied" in text or isinstance(err, PermissionError):
        return ToolchainError(
            f"Permission denied on the Docker socket ({where}).",
            "Add yourself to the docker group (`sudo usermod -aG docker $USER`, then log in again) "
            "or run with sudo; on a pod without Docker use --no-docker.",
        )
    return ToolchainError(
        f"No Docker daemon answers at {where} ({_first_line(text)}).",
        "Start Docker (`sudo systemctl start docker`) or point DOCKER_HOST at it; on a machine "
        "without Docker (e.g. a pod that is already a container) run with --no-docker.",
    )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "no details"


# --- building --------------------------------------------------------------------------------


def ensure_image(
    kind: str,
    *,
    base_image: Optional[str] = None,
    wheelhouse: Optional[Path] = None,
    vendor_dir: Path = DEFAULT_VENDOR_DIR,
    dfc_wheel_sha256: Optional[str] = None,
    repo_root: Path = REPO_ROOT,
    log_dir: Optional[Path] = None,
    console: Optional[TextIO] = None,
    client: Optional[docker.DockerClient] = None,
    lock_path: Path = LOCK_PATH,
    repin: bool = False,
) -> ImageRef:
    """The image for `kind` ("export", "dfc3", "dfc5"), built unless one with its content tag exists.

    A DFC kind builds the Dockerfile target the wheel's version needs (plan_image). base_image:
    override the pinned base (e.g. a locally imported one); an unpinned base is pinned on first use
    through the registry (base_pins.pin_base), `repin` asks again. wheelhouse: a folder of wheels
    for an offline build; vendor_dir: where the user's DFC wheel is (checked before anything is
    sent to Docker); dfc_wheel_sha256: expected hash, checked on the host and again inside the
    build. The build log goes to <log_dir>/image-<target>.log (default: <repo_root>/build/images).
    """
    plan = plan_image(kind, vendor_dir=vendor_dir, base_image=base_image, lock_path=lock_path,
                      dfc_wheel_sha256=dfc_wheel_sha256)
    wheel = plan.wheel
    wheel_sha256 = ""
    if wheel is not None:
        wheel_sha256 = dfc_wheel_sha256.lower() if dfc_wheel_sha256 else wheel.sha256()
    wheels = _wheelhouse_files(wheelhouse)
    base = plan.base
    if base.source != OVERRIDE and (repin or not base.pinned):
        client = client or connect()
        table_digest = EXPORT_BASE_DIGEST if plan.target == "export" else IMAGES[plan.target].base_image_digest
        base = pin_base(base.tag, table_digest, resolve=lambda tag: registry_digest(client, tag),
                        lock_path=lock_path, repin=repin, console=console or sys.stderr)
    build_args = build_args_for(plan.target, base.ref, wheel, wheel_sha256)
    digest = inputs_hash(plan.target, build_args, repo_root, wheels)
    tag = image_tag(plan.target, digest)
    client = client or connect()
    with contextlib.suppress(docker.errors.ImageNotFound):
        return ImageRef(tag, client.images.get(tag).id, plan.target)
    log_path = Path(log_dir or repo_root / "build" / "images") / f"image-{plan.target}.log"
    with tempfile.TemporaryFile(prefix="whisper-hailo-context-") as context:
        _write_context(context, repo_root, wheel, wheels)
        context.seek(0)
        image_id = build_image(client, context, plan.target, tag, build_args, {LABEL_INPUTS: digest}, log_path,
                               console)
    return ImageRef(tag, image_id, plan.target)


def build_image(
    client: docker.DockerClient,
    context,
    target: str,
    tag: str,
    build_args: dict,
    labels: dict,
    log_path: Path,
    console: Optional[TextIO] = None,
) -> str:
    """Build `target` from a tar context file object; stream the output; return the image id."""
    with StageLog(log_path, console) as log:
        log.note(f"building {tag} (target {target}, base {build_args['BASE_IMAGE']})")
        error = None
        try:
            for event in client.api.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                target=target,
                buildargs=build_args,
                labels=labels,
                rm=True,
                forcerm=True,  # remove intermediate containers even when a step fails
                pull=False,
                decode=True,
            ):
                if "stream" in event:
                    log.write(event["stream"])
                elif "status" in event:
                    log.write(f"{event['status']} {event.get('progress', '')}\n")
                if "error" in event:
                    error = event.get("errorDetail", {}).get("message") or event["error"]
                    log.write(f"ERROR: {error}\n")
        except docker.errors.APIError as err:
            error = str(err.explanation or err)
            log.write(f"ERROR: {error}\n")
        tail = log.tail()
    if error:
        raise _build_error(target, tag, build_args["BASE_IMAGE"], error, tail, log_path)
    return client.images.get(tag).id


def _build_error(target, tag, base, error, tail, log_path) -> ToolchainError:
    lowered = error.lower()
    last_lines = "\n".join(tail.splitlines()[-BUILD_LOG_TAIL_LINES:])
    if "no space left on device" in lowered:
        return _out_of_disk(f"Building {tag}")
    if any(s in lowered for s in ("pull access denied", "manifest unknown", "no such host",
                                  "dial tcp", "repository does not exist", "not found: manifest")):
        return ToolchainError(
            f"The base image {base} of the {target} image is not on this machine and could not be "
            f"pulled ({_first_line(error)}).",
            f"Pull it where a registry is reachable (`docker pull {base}`), move it with "
            "`docker save | docker load`, or pass --base-image with a local image.",
        )
    return ToolchainError(
        f"Building the {target} image failed: {_first_line(error)}\nLast build log lines:\n{last_lines}\n",
        f"Full build log: {log_path}.",
    )


def _out_of_disk(doing: str) -> ToolchainError:
    return ToolchainError(
        f"{doing} failed: no space left on device (Docker's data root, usually /var/lib/docker).",
        "Free space: `docker system df`, `docker image prune` / `docker builder prune`, or move "
        "Docker's data-root to a bigger disk; then run again.",
    )


# --- running stage containers ----------------------------------------------------------------


def stage_mounts(build_dir: Path, read_only_paths: Iterable[Path], *, cuda_cache: bool,
                 jit_cache_dir: Optional[Path] = None) -> list[Mount]:
    """Bind mounts at the same absolute paths (build dir rw, inputs ro), outer paths first; with
    cuda_cache the CUDA JIT cache at CUDA_CACHE_DIR: the host folder jit_cache_dir (its growth
    is watched) or else the named volume."""
    build_dir = Path(build_dir).absolute()
    build_dir.mkdir(parents=True, exist_ok=True)  # else dockerd creates it, owned by root
    binds = {build_dir: False}
    for path in read_only_paths:
        path = Path(path).absolute()
        if not path.exists():
            raise ToolchainError(f"Input path {path} does not exist.", "Create it or fix the path you passed.")
        binds.setdefault(path, True)
    mounts = [
        Mount(target=str(p), source=str(p), type="bind", read_only=ro)
        for p, ro in sorted(binds.items(), key=lambda item: len(item[0].parts))
    ]
    if cuda_cache and jit_cache_dir is not None:
        jit_cache_dir = Path(jit_cache_dir).absolute()
        jit_cache_dir.mkdir(parents=True, exist_ok=True)  # ours: else dockerd refuses or makes it root's
        mounts.append(Mount(target=CUDA_CACHE_DIR, source=str(jit_cache_dir), type="bind"))
    elif cuda_cache:
        mounts.append(Mount(target=CUDA_CACHE_DIR, source=CUDA_CACHE_VOLUME, type="volume"))
    return mounts


def gpu_requests(device_ids: Iterable[str]) -> list[DeviceRequest]:
    ids = list(device_ids)
    return [DeviceRequest(driver="nvidia", device_ids=ids, capabilities=[["gpu"]])] if ids else []


def run_stage_container(
    cmd: StageCommand,
    image_tag: str,
    log: StageLog,
    *,
    client: Optional[docker.DockerClient] = None,
    deadline_s: Optional[float] = None,
    user: Optional[str] = None,
) -> tuple[int, Optional[str], bool]:
    """Run a StageCommand in a container from `image_tag`; stream its output into `log`.

    Returns (exit code, stopped, cache grew) with stopped None, "stall" or "deadline". The container is
    removed in every case (exit, error, watchdog stop, KeyboardInterrupt).
    user: "uid:gid" to run as; default the caller's own ids, so outputs are not root-owned.
    """
    client = client or connect()
    is_dfc = cmd.image != "export"
    env = stage_environment(cmd)
    env.setdefault("HOME", "/tmp")  # the caller's uid has no home directory in the image
    if is_dfc:
        env.update(CUDA_CACHE_PATH=CUDA_CACHE_DIR, CUDA_CACHE_MAXSIZE=str(CUDA_CACHE_MAXSIZE))
        if IMAGES[cmd.image].lazy_module_loading:
            # Load (and JIT-compile) a kernel module when first used instead of all at context
            # creation; CUDA >= 11.7. Effect on the DFC not measured (no DFC or TF on a GPU here).
            env.setdefault("CUDA_MODULE_LOADING", "LAZY")
    labels = {LABEL_STAGE: cmd.name, LABEL_BUILD_DIR: str(cmd.build_dir),
              LABEL_OWNER: f"{os.getpid()}@{socket.gethostname()}", LABEL_LOCK: str(cmd.build_dir / LOCK_NAME)}
    name = f"whisper-hailo-{_safe_name(cmd.name)}-{uuid.uuid4().hex[:8]}"
    devices = gpu_requests(cmd.gpu_device_ids) if is_dfc else []
    log.note(f"container {name} from {image_tag}: {' '.join(cmd.argv)}"
             + (f" (GPUs {', '.join(cmd.gpu_device_ids)})" if devices else " (no GPU)"))
    container = None
    try:
        container = client.containers.create(
            image_tag,
            command=list(cmd.argv),
            name=name,
            user=user or f"{os.getuid()}:{os.getgid()}",
            environment=env,
            labels=labels,
            mounts=stage_mounts(cmd.build_dir, cmd.read_only_paths, cuda_cache=is_dfc,
                                jit_cache_dir=cmd.jit_cache_dir),
            device_requests=devices or None,
            working_dir=str(cmd.build_dir),
            init=True,  # docker-init forwards signals and reaps the DFC's worker processes
            detach=True,
        )
        container.start()
        with stage_watchdog(cmd, lambda: _stop(container), log, deadline_s) as watchdog:
            reader = threading.Thread(target=_pump_logs, args=(container, log, watchdog), daemon=True)
            reader.start()
            while reader.is_alive():
                reader.join(0.5)
            exit_code = int(container.wait()["StatusCode"])
        stopped = "deadline" if watchdog.timed_out else "stall" if watchdog.stalled else None
        return exit_code, stopped, watchdog.grew
    except docker.errors.ImageNotFound:
        raise ToolchainError(
            f"Image {image_tag} is not on this machine.",
            "Build it: `invoke image --target dfc3|dfc5|export` (pipeline.host.docker_engine.ensure_image).",
        ) from None
    except docker.errors.APIError as err:
        raise _run_error(err, cmd) from None
    except BaseException:  # Ctrl-C, SIGTERM/SIGHUP (BuildStopped): SIGTERM first, SIGKILL after the grace
        if container is not None:
            _stop(container)
        raise
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)


def _pump_logs(container, log: StageLog, watchdog: StallWatchdog) -> None:
    with contextlib.suppress(docker.errors.APIError, docker.errors.NotFound, OSError):
        for chunk in container.logs(stream=True, follow=True):
            watchdog.feed()
            log.write(chunk)


def _stop(container) -> None:
    with contextlib.suppress(docker.errors.APIError, docker.errors.NotFound):
        container.stop(timeout=STOP_GRACE_S)


def _run_error(err: docker.errors.APIError, cmd) -> ToolchainError:
    text = str(err.explanation or err)
    lowered = text.lower()
    if "could not select device driver" in lowered or "nvidia-container" in lowered or (
        "unknown runtime" in lowered and "nvidia" in lowered
    ):
        return ToolchainError(
            f"Docker cannot give GPUs {', '.join(cmd.gpu_device_ids)} to stage {cmd.name}: "
            f"no NVIDIA container runtime ({_first_line(text)}).",
            "Install the NVIDIA Container Toolkit (`nvidia-ctk runtime configure --runtime=docker`, "
            "then restart Docker), or run this stage with --cpu.",
        )
    if "no space left on device" in lowered:
        return _out_of_disk(f"Starting stage {cmd.name}")
    return ToolchainError(f"Docker refused to run stage {cmd.name}: {_first_line(text)}", "See `docker info`.")


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:60]


def stage_containers(client: docker.DockerClient, stage_name: Optional[str] = None) -> list:
    """Containers (running or not) that carry our stage label, optionally for one stage."""
    label = f"{LABEL_STAGE}={stage_name}" if stage_name else LABEL_STAGE
    return client.containers.list(all=True, filters={"label": label})


def stop_orphan_containers(client: docker.DockerClient, build_dir: Path,
                           is_running=pid_is_running) -> list[str]:
    """Stop and remove the stage containers of `build_dir` whose build is gone (SIGKILL, OOM, a
    crash): their owner pid no longer runs on this host. Returns their names.

    Containers of a live build are left alone (its lock refuses the new build), as are those
    started from another host, whose pid means nothing here.
    """
    found = client.containers.list(all=True, filters={"label": f"{LABEL_BUILD_DIR}={Path(build_dir).absolute()}"})
    stopped = []
    for container in found:
        pid, _, host = container.labels.get(LABEL_OWNER, "").partition("@")
        if host != socket.gethostname() or not pid.isdigit() or is_running(int(pid)):
            continue
        _stop(container)
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)
        stopped.append(f"{container.name} ({container.labels.get(LABEL_STAGE, 'stage')})")
    return stopped
