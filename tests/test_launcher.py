"""pipeline.host.launcher: the same StageCommand natively and in a real container.

Docker tests use the dfc3 image built FROM a debootstrapped Debian with the DFC test double
(fixture docker_test_image); they run as whatever uid runs the tests and check ownership,
logs, exit codes, the watchdog and that no container is left behind.
"""

import _thread
import io
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.errors import ToolchainError
from pipeline.host.launcher import StageCommand, check_native_dfc, execute_stage, native_argv, run_stage

HANG = "import time; print('working', flush=True); time.sleep(999)"


def _cmd(tmp_path, argv, name="encoder-parse", image="dfc-cuda11", **kw):
    return StageCommand(name=name, image=image, argv=argv, build_dir=tmp_path / "build",
                        log_path=tmp_path / "build" / "logs" / f"{name}.log", **kw)


# --- the command itself ---------------------------------------------------------------------


def test_command_paths_become_absolute_and_argv_a_tuple(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = StageCommand("export", "export", ["python", "-m", "pipeline.export.export"], Path("b"), Path("b/x.log"),
                       read_only_paths=[Path("models")])
    assert cmd.build_dir == tmp_path / "b" and cmd.log_path == tmp_path / "b" / "x.log"
    assert cmd.read_only_paths == (tmp_path / "models",)
    assert cmd.argv == ("python", "-m", "pipeline.export.export")


def test_command_refuses_unknown_image_and_gpus_for_export(tmp_path):
    with pytest.raises(ToolchainError, match="names image 'dfc4'.*export, dfc-cuda11, dfc-cuda12"):
        _cmd(tmp_path, ["python"], image="dfc4")
    with pytest.raises(ToolchainError, match="GPU-1 in the export image"):
        _cmd(tmp_path, ["python"], name="export", image="export", gpu_device_ids=("GPU-1",))


def test_native_argv_uses_this_interpreter():
    assert native_argv(["python", "-m", "pipeline.dfc.parse"]) == [sys.executable, "-m", "pipeline.dfc.parse"]
    assert native_argv(["python3", "-V"])[0] == sys.executable
    assert native_argv(["/bin/echo", "python"]) == ["/bin/echo", "python"]


# --- native mode ----------------------------------------------------------------------------


def test_native_stage_tees_output_to_console_and_log(tmp_path):
    console = io.StringIO()
    cmd = _cmd(tmp_path, ["python", "-c", "import sys; print('to stdout'); print('to stderr', file=sys.stderr)"])
    run = run_stage(cmd, native=True, image_tag=None, console=console)
    assert run.exit_code == 0 and run.log_path == cmd.log_path and run.duration_s > 0
    log = cmd.log_path.read_text()
    for text in ("to stdout", "to stderr"):
        assert text in log and text in console.getvalue()


def test_native_failure_raises_with_exit_code_tail_and_log_path(tmp_path):
    cmd = _cmd(tmp_path, ["python", "-c", "import sys; print('line one'); print('the cause'); sys.exit(7)"])
    with pytest.raises(ToolchainError) as err:
        run_stage(cmd, native=True, image_tag=None, console=io.StringIO())
    message = str(err.value)
    assert "encoder-parse failed with exit code 7" in message
    assert "the cause" in message and str(cmd.log_path) in message


def test_native_gpu_choice_is_passed_as_cuda_visible_devices(tmp_path):
    show = ["python", "-c", "import os; print('CVD=' + repr(os.environ.get('CUDA_VISIBLE_DEVICES')))"]
    run_stage(_cmd(tmp_path, show, gpu_device_ids=("GPU-a", "GPU-b")), native=True, image_tag=None,
              console=io.StringIO())
    assert "CVD='GPU-a,GPU-b'" in (tmp_path / "build/logs/encoder-parse.log").read_text()
    run_stage(_cmd(tmp_path, show), native=True, image_tag=None, console=io.StringIO())  # --cpu
    assert "CVD=''" in (tmp_path / "build/logs/encoder-parse.log").read_text()


def test_native_stall_kills_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    # the stage starts a child that would outlive it: the stop must reach it too
    script = (f"import subprocess, sys, time; p = subprocess.Popen(['sleep', '999']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(999)")
    cmd = _cmd(tmp_path, ["python", "-c", script], stall_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(ToolchainError, match="printed nothing for 1 s and was stopped") as err:
        run_stage(cmd, native=True, image_tag=None, console=io.StringIO())
    assert time.monotonic() - started < 15
    assert "started" in str(err.value) and str(cmd.log_path) in str(err.value)
    child = int(pid_file.read_text())
    time.sleep(0.2)
    assert _gone_or_zombie(child)


def _gone_or_zombie(pid):
    """A killed orphan may linger as a zombie until init reaps it: that is dead enough."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def test_native_dfc_must_import_here(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "dfc_double" not in p])
    monkeypatch.delitem(sys.modules, "hailo_sdk_client", raising=False)
    import importlib.util

    if importlib.util.find_spec("hailo_sdk_client") is None:
        with pytest.raises(ToolchainError, match="--no-docker: hailo_sdk_client does not import in this Python"):
            check_native_dfc()
    package = tmp_path / "hailo_sdk_client"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert check_native_dfc() == str(package / "__init__.py")


def test_docker_mode_needs_an_image_tag(tmp_path):
    with pytest.raises(ToolchainError, match="needs an image tag.*ensure_image"):
        run_stage(_cmd(tmp_path, ["python"]), native=False, image_tag=None, console=io.StringIO())


# --- Docker mode ----------------------------------------------------------------------------

def _containers(name):
    import docker

    from pipeline.host.docker_engine import stage_containers

    return stage_containers(docker.from_env(), name)


@pytest.mark.docker
@pytest.mark.slow
def test_container_output_is_owned_by_the_caller_and_logged(tmp_path, docker_test_image):
    image = docker_test_image("dfc3")
    out = tmp_path / "build" / "result.txt"
    script = (f"import os, pipeline; open({str(out)!r}, 'w').write('done'); "
              "print('uid', os.getuid(), 'package', pipeline.__file__)")
    cmd = _cmd(tmp_path, ["python", "-c", script])
    run = run_stage(cmd, native=False, image_tag=image.tag, console=io.StringIO())
    assert run.exit_code == 0
    assert out.read_text() == "done"
    assert (out.stat().st_uid, out.stat().st_gid) == (os.getuid(), os.getgid())  # not the image's 10001
    assert f"uid {os.getuid()} package /opt/toolchain/pipeline/__init__.py" in cmd.log_path.read_text()
    assert _containers("encoder-parse") == []


@pytest.mark.docker
@pytest.mark.slow
def test_container_runs_as_a_given_non_root_uid(tmp_path, docker_test_image):
    image = docker_test_image("dfc3")
    build = tmp_path / "build"
    build.mkdir()
    os.chown(build, 1000, 1000) if os.getuid() == 0 else None
    user = "1000:1000" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    out = build / "made.txt"
    cmd = _cmd(tmp_path, ["python", "-c", f"open({str(out)!r}, 'w').write('x')"])
    run, stopped, _ = execute_stage(cmd, native=False, image_tag=image.tag, console=io.StringIO(), user=user)
    assert (run.exit_code, stopped) == (0, None)
    assert f"{out.stat().st_uid}:{out.stat().st_gid}" == user


@pytest.mark.docker
@pytest.mark.slow
def test_container_exit_code_and_mounts(tmp_path, docker_test_image):
    image = docker_test_image("dfc3")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "model.txt").write_text("weights")
    script = (f"import sys; print(open({str(inputs / 'model.txt')!r}).read()); "
              f"open({str(inputs / 'new.txt')!r}, 'w')")
    cmd = _cmd(tmp_path, ["python", "-c", script], read_only_paths=(inputs,), env={"HF_TOKEN": "hf_runtime"})
    with pytest.raises(ToolchainError, match="failed with exit code 1") as err:
        run_stage(cmd, native=False, image_tag=image.tag, console=io.StringIO())
    assert "Read-only file system" in str(err.value)
    assert "weights" in cmd.log_path.read_text()
    assert not (inputs / "new.txt").exists()

    show = _cmd(tmp_path, ["python", "-c", "import os, sys; print(os.environ['HF_TOKEN']); sys.exit(7)"],
                env={"HF_TOKEN": "hf_runtime"})
    run, stopped, tail = execute_stage(show, native=False, image_tag=image.tag, console=io.StringIO())
    assert (run.exit_code, stopped) == (7, None) and "hf_runtime" in tail


@pytest.mark.docker
@pytest.mark.slow
def test_watchdog_stops_a_hanging_container_and_removes_it(tmp_path, docker_test_image):
    image = docker_test_image("dfc3")
    cmd = _cmd(tmp_path, ["python", "-c", HANG], name="encoder-optimize", stall_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(ToolchainError, match="encoder-optimize printed nothing for 2 s") as err:
        run_stage(cmd, native=False, image_tag=image.tag, console=io.StringIO())
    assert time.monotonic() - started < 30
    assert "working" in str(err.value) and str(cmd.log_path) in str(err.value)
    assert _containers("encoder-optimize") == []


@pytest.mark.docker
@pytest.mark.slow
def test_ctrl_c_mid_stage_removes_the_container(tmp_path, docker_test_image):
    image = docker_test_image("dfc3")
    # a stall limit only so that a broken test cannot hang the suite
    cmd = _cmd(tmp_path, ["python", "-c", HANG], name="decoder-compile", stall_timeout_s=60)

    def interrupt_when_running():
        for _ in range(200):
            if cmd.log_path.exists() and "working" in cmd.log_path.read_text():
                break
            time.sleep(0.1)
        assert _containers("decoder-compile"), "the stage container should be running now"
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_stage(cmd, native=False, image_tag=image.tag, console=io.StringIO())
    assert _containers("decoder-compile") == []


@pytest.mark.docker
@pytest.mark.slow
def test_container_killed_from_outside_reports_137_and_is_removed(tmp_path, docker_test_image):
    image = docker_test_image("dfc3")
    cmd = _cmd(tmp_path, ["python", "-c", HANG], name="encoder-compile", stall_timeout_s=60)

    def kill_when_running():
        for _ in range(200):
            running = _containers("encoder-compile")
            if running and cmd.log_path.exists() and "working" in cmd.log_path.read_text():
                running[0].kill()
                return
            time.sleep(0.1)

    threading.Thread(target=kill_when_running, daemon=True).start()
    with pytest.raises(ToolchainError, match="encoder-compile failed with exit code 137"):
        run_stage(cmd, native=False, image_tag=image.tag, console=io.StringIO())
    assert _containers("encoder-compile") == []
