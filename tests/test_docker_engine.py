"""pipeline.host.docker_engine (+ pipeline.host.hang_probe): connection errors, base pinning, content tags,
real image builds and stage containers on the local Docker Engine (CPU, no registry)."""

import io
import os
import shutil
import time
from pathlib import Path

import pytest

from pipeline.host import docker_engine
from pipeline.host.docker_engine import (
    REPO_ROOT, connect, ensure_image, inputs_hash, stage_containers, stage_mounts,
)
from pipeline.errors import ToolchainError
from pipeline.host.hang_probe import HangProbe, run_hang_probe
from pipeline.host.launcher import StageCommand, run_stage
from pipeline.tables import IMAGES

BOGUS = "unix:///nonexistent/docker.sock"


# --- no daemon, no permission ---------------------------------------------------------------


def test_no_daemon_is_a_clear_error(monkeypatch):
    with pytest.raises(ToolchainError, match="No Docker daemon answers at unix:///nonexistent/docker.sock") as err:
        connect(BOGUS)
    assert "--no-docker" in str(err.value) and "systemctl start docker" in str(err.value)
    monkeypatch.setenv("DOCKER_HOST", BOGUS)
    with pytest.raises(ToolchainError, match="No Docker daemon answers at unix:///nonexistent"):
        connect()


def test_permission_denied_on_the_socket_suggests_the_docker_group():
    socket_path = Path("/var/run/docker.sock")
    if os.getuid() != 0 or not socket_path.exists() or socket_path.stat().st_mode & 0o006:
        pytest.skip("needs root to become another user, and a socket closed to others")
    # fork instead of exec: the child keeps the loaded modules and only drops to "nobody"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                connect("unix:///var/run/docker.sock")
                message = "connected"
            except ToolchainError as err:
                message = str(err)
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        message = f.read()
    os.waitpid(pid, 0)
    assert "Permission denied on the Docker socket (unix:///var/run/docker.sock)" in message
    assert "usermod -aG docker" in message and "sudo" in message


# --- base images and tags -------------------------------------------------------------------


def _repo_copy(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    for name in (*docker_engine.CONTEXT_PATHS, "pipeline", "calib"):
        src = REPO_ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)
    return root


def test_inputs_hash_follows_content_and_build_args_only(tmp_path):
    root = _repo_copy(tmp_path)
    args = {"BASE_IMAGE": "b@sha256:1"}
    first = inputs_hash("export", args, root, [])
    assert inputs_hash("export", args, root, []) == first
    (root / "README.md").write_text("docs do not change the image\n")
    (root / "pipeline" / "__pycache__").mkdir(exist_ok=True)
    (root / "pipeline" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    assert inputs_hash("export", args, root, []) == first
    (root / "pipeline" / "host" / "manifest.py").write_text("# host-only: not in the image\n")
    assert inputs_hash("export", args, root, []) == first
    (root / "pipeline" / "dfc" / "timeline.py").write_text((root / "pipeline" / "dfc" / "timeline.py").read_text() + "\n# edit\n")
    assert inputs_hash("export", args, root, []) != first
    (root / "pipeline" / "dfc" / "timeline.py").write_text((REPO_ROOT / "pipeline" / "dfc" / "timeline.py").read_text())
    assert inputs_hash("export", args, root, []) == first
    assert inputs_hash("dfc-cuda11", args, root, []) != first
    (root / "docker" / "images.lock").write_text("{}")  # read on the host only
    assert inputs_hash("export", args, root, []) == first
    assert inputs_hash("export", {"BASE_IMAGE": "b@sha256:2"}, root, []) != first
    wheel = tmp_path / "numpy-2.0-py3-none-any.whl"
    wheel.write_bytes(b"1")
    assert inputs_hash("export", args, root, [wheel]) != first
    with open(root / "pipeline" / "export" / "export.py", "a") as f:
        f.write("# changed\n")
    assert inputs_hash("export", args, root, []) != first


def test_dfc_wheel_problems_are_found_before_docker_is_contacted(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", BOGUS)  # proves the checks need no daemon
    with pytest.raises(ToolchainError, match="No DFC 3.x wheel in"):
        ensure_image("dfc3", vendor_dir=tmp_path)
    for version in ("3.31.0", "3.32.0"):
        (tmp_path / f"hailo_dataflow_compiler-{version}-py3-none-linux_x86_64.whl").write_bytes(b"w")
    with pytest.raises(ToolchainError, match="Several DFC 3.x wheels"):
        ensure_image("dfc3", vendor_dir=tmp_path)
    (tmp_path / "hailo_dataflow_compiler-3.32.0-py3-none-linux_x86_64.whl").unlink()
    with pytest.raises(ToolchainError, match="expected 00"):
        ensure_image("dfc3", vendor_dir=tmp_path, dfc_wheel_sha256="00" * 32)
    with pytest.raises(ToolchainError, match="Wheelhouse .*missing is not a directory"):
        ensure_image("dfc3", vendor_dir=tmp_path, wheelhouse=tmp_path / "missing")


def test_stage_mounts_same_paths_outer_first_and_inputs_must_exist(tmp_path):
    build = tmp_path / "build"
    inputs = build / "export"  # an input inside the build dir: mounted after its parent
    inputs.mkdir(parents=True)
    mounts = stage_mounts(build, [inputs], cuda_cache=True)
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in mounts[:2]] == [
        (str(build), str(build), False), (str(inputs), str(inputs), True)]
    assert mounts[2]["Type"] == "volume" and mounts[2]["Target"] == docker_engine.CUDA_CACHE_DIR
    jit = stage_mounts(build, [], cuda_cache=True, jit_cache_dir=tmp_path / "jit")[-1]
    assert (jit["Type"], jit["Source"], jit["Target"]) == ("bind", str(tmp_path / "jit"), docker_engine.CUDA_CACHE_DIR)
    with pytest.raises(ToolchainError, match="Input path .*nope does not exist"):
        stage_mounts(build, [tmp_path / "nope"], cuda_cache=False)


# --- real builds and containers ---------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_images_are_built_once_per_content_and_run_as_non_root(docker_test_image):
    import docker

    client = docker.from_env()
    for target in ("export", "dfc3"):
        ref = docker_test_image(target)
        attrs = client.images.get(ref.tag).attrs
        assert attrs["Config"]["User"] == "toolchain"
        assert attrs["Config"]["Labels"][docker_engine.LABEL_INPUTS].startswith(ref.tag.rsplit("-", 1)[1])
        assert not any(e.startswith("HF_TOKEN") for e in attrs["Config"]["Env"])
    export = docker_test_image("export")
    out = client.containers.run(export.tag, ["python", "-c", "import torch, transformers, onnx, onnxruntime, "
                                "onnxslim, soundfile, soxr, tqdm, pipeline; print(torch.__version__)"], remove=True)
    assert out.decode().strip() == "2.13.0+cpu"
    freeze = client.containers.run(docker_test_image("dfc3").tag, ["cat", "/opt/venv/pip-freeze.txt"], remove=True)
    assert "hailo_dataflow_compiler @ file:///build/vendor/hailo_dataflow_compiler-3." in freeze.decode()
    sdk = client.containers.run(docker_test_image("dfc3").tag, ["python", "-c", "import hailo_sdk_client, "
                                "onnxruntime; print(hailo_sdk_client.__name__)"], remove=True)
    assert sdk.decode().strip() == "hailo_sdk_client"
    # the second ensure_image finds the tag and builds nothing
    from tests.docker_fixtures import CACHE_DIR, ensure_test_base_image, ensure_wheelhouse

    console = io.StringIO()
    started = time.monotonic()
    again = ensure_image("export", base_image=ensure_test_base_image(), wheelhouse=ensure_wheelhouse(),
                         log_dir=CACHE_DIR / "image-logs", console=console)
    assert again == export and console.getvalue() == "" and time.monotonic() - started < 10


@pytest.mark.docker
@pytest.mark.slow
def test_build_failure_shows_the_log_tail_and_leaves_no_container(tmp_path, docker_test_image):
    import docker

    from tests.docker_fixtures import ensure_dfc_test_wheel, ensure_test_base_image

    client = docker.from_env()
    before = {c.id for c in client.containers.list(all=True)}
    vendor = tmp_path / "vendor"
    ensure_dfc_test_wheel(vendor)
    wheelhouse = tmp_path / "wheelhouse"  # lacks onnxruntime: pip inside the build must fail
    wheelhouse.mkdir()
    shutil.copy2(next(Path(docker_test_image("dfc3") and _wheelhouse()).glob("mpmath-*.whl")), wheelhouse)
    with pytest.raises(ToolchainError, match="Building the dfc-cuda11 image failed") as err:
        ensure_image("dfc3", base_image=ensure_test_base_image(), wheelhouse=wheelhouse, vendor_dir=vendor,
                     log_dir=tmp_path / "logs", console=io.StringIO())
    message = str(err.value)
    assert "onnxruntime" in message and str(tmp_path / "logs" / "image-dfc-cuda11.log") in message
    assert {c.id for c in client.containers.list(all=True)} == before


def _wheelhouse():
    from tests.docker_fixtures import ensure_wheelhouse

    return ensure_wheelhouse()


@pytest.mark.docker
@pytest.mark.slow
def test_missing_base_image_is_named_with_the_fix(tmp_path):
    with pytest.raises(ToolchainError, match="base image whisper-hailo-absent:none of the export image") as err:
        ensure_image("export", base_image="whisper-hailo-absent:none", log_dir=tmp_path, console=io.StringIO())
    assert "docker save | docker load" in str(err.value)


@pytest.mark.docker
@pytest.mark.slow
def test_gpu_request_without_nvidia_runtime_is_a_clear_error(tmp_path, docker_test_image):
    import docker

    client = docker.from_env()
    if "nvidia" in client.info().get("Runtimes", {}):
        pytest.skip("this Docker has the NVIDIA runtime")
    cmd = StageCommand("encoder-optimize", "dfc-cuda11", ["python", "-c", "print(1)"], tmp_path / "b",
                       tmp_path / "b" / "x.log", gpu_device_ids=("GPU-00000000-1111-2222-3333-444444444444",))
    with pytest.raises(ToolchainError, match="no NVIDIA container runtime") as err:
        run_stage(cmd, native=False, image_tag=docker_test_image("dfc3").tag, console=io.StringIO())
    assert "NVIDIA Container Toolkit" in str(err.value) and "--cpu" in str(err.value)
    assert stage_containers(client, "encoder-optimize") == []


@pytest.mark.docker
@pytest.mark.slow
def test_a_silent_container_probe_that_grows_the_host_jit_cache_is_not_stopped(tmp_path, docker_test_image):
    import docker

    # Prints nothing for 4 s while writing into CUDA_CACHE_PATH (the bind-mounted host folder), as a
    # driver JIT-compiling PTX does; then reports what the container saw.
    script = ("import os, time\n"
              "cache = os.environ['CUDA_CACHE_PATH']\n"
              "for i in range(16):\n"
              "    open(os.path.join(cache, f'm{i}.bin'), 'wb').write(b'x' * 4096); time.sleep(0.25)\n"
              "print('env', os.environ.get('CUDA_MODULE_LOADING'), os.environ['CUDA_CACHE_MAXSIZE'], cache, flush=True)\n")
    jit = tmp_path / "jit"
    probe = HangProbe(image="dfc-cuda11", gpu_device_ids=(), gpu_name="NVIDIA H100 80GB HBM3", advice="",
                      build_dir=tmp_path / "b", log_path=tmp_path / "b" / "logs" / "probe.log",
                      timeout_s=2, ceiling_s=120, argv=("python", "-c", script), jit_cache_dir=jit)
    console = io.StringIO()
    run_hang_probe(probe, native=False, image_tag=docker_test_image("dfc3").tag, console=console)
    text = console.getvalue()
    assert "compiling GPU kernels for NVIDIA H100 80GB HBM3 once; later runs reuse them" in text
    assert f"env LAZY 4294967296 {docker_engine.CUDA_CACHE_DIR}" in text
    written = sorted(jit.iterdir())
    assert len(written) == 16 and all(p.stat().st_uid == os.getuid() for p in written)  # ours, not root's
    assert stage_containers(docker.from_env(), "dfc-cuda11-gpu-hang-probe") == []


@pytest.mark.docker
@pytest.mark.slow
def test_hang_probe_told_to_hang_times_out_and_removes_its_container(tmp_path, docker_test_image):
    import docker

    probe = HangProbe(
        image="dfc-cuda11", gpu_device_ids=(), gpu_name="NVIDIA L4", advice="Use an A100 or --cpu.",
        build_dir=tmp_path / "b", log_path=tmp_path / "b" / "logs" / "hang-probe.log", timeout_s=3, ceiling_s=3,
        argv=("python", "-c", "import time; print('probing', flush=True)\nwhile True: time.sleep(0.5); print('.', flush=True)"),
    )
    started = time.monotonic()
    with pytest.raises(ToolchainError, match="NVIDIA L4: a short TensorFlow matmul .* within 3 s") as err:
        run_hang_probe(probe, native=False, image_tag=docker_test_image("dfc3").tag, console=io.StringIO())
    assert time.monotonic() - started < 30  # a probe that keeps printing is still stopped at the deadline
    assert "Use an A100 or --cpu." in str(err.value)
    assert stage_containers(docker.from_env(), "dfc-cuda11-gpu-hang-probe") == []
    assert "probing" in probe.log_path.read_text()


def test_hang_probe_native_timeout_and_failures(tmp_path):
    base = dict(image="dfc-cuda11", gpu_device_ids=("GPU-x",), gpu_name="NVIDIA A100", advice="advice",
                build_dir=tmp_path, log_path=tmp_path / "probe.log")
    with pytest.raises(ToolchainError, match="printed nothing for 1 s .*a hang, not kernel compilation"):
        run_hang_probe(HangProbe(**base, timeout_s=1, argv=("sleep", "600")), native=True, image_tag=None,
                       console=io.StringIO())
    with pytest.raises(ToolchainError, match="sees no GPU although NVIDIA A100"):
        run_hang_probe(HangProbe(**base, argv=("python", "-c", "import sys; sys.exit(3)")), native=True,
                       image_tag=None, console=io.StringIO())
    with pytest.raises(ToolchainError, match="probe failed on NVIDIA A100 \\(exit code 1\\)"):
        run_hang_probe(HangProbe(**base, argv=("python", "-c", "raise SystemExit(1)")), native=True,
                       image_tag=None, console=io.StringIO())
    ok = HangProbe(**base, argv=("python", "-c", "print('hang probe: ok')"))
    assert run_hang_probe(ok, native=True, image_tag=None, console=io.StringIO()) < 30


def test_out_of_disk_and_registry_errors_name_the_fix():
    full = docker_engine._build_error("export", "whisper-hailo:export-x", "b", "failed to copy files: "
                                      "write /var/lib/docker/tmp/x: no space left on device", "", Path("l.log"))
    assert "no space left on device" in str(full) and "docker builder prune" in str(full)
    import docker

    err = docker.errors.APIError("500", explanation="error creating overlay mount: no space left on device")
    cmd = StageCommand("encoder-compile", "dfc-cuda11", ["python"], Path("/tmp/b"), Path("/tmp/b/x.log"))
    assert "Starting stage encoder-compile failed: no space left" in str(docker_engine._run_error(err, cmd))
    other = docker.errors.APIError("500", explanation="something else")
    assert "Docker refused to run stage encoder-compile: something else" in str(docker_engine._run_error(other, cmd))


class _Container:
    def __init__(self, name, owner, stage="encoder-optimize"):
        self.name, self.labels, self.calls = name, {docker_engine.LABEL_OWNER: owner,
                                                   docker_engine.LABEL_STAGE: stage}, []

    def stop(self, timeout):
        self.calls.append(("stop", timeout))

    def remove(self, force):
        self.calls.append(("remove", force))


def test_containers_of_a_dead_build_are_stopped_before_the_next_build_locks(tmp_path):
    import socket

    host = socket.gethostname()
    dead, live, elsewhere = (_Container("a", f"111@{host}"), _Container("b", f"222@{host}"),
                             _Container("c", "111@another-host"))
    asked = {}

    class Client:
        class containers:
            @staticmethod
            def list(all, filters):
                asked.update(filters)
                return [dead, live, elsewhere]

    stopped = docker_engine.stop_orphan_containers(Client, tmp_path / "build", is_running=lambda pid: pid == 222)
    assert asked == {"label": f"{docker_engine.LABEL_BUILD_DIR}={tmp_path / 'build'}"}
    assert stopped == ["a (encoder-optimize)"]
    assert dead.calls == [("stop", docker_engine.STOP_GRACE_S), ("remove", True)]
    assert live.calls == [] and elsewhere.calls == []
