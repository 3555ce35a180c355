"""`invoke doctor`: everything a build needs, checked at once, every blocker with its fix.

A build fails late and expensively (after renting a GPU, after building a 10 GB image), so the
doctor asks every question up front and lists every blocker together instead of stopping at the
first: the GPUs and the gate's decision, the driver, the Docker Engine, the NVIDIA container
runtime, the user's DFC wheel, free disk and memory. With `no_docker` the stages run natively, so
the Docker checks are informational and the installed `hailo_sdk_client` is checked instead.

Everything that touches the outside world comes in through `Probes`, so tests drive each branch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline.errors import ToolchainError
from pipeline.host.gpu import GpuChoice, GpuInventory, choose_devices, read_gpus
from pipeline.tables import IMAGES, DfcImage, DfcSeries, get_arch, image_for_dfc
from pipeline.host.vendor import DEFAULT_VENDOR_DIR, find_dfc_wheel, list_dfc_wheels

GIB = 1 << 30
# Free disk under the build directory. The dfc image (CUDA/cuDNN runtime + TensorFlow + DFC) is
# roughly 10 GB, the export image (CPU torch) a few GB, a build directory's ONNX/HARs/calibration
# sets 1-3 GB, and image builds need room for their layers; 30 GiB leaves margin. An estimate.
MIN_FREE_DISK_GIB = 30
# Available memory. The optimizer keeps TensorFlow, the model, the calibration set and the
# fine-tuning batches in RAM; 16 GiB is the usual minimum quoted for the DFC (not measured here).
MIN_AVAILABLE_MEMORY_GIB = 16
# docker-py waits this long for the Engine; a dead daemon must not stall the doctor.
DOCKER_TIMEOUT_S = 5

OK, WARN, BLOCKER, SKIPPED = "ok", "warn", "blocker", "skipped"


def _docker_client():
    # docker_engine is the one docker-py module; imported here so the gate works without docker-py.
    from pipeline.host.docker_engine import client_from_env

    return client_from_env(DOCKER_TIMEOUT_S)


def _available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable line")


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def _free_disk_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing_parent(path)).free


def _write_problem(path: Path) -> Optional[str]:
    """Why the build could not write `path` (read-only filesystem, no permission), or None.

    Asked before the free-space check: a read-only mount reports 0 bytes free, which would send
    the user hunting for disk space."""
    where = _existing_parent(path)
    if os.statvfs(where).f_flag & os.ST_RDONLY:
        return f"{where} is on a read-only filesystem"
    if not os.access(where, os.W_OK | os.X_OK):
        return f"{where} is not writable by this user (uid {os.getuid()})"
    return None


@dataclass(frozen=True)
class Probes:
    """The doctor's view of the outside world; tests replace any of these."""

    docker_client: Callable[[], Any] = _docker_client  # returns an object with .ping() and .info()
    read_gpus: Callable[[], GpuInventory] = read_gpus
    free_disk_bytes: Callable[[Path], int] = _free_disk_bytes
    write_problem: Callable[[Path], Optional[str]] = _write_problem
    available_memory_bytes: Callable[[], int] = _available_memory_bytes
    find_spec: Callable[[str], Any] = importlib.util.find_spec
    dist_version: Callable[[str], str] = importlib.metadata.version


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | blocker | skipped
    detail: str
    fix: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class DoctorReport:
    arch: str
    image: str
    mode: str  # "gpu" | "cpu"
    native: bool  # --no-docker
    checks: tuple[Check, ...]
    gpus: GpuInventory
    gpu_choice: Optional[GpuChoice] = None

    @property
    def blockers(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == BLOCKER)

    @property
    def ok(self) -> bool:
        return not self.blockers

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "arch": self.arch,
            "image": self.image,
            "mode": self.mode,
            "native": self.native,
            "gpus": {
                "source": self.gpus.source,
                "note": self.gpus.note,
                "cards": [g.to_json() for g in self.gpus.gpus],
            },
            "gpu_choice": self.gpu_choice.to_json() if self.gpu_choice else None,
            "checks": [c.to_json() for c in self.checks],
            "blockers": [c.to_json() for c in self.blockers],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def render(self, console=None) -> None:
        """Print the report as a rich table, blockers and their fixes last."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        style = {OK: "green", WARN: "yellow", BLOCKER: "bold red", SKIPPED: "dim"}
        where = "natively (--no-docker)" if self.native else "in Docker"
        table = Table(title=f"doctor: {self.arch} ({self.image} image), DFC stages on {self.mode.upper()} {where}")
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        table.add_column("fix", overflow="fold")
        for c in self.checks:
            table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail, c.fix)
        console.print(table)
        if self.ok:
            console.print("[green]No blockers: a build can start.[/]")
        else:
            console.print(f"[bold red]{len(self.blockers)} blocker(s):[/]")
            for c in self.blockers:
                console.print(f"  [red]✗ {c.name}[/]: {c.detail} [bold]Fix:[/] {c.fix}")


# --- the checks ----------------------------------------------------------------------------------


def _gpu_checks(inventory: GpuInventory, image, *, cpu: bool, allow_gpu: bool):
    checks = []
    if inventory.gpus:
        cards = "; ".join(
            f"{g.label}, {g.memory_mib if g.memory_mib is not None else '?'} MiB, {g.uuid or 'no UUID'}"
            for g in inventory.gpus
        )
        checks.append(Check("GPUs", OK, f"{cards} (read with {inventory.source})"))
        driver_majors = [g.driver_major for g in inventory.gpus if g.driver_major is not None]
        if driver_majors and min(driver_majors) < image.min_driver:
            checks.append(Check(
                "NVIDIA driver", SKIPPED if cpu else BLOCKER,
                f"{inventory.driver} is older than {image.min_driver}, the minimum for the {image.name} image.",
                f"Update the NVIDIA driver to {image.min_driver} or newer.",
            ))
        else:
            checks.append(Check("NVIDIA driver", OK, inventory.driver or "version not reported"))
    else:
        checks.append(Check("GPUs", OK if cpu else WARN, f"none: {inventory.note}"))

    try:
        choice = choose_devices(inventory, image, allow_gpu=allow_gpu, cpu=cpu)
    except ToolchainError as err:
        checks.append(Check("GPU gate", BLOCKER, err.problem, err.fix))
        return checks, None
    if choice.mode == "cpu":
        checks.append(Check("GPU gate", OK, "--cpu: the DFC stages run on the CPU"))
    else:
        used = ", ".join(f"{g.label} [{g.device_id}]" for g in choice.devices)
        checks.append(Check("GPU gate", OK, f"will use {used}"))
    checks.extend(Check("GPU gate warning", WARN, w) for w in choice.warnings)
    return checks, choice


def _docker_problem(err: Exception) -> tuple[str, str]:
    """(problem, fix) for a Docker Engine that does not answer, from docker-py's exception."""
    text = f"{err} {err.__cause__ or ''} {err.__context__ or ''}"
    if "PermissionError" in text or "Permission denied" in text:
        return (
            f"Permission denied on the Docker socket ({err}).",
            "Add your user to the docker group (sudo usermod -aG docker $USER, then log in again) "
            "or run as a user that may use Docker.",
        )
    if any(s in text for s in ("FileNotFoundError", "No such file", "Connection refused", "ConnectionRefused")):
        return (
            f"No Docker Engine answers ({err}).",
            "Start it (sudo systemctl start docker; install: https://docs.docker.com/engine/install/), "
            "or use --no-docker with the DFC wheel installed in this environment.",
        )
    return (
        f"The Docker Engine did not answer: {err}.",
        "Check that dockerd runs and DOCKER_HOST (if set) points at it; `docker info` shows the same problem.",
    )


def _docker_checks(docker_client: Callable[[], Any], *, native: bool, gpu_mode: bool):
    if native:
        return [
            Check("Docker Engine", SKIPPED, "--no-docker: the stages run in this environment"),
            Check("NVIDIA container runtime", SKIPPED, "--no-docker"),
        ]
    try:
        client = docker_client()
        client.ping()
        info = client.info()
    except ImportError as err:
        return [
            Check("Docker Engine", BLOCKER, f"docker-py is not installed ({err}).",
                  "Install the host extras: pip install -e '.[host]' (or `make venv`)."),
            Check("NVIDIA container runtime", SKIPPED, "cannot check without docker-py"),
        ]
    except Exception as err:  # docker-py raises DockerException, requests' errors, OSError
        problem, fix = _docker_problem(err)
        return [
            Check("Docker Engine", BLOCKER, problem, fix),
            Check("NVIDIA container runtime", SKIPPED, "cannot check: the Docker Engine does not answer"),
        ]
    checks = [Check("Docker Engine", OK, f"reachable, server {info.get('ServerVersion', '?')}")]
    runtimes = sorted(info.get("Runtimes") or {})
    if "nvidia" in runtimes:
        checks.append(Check("NVIDIA container runtime", OK, "nvidia runtime registered"))
    elif gpu_mode:
        checks.append(Check(
            "NVIDIA container runtime", BLOCKER,
            f"`docker info` lists no nvidia runtime (runtimes: {', '.join(runtimes) or 'none'}), so "
            "containers cannot use the GPU.",
            "Install the NVIDIA Container Toolkit, then `sudo nvidia-ctk runtime configure --runtime=docker` "
            "and `sudo systemctl restart docker`.",
        ))
    else:
        checks.append(Check(
            "NVIDIA container runtime", SKIPPED,
            f"not registered (runtimes: {', '.join(runtimes) or 'none'}); not needed with --cpu",
        ))
    return checks


def _wheel_check(image, vendor_dir: Path, *, native: bool) -> Check:
    try:
        wheel = find_dfc_wheel(image, vendor_dir)
    except ToolchainError as err:
        others = ""
        try:
            found = [w.path.name for w in list_dfc_wheels(vendor_dir)]
            others = f" Found: {', '.join(found)}." if found else ""
        except ToolchainError:
            pass
        # Natively the installed DFC is what runs; the wheel only matters for building an image.
        return Check("DFC wheel", WARN if native else BLOCKER, err.problem + others, err.fix)
    detail = (
        f"{wheel.path.name}: DFC {wheel.version}, major {wheel.major} matches {image.name}; "
        f"sha256 {wheel.sha256()}"
    )
    if wheel.is_test_double:
        return Check("DFC wheel", WARN, detail + ". This is the TEST DOUBLE: its HEFs are NOT DEPLOYABLE.",
                     "Put the real wheel from Hailo's Developer Zone in place of it for a real build.")
    return Check("DFC wheel", OK, detail)


def _native_dfc_check(image, probes: Probes) -> Check:
    # find_spec only locates the package; importing it would start TensorFlow (seconds, GPU probing).
    if probes.find_spec("hailo_sdk_client") is None:
        return Check(
            "hailo_sdk_client", BLOCKER,
            "--no-docker, but hailo_sdk_client is not installed in this environment.",
            f"pip install the DFC {image.dfc_major}.x wheel (hailo_dataflow_compiler-...whl) here, "
            "or drop --no-docker to use the container image.",
        )
    try:
        version = probes.dist_version("hailo_dataflow_compiler")
    except importlib.metadata.PackageNotFoundError:
        return Check("hailo_sdk_client", WARN, "importable, but its distribution version is unknown")
    if not version.split(".", 1)[0] == str(image.dfc_major):
        return Check(
            "hailo_sdk_client", BLOCKER,
            f"installed DFC {version} is not {image.dfc_major}.x, which the {image.name} image's archs need.",
            f"Install a DFC {image.dfc_major}.x wheel in this environment, or pick the matching --arch.",
        )
    return Check("hailo_sdk_client", OK, f"DFC {version} installed")


def _dfc_version(series: DfcSeries, vendor_dir: Path, probes: Probes, *, native: bool) -> tuple[Optional[str], str]:
    """(version, where from): natively the installed DFC, else (or failing that) the wheel."""
    if native and probes.find_spec("hailo_sdk_client") is not None:
        try:
            return probes.dist_version("hailo_dataflow_compiler"), "installed"
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        return find_dfc_wheel(series, vendor_dir).version, "wheel in vendor/"
    except ToolchainError:
        return None, ""


def _image_check(series: DfcSeries, vendor_dir: Path, probes: Probes, *, native: bool) -> tuple[Check, DfcImage]:
    """Which image the DFC version needs (the GPU gate judges for it), as a check."""
    version, source = _dfc_version(series, vendor_dir, probes, native=native)
    fallback = image_for_dfc(series.min_dfc_version)
    if version is None:
        return Check("DFC image", WARN, f"no DFC {series.dfc_major}.x version known yet; GPUs judged for the "
                     f"{fallback.name} image (DFC {series.min_dfc_version})"), fallback
    try:
        image = image_for_dfc(version)
    except ToolchainError as err:
        return Check("DFC image", BLOCKER, err.problem, err.fix), fallback
    return Check("DFC image", OK, f"DFC {version} ({source}) -> {image.name}: TensorFlow {image.tensorflow}, "
                 f"CUDA {image.cuda}, cuDNN {image.cudnn}"), image


def _minimum_check(name: str, read, minimum_gib: float, what: str, fix: str) -> Check:
    """ok/blocker for a resource with a minimum in GiB; a warning when it cannot be read."""
    try:
        value = read()
    except OSError as err:
        return Check(name, WARN, f"could not read the {name}: {err}")
    status = OK if value >= minimum_gib * GIB else BLOCKER
    return Check(name, status, f"{value / GIB:.1f} GiB {what} (need {minimum_gib:g} GiB)",
                 "" if status == OK else fix)


def _resource_checks(build_dir: Path, probes: Probes, min_free_disk_gib: float,
                     min_memory_gib: float) -> list[Check]:
    try:
        problem = probes.write_problem(build_dir)
    except OSError as err:
        problem = f"{build_dir} cannot be checked: {err}"
    if problem:
        disk = Check("build directory", BLOCKER, problem,
                     "Pass a build directory (--out / --build-dir) on a writable filesystem you own.")
    else:
        disk = _minimum_check("free disk", lambda: probes.free_disk_bytes(build_dir), min_free_disk_gib,
                              f"free under {build_dir}",
                              f"Free space or pass a build directory on a larger disk (need {min_free_disk_gib:g} "
                              "GiB; --min-free-gb lowers the minimum at your own risk).")
    return [
        disk,
        _minimum_check("memory", probes.available_memory_bytes, min_memory_gib, "available",
                       f"Use a host with at least {min_memory_gib:g} GiB available RAM or stop other work "
                       "(--min-memory-gb lowers the minimum at your own risk)."),
    ]


def run_doctor(
    arch: str = "hailo8l",
    *,
    vendor_dir: Path = DEFAULT_VENDOR_DIR,
    build_dir: Path = Path("build"),
    cpu: bool = False,
    allow_gpu: bool = False,
    no_docker: bool = False,
    probes: Probes = Probes(),
    min_free_disk_gib: float = MIN_FREE_DISK_GIB,
    min_memory_gib: float = MIN_AVAILABLE_MEMORY_GIB,
) -> DoctorReport:
    """Check everything a build for `arch` needs; never raises for a failing check.

    The resource minimums are a real DFC build's; a rehearsal with the test double passes its own."""
    series = get_arch(arch).dfc  # an unknown arch is a usage error, not a blocker: raises
    image_check, image = _image_check(series, Path(vendor_dir), probes, native=no_docker)
    inventory = probes.read_gpus()
    checks, choice = _gpu_checks(inventory, image, cpu=cpu, allow_gpu=allow_gpu)
    gpu_mode = not cpu
    checks += _docker_checks(probes.docker_client, native=no_docker, gpu_mode=gpu_mode)
    checks.append(_wheel_check(series, Path(vendor_dir), native=no_docker))
    checks.append(image_check)
    if no_docker:
        checks.append(_native_dfc_check(series, probes))
    checks += _resource_checks(Path(build_dir), probes, min_free_disk_gib, min_memory_gib)
    return DoctorReport(
        arch=arch,
        image=image.name,
        mode="cpu" if cpu else "gpu",
        native=no_docker,
        checks=tuple(checks),
        gpus=inventory,
        gpu_choice=choice,
    )
