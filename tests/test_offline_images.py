"""pipeline/host/offline_images.py: when the offline base image can be made, and the caches that
spare a second run the debootstrap and the downloads (the real builds: tests/test_docker_engine.py,
tests/test_build.py and `invoke rehearsal --mode docker`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ToolchainError
from pipeline.host import offline_images


def _no_subprocess(*args, **kwargs):
    raise AssertionError(f"nothing should run: {args[0] if args else kwargs}")


def test_an_existing_base_image_needs_no_debootstrap(monkeypatch):
    monkeypatch.setattr(offline_images, "_image_exists", lambda tag: True)
    monkeypatch.setattr(offline_images.shutil, "which", lambda tool: None)
    monkeypatch.setattr(offline_images.subprocess, "run", _no_subprocess)
    assert offline_images.base_image_problem() is None
    assert offline_images.ensure_base_image() == offline_images.OFFLINE_BASE_IMAGE


def test_no_image_and_no_debootstrap_says_what_to_install(monkeypatch):
    monkeypatch.setattr(offline_images, "_image_exists", lambda tag: False)
    monkeypatch.setattr(offline_images.shutil, "which", lambda tool: None)
    assert offline_images.base_image_problem() == "debootstrap is not installed (apt-get install debootstrap)"
    with pytest.raises(ToolchainError, match=r"Cannot make the offline base image whisper-hailo-debootstrap:bookworm: "
                                             r"debootstrap is not installed .* Install debootstrap and run as root"):
        offline_images.ensure_base_image()


def test_debootstrap_without_root_is_named(monkeypatch):
    monkeypatch.setattr(offline_images.shutil, "which", lambda tool: "/usr/sbin/debootstrap")
    monkeypatch.setattr(offline_images.os, "geteuid", lambda: 1000)
    assert offline_images.debootstrap_problem().startswith("debootstrap needs root")


def test_a_complete_wheelhouse_is_reused_and_a_partial_one_is_not(tmp_path, monkeypatch):
    done = tmp_path / f"wheelhouse-{offline_images.constraints_key()}"
    done.mkdir()
    (done / ".complete").write_text("ok\n")
    monkeypatch.setattr(offline_images.subprocess, "run", _no_subprocess)
    assert offline_images.ensure_wheelhouse(tmp_path) == done

    (done / ".complete").unlink()
    with pytest.raises(AssertionError, match="pip"):
        offline_images.ensure_wheelhouse(tmp_path)


def test_a_wheels_dependencies_are_fetched_once(tmp_path, monkeypatch):
    wheel = tmp_path / "hailo_dataflow_compiler-3.31.0+testdouble-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    ran = []

    class Done:
        returncode, stderr = 0, ""

    def fake_download(command, **kwargs):
        ran.append(command)
        dest = command[command.index("--dest") + 1]
        for name in ("onnx-1.17.0-cp311-none-any.whl", wheel.name):
            (Path(dest) / name).write_bytes(b"x")
        return Done()

    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    monkeypatch.setattr(offline_images.subprocess, "run", fake_download)
    offline_images.add_wheel_dependencies(wheelhouse, wheel)
    offline_images.add_wheel_dependencies(wheelhouse, wheel)
    assert len(ran) == 1 and str(wheel) in ran[0]
    assert sorted(p.name for p in wheelhouse.iterdir() if not p.name.startswith(".")) == ["onnx-1.17.0-cp311-none-any.whl"]
