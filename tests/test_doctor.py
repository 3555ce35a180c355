"""`invoke doctor`: every blocker at once, with its fix, driven through injected probes."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import docker.errors
import pytest
from rich.console import Console

from pipeline.host.doctor import (
    BLOCKER,
    GIB,
    MIN_AVAILABLE_MEMORY_GIB,
    MIN_FREE_DISK_GIB,
    OK,
    SKIPPED,
    WARN,
    Probes,
    run_doctor,
)
from pipeline.files import sha256_file
from pipeline.host.gpu import Gpu, GpuInventory

REPO = Path(__file__).resolve().parents[1]
WHEEL3 = "hailo_dataflow_compiler-3.31.0-py3-none-linux_x86_64.whl"
WHEEL5 = "hailo_dataflow_compiler-5.0.0-py3-none-linux_x86_64.whl"
A100 = Gpu(0, "GPU-4b7e1c2a-0d39-6c55-a1f0-9c1d2e3f4a50", "NVIDIA A100-SXM4-80GB", (8, 0), 81920, "535.104.05")
L4 = Gpu(1, "GPU-1d4c0ffe-aaaa-bbbb-cccc-ddddeeeeffff", "NVIDIA L4", (8, 9), 23034, "535.104.05")
# What read_gpus() answers on this machine (no driver, no nvidia-smi).
NO_GPU = GpuInventory(
    (), "none",
    "NVML unavailable (LibraryNotFound: NVML Shared Library Not Found), and nvidia-smi is not "
    "installed: no NVIDIA GPU on this host",
)
# docker-py's exceptions as recorded here (no socket) and as it words a socket we may not open.
NO_DAEMON = docker.errors.DockerException(
    "Error while fetching server API version: ('Connection aborted.', "
    "FileNotFoundError(2, 'No such file or directory'))"
)
NO_PERMISSION = docker.errors.DockerException(
    "Error while fetching server API version: ('Connection aborted.', "
    "PermissionError(13, 'Permission denied'))"
)


class FakeDocker:
    """A docker-py client's ping()/info() with recorded answers; counts calls."""

    def __init__(self, runtimes=("io.containerd.runc.v2", "runc")):
        self.runtimes = runtimes
        self.pings = 0

    def ping(self):
        self.pings += 1
        return True

    def info(self):
        assert self.pings, "info() before ping()"
        return {"ServerVersion": "20.10.24+dfsg1", "Runtimes": {r: {"path": r} for r in self.runtimes}}


def docker_failing(err):
    def factory():
        raise err

    return factory


def docker_forbidden():
    raise AssertionError("Docker must not be asked with --no-docker")


def no_spec(name):
    assert name == "hailo_sdk_client"
    return None


def probes(**overrides) -> Probes:
    """This machine's situation by default: no GPU, Docker up without the nvidia runtime, room to spare."""
    base = dict(
        docker_client=FakeDocker,
        read_gpus=lambda: NO_GPU,
        free_disk_bytes=lambda path: 78 * GIB,
        write_problem=lambda path: None,
        available_memory_bytes=lambda: 23 * GIB,
        find_spec=no_spec,
        dist_version=lambda name: pytest.fail("dist_version without hailo_sdk_client"),
    )
    base.update(overrides)
    return Probes(**base)


def statuses(report):
    return {c.name: c.status for c in report.checks}


def blocker_names(report):
    return [c.name for c in report.blockers]


def rendered(report) -> str:
    console = Console(record=True, width=200, file=io.StringIO())
    report.render(console)
    return console.export_text()


@pytest.fixture
def vendor(tmp_path):
    path = tmp_path / "vendor"
    path.mkdir()
    return path


def put_wheel(vendor, name=WHEEL3, content=b"not really a wheel"):
    (vendor / name).write_bytes(content)
    return vendor / name


# --- this machine: no GPU, Docker up or down ---------------------------------------------------------


def test_this_machine_with_docker_lists_every_blocker_with_its_fix(vendor, tmp_path):
    report = run_doctor("hailo8l", vendor_dir=vendor, build_dir=tmp_path / "build", probes=probes())
    assert report.exit_code == 1 and not report.ok
    assert blocker_names(report) == ["GPU gate", "NVIDIA container runtime", "DFC wheel"]
    assert statuses(report) == {
        "GPUs": WARN, "GPU gate": BLOCKER, "Docker Engine": OK, "NVIDIA container runtime": BLOCKER,
        "DFC wheel": BLOCKER, "DFC image": WARN, "free disk": OK, "memory": OK,
    }
    image = next(c for c in report.checks if c.name == "DFC image")
    assert image.detail == "no DFC 3.x version known yet; GPUs judged for the dfc-cuda11 image (DFC 3.31.0)"
    gate, runtime, wheel = report.blockers
    assert gate.detail.startswith("No NVIDIA GPU found (NVML unavailable (LibraryNotFound")
    assert "--cpu" in gate.fix
    assert runtime.detail.startswith("`docker info` lists no nvidia runtime (runtimes: io.containerd.runc.v2, runc)")
    assert "NVIDIA Container Toolkit" in runtime.fix and "nvidia-ctk runtime configure" in runtime.fix
    assert wheel.detail == f"No DFC 3.x wheel in {vendor}/ (the dfc3 image needs one)."
    assert "Hailo's Developer Zone" in wheel.fix

    text = " ".join(rendered(report).split())  # rich wraps long lines
    assert "3 blocker(s):" in text
    for blocker in report.blockers:
        assert " ".join(f"✗ {blocker.name}: {blocker.detail} Fix: {blocker.fix}".split()) in text


def test_this_machine_without_a_docker_daemon(vendor):
    report = run_doctor("hailo8l", vendor_dir=vendor, probes=probes(docker_client=docker_failing(NO_DAEMON)))
    assert report.exit_code == 1
    assert blocker_names(report) == ["GPU gate", "Docker Engine", "DFC wheel"]
    engine = report.blockers[1]
    assert engine.detail.startswith("No Docker Engine answers (Error while fetching server API version")
    assert "sudo systemctl start docker" in engine.fix and "--no-docker" in engine.fix
    assert statuses(report)["NVIDIA container runtime"] == SKIPPED


def test_permission_denied_on_the_docker_socket(vendor):
    report = run_doctor("hailo8l", vendor_dir=vendor, probes=probes(docker_client=docker_failing(NO_PERMISSION)))
    engine = next(c for c in report.checks if c.name == "Docker Engine")
    assert engine.status == BLOCKER
    assert engine.detail.startswith("Permission denied on the Docker socket")
    assert "usermod -aG docker" in engine.fix


def test_missing_docker_py_is_a_blocker_with_the_install_command(vendor):
    report = run_doctor("hailo8l", vendor_dir=vendor,
                        probes=probes(docker_client=docker_failing(ImportError("No module named 'docker'"))))
    engine = next(c for c in report.checks if c.name == "Docker Engine")
    assert engine.status == BLOCKER and "docker-py is not installed" in engine.detail
    assert ".[host]" in engine.fix


def test_docker_failing_after_connecting_is_reported_not_raised(vendor):
    class Broken(FakeDocker):
        def info(self):
            raise docker.errors.APIError("500 Server Error: Internal Server Error")

    report = run_doctor("hailo8l", vendor_dir=vendor, probes=probes(docker_client=Broken))
    engine = next(c for c in report.checks if c.name == "Docker Engine")
    assert engine.status == BLOCKER and "500 Server Error" in engine.detail and "docker info" in engine.fix


# --- a host where a build can start ------------------------------------------------------------------


def test_a100_host_with_everything_in_place_has_no_blockers(vendor):
    wheel = put_wheel(vendor)
    report = run_doctor(
        "hailo8l", vendor_dir=vendor,
        probes=probes(read_gpus=lambda: GpuInventory((L4, A100), "nvml"),
                      docker_client=lambda: FakeDocker(("nvidia", "runc"))),
    )
    assert report.ok and report.exit_code == 0 and report.blockers == ()
    assert report.gpu_choice.device_ids == (A100.uuid,)
    checks = {c.name: c for c in report.checks}
    assert checks["GPU gate"].detail == f"will use GPU 0 NVIDIA A100-SXM4-80GB (compute 8.0) [{A100.uuid}]"
    assert checks["GPU gate warning"].status == WARN and "NVIDIA L4" in checks["GPU gate warning"].detail
    assert checks["NVIDIA driver"].detail == "535.104.05"
    assert checks["DFC wheel"].detail == (
        f"{WHEEL3}: DFC 3.31.0, major 3 matches dfc3; sha256 {sha256_file(wheel)}"
    )
    assert "No blockers: a build can start." in rendered(report)

    as_json = json.loads(report.to_json())
    assert as_json["ok"] is True and as_json["blockers"] == []
    assert as_json["gpu_choice"]["device_ids"] == [A100.uuid]
    assert [c["gpu"]["name"] for c in as_json["gpu_choice"]["verdicts"]] == [L4.name, A100.name]
    assert [c["status"] for c in as_json["gpu_choice"]["verdicts"]] == ["refused", "supported"]


def test_only_refused_cards_and_an_old_driver(vendor):
    put_wheel(vendor)
    old = dataclasses.replace(L4, driver="470.82.01")
    report = run_doctor(
        "hailo8", vendor_dir=vendor,
        probes=probes(read_gpus=lambda: GpuInventory((old,), "nvml"),
                      docker_client=lambda: FakeDocker(("nvidia",))),
    )
    assert blocker_names(report) == ["NVIDIA driver", "GPU gate"]
    driver, gate = report.blockers
    assert driver.detail == "470.82.01 is older than 525, the minimum for the dfc-cuda11 image."
    assert "field report: the optimizer hung endlessly on an L4" in gate.detail and "driver 470.82.01 is older than 525" in gate.detail
    assert "--allow-gpu" in gate.fix

    allowed = run_doctor(
        "hailo8", vendor_dir=vendor, allow_gpu=True,
        probes=probes(read_gpus=lambda: GpuInventory((L4,), "nvml"), docker_client=lambda: FakeDocker(("nvidia",))),
    )
    assert allowed.ok
    assert any(c.status == WARN and "USING GPU 1 NVIDIA L4" in c.detail for c in allowed.checks)


# --- --cpu, --no-docker -------------------------------------------------------------------------------------


def test_cpu_mode_needs_no_gpu_and_no_nvidia_runtime(vendor):
    put_wheel(vendor)
    report = run_doctor("hailo8l", vendor_dir=vendor, cpu=True, probes=probes())
    assert report.ok, report.blockers
    assert report.mode == "cpu"
    checks = {c.name: c for c in report.checks}
    assert checks["NVIDIA container runtime"].status == SKIPPED
    assert "not needed with --cpu" in checks["NVIDIA container runtime"].detail
    assert "2 h 18 min per epoch" in checks["GPU gate warning"].detail


def test_no_docker_checks_the_installed_dfc_instead_and_never_asks_docker(vendor):
    report = run_doctor("hailo8l", vendor_dir=vendor, cpu=True, no_docker=True,
                        probes=probes(docker_client=docker_forbidden))
    assert statuses(report)["Docker Engine"] == SKIPPED
    assert statuses(report)["DFC wheel"] == WARN  # natively the installed DFC is what runs
    assert blocker_names(report) == ["hailo_sdk_client"]
    assert "hailo_sdk_client is not installed" in report.blockers[0].detail
    assert "drop --no-docker" in report.blockers[0].fix


@pytest.mark.parametrize("installed, status", [("3.31.0", OK), ("5.0.0", BLOCKER)])
def test_no_docker_checks_the_installed_dfc_major(vendor, installed, status):
    found = probes(
        docker_client=docker_forbidden,
        find_spec=lambda name: object(),
        dist_version=lambda name: installed if name == "hailo_dataflow_compiler" else pytest.fail(name),
    )
    report = run_doctor("hailo8l", vendor_dir=vendor, cpu=True, no_docker=True, probes=found)
    check = next(c for c in report.checks if c.name == "hailo_sdk_client")
    assert check.status == status
    if status == BLOCKER:
        assert check.detail == "installed DFC 5.0.0 is not 3.x, which the dfc3 image's archs need."


# --- wheel, disk, memory -----------------------------------------------------------------------------


def test_wheel_of_the_wrong_major_names_what_was_found(vendor):
    put_wheel(vendor, WHEEL5)
    report = run_doctor("hailo8l", vendor_dir=vendor, cpu=True, probes=probes())
    assert blocker_names(report) == ["DFC wheel"]
    assert report.blockers[0].detail.endswith(f"Found: {WHEEL5}.")
    assert run_doctor("hailo10h", vendor_dir=vendor, cpu=True, probes=probes()).ok


def test_malformed_wheel_name_and_two_wheels_are_blockers(vendor):
    put_wheel(vendor, "hailo_dataflow_compiler-3.31-py3-none-linux_x86_64.whl")
    report = run_doctor("hailo8l", vendor_dir=vendor, cpu=True, probes=probes())
    assert "is not a DFC wheel name" in report.blockers[0].detail

    (vendor / "hailo_dataflow_compiler-3.31-py3-none-linux_x86_64.whl").unlink()
    put_wheel(vendor, WHEEL3)
    put_wheel(vendor, "hailo_dataflow_compiler-3.32.0-py3-none-linux_x86_64.whl")
    report = run_doctor("hailo8l", vendor_dir=vendor, cpu=True, probes=probes())
    assert report.blockers[0].detail.startswith("Several DFC 3.x wheels in")


def test_test_double_wheel_is_a_loud_warning(vendor):
    put_wheel(vendor, "hailo_dataflow_compiler-3.31.0+testdouble-py3-none-any.whl")
    report = run_doctor("hailo8l", vendor_dir=vendor, cpu=True, probes=probes())
    wheel = next(c for c in report.checks if c.name == "DFC wheel")
    assert wheel.status == WARN and "TEST DOUBLE" in wheel.detail and "NOT DEPLOYABLE" in wheel.detail


def test_low_disk_and_memory_are_blockers_with_numbers(vendor, tmp_path):
    put_wheel(vendor)
    seen = []
    report = run_doctor(
        "hailo8l", vendor_dir=vendor, build_dir=tmp_path / "b", cpu=True,
        probes=probes(free_disk_bytes=lambda p: seen.append(p) or 12 * GIB,
                      available_memory_bytes=lambda: 7.5 * GIB),
    )
    assert seen == [tmp_path / "b"]
    assert blocker_names(report) == ["free disk", "memory"]
    disk, memory = report.blockers
    assert disk.detail == f"12.0 GiB free under {tmp_path / 'b'} (need {MIN_FREE_DISK_GIB} GiB)"
    assert memory.detail == f"7.5 GiB available (need {MIN_AVAILABLE_MEMORY_GIB} GiB)"
    assert str(MIN_FREE_DISK_GIB) in disk.fix and str(MIN_AVAILABLE_MEMORY_GIB) in memory.fix


def test_unreadable_resources_are_warnings_not_crashes(vendor):
    def unreadable(*_):
        raise OSError("no /proc here")

    report = run_doctor("hailo8l", vendor_dir=vendor, cpu=True,
                        probes=probes(free_disk_bytes=unreadable, available_memory_bytes=unreadable))
    assert statuses(report)["free disk"] == WARN and statuses(report)["memory"] == WARN


def test_real_probes_read_this_machine(tmp_path):
    real = Probes()
    assert real.free_disk_bytes(tmp_path / "not" / "yet") > 0  # nearest existing parent
    assert real.available_memory_bytes() > 0


# --- the task ------------------------------------------------------------------------------------------


def test_invoke_doctor_json_on_this_machine(vendor):
    invoke = Path(sys.executable).with_name("invoke")
    done = subprocess.run(
        [str(invoke), "doctor", "--arch", "hailo8l", "--vendor", str(vendor), "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["arch"] == "hailo8l" and report["image"] == "dfc-cuda11"
    names = [b["name"] for b in report["blockers"]]
    assert "DFC wheel" in names  # the empty vendor dir
    assert all(b["fix"] for b in report["blockers"])
    if not report["gpus"]["cards"]:
        assert "GPU gate" in names


def test_invoke_doctor_rejects_an_unknown_arch():
    invoke = Path(sys.executable).with_name("invoke")
    done = subprocess.run([str(invoke), "doctor", "--arch", "hailo9"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "error: Unknown Hailo architecture 'hailo9'. Choose one of: hailo8, hailo8l, hailo10h." in done.stderr


def test_minimums_can_be_lowered_for_small_builds(vendor, tmp_path):
    put_wheel(vendor)
    report = run_doctor("hailo8l", vendor_dir=vendor, build_dir=tmp_path, cpu=True, min_free_disk_gib=10,
                        min_memory_gib=4, probes=probes(free_disk_bytes=lambda p: 12 * GIB,
                                                        available_memory_bytes=lambda: 7.5 * GIB))
    assert statuses(report)["free disk"] == OK and statuses(report)["memory"] == OK


def test_a_read_only_build_directory_is_named_as_such_not_as_zero_free_disk(vendor, tmp_path):
    put_wheel(vendor)
    report = run_doctor("hailo8l", vendor_dir=vendor, build_dir=tmp_path / "b", cpu=True,
                        probes=probes(free_disk_bytes=lambda p: 0,
                                      write_problem=lambda p: f"{tmp_path} is on a read-only filesystem"))
    assert blocker_names(report) == ["build directory"]
    assert report.blockers[0].detail == f"{tmp_path} is on a read-only filesystem"
    assert "GiB" not in report.blockers[0].detail and "writable filesystem" in report.blockers[0].fix


def test_the_real_write_probe_sees_a_read_only_mount(tmp_path):
    import os
    import subprocess

    from pipeline.host.doctor import _write_problem

    assert _write_problem(tmp_path / "new" / "build") is None
    mount = tmp_path / "ro"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        assert _write_problem(mount / "build") == f"{mount} is on a read-only filesystem"
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
