"""invoke build (pipeline/host/build.py) under the faults a rented host sees: output filesystems that
are read-only or full at each stage, and a change of input length in an existing build folder.

Native builds with the DFC test double (tests/dfc_double on the stages' PYTHONPATH). One complete
build is made once; each case runs on a copy of it on a tmpfs mounted for the case (root needed:
`mount -t tmpfs`), so the cases neither depend on the machine's free disk nor on each other.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.errors import ToolchainError
from pipeline.host.build import run_build
from pipeline.host.build_options import BuildOptions

TESTS = Path(__file__).resolve().parent
DFC_DOUBLE = TESTS / "dfc_double"
LOW_MINIMUMS = {"min_free_disk_gib": 0, "min_memory_gib": 0.5}

pytestmark = pytest.mark.slow


def _options(random_whisper_dir, speech_dir, out: Path, **changes) -> BuildOptions:
    fields = dict(variant="tiny", arch="hailo8l", seconds=1, seq_len=8, model=str(random_whisper_dir("tiny")),
                  calib_dir=speech_dir, profile="quick", cpu=True, no_docker=True, out=out,
                  vendor_dir=out.parent / "vendor", stage_env={"PYTHONPATH": str(DFC_DOUBLE)}, **LOW_MINIMUMS)
    return BuildOptions(**{**fields, **changes})


def _build(options: BuildOptions):
    out = io.StringIO()
    try:
        return run_build(options, console=Console(file=out, width=200, color_system=None)), out.getvalue()
    except ToolchainError as err:
        err.console = out.getvalue()
        raise


@pytest.fixture(scope="module")
def built(module_tmp, random_whisper_dir, speech_dir):
    """(options, folder) of one complete native rehearsal build."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(DFC_DOUBLE))  # the doctor checks that hailo_sdk_client imports here
        options = _options(random_whisper_dir, speech_dir, module_tmp("complete") / "build")
        _build(options)
    return options


@pytest.fixture
def double_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(DFC_DOUBLE))


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@contextlib.contextmanager
def _copy_on_tmpfs(source: Path, target: Path, *, read_only: str = "", free_bytes: int | None = None):
    """A copy of the build `source` at `target`, on its own tmpfs; `read_only`: a subfolder
    remounted read-only; `free_bytes`: the tmpfs filled until only that much is left."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file()) + (64 << 20)
    target.mkdir(parents=True)
    try:
        _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target))
    except subprocess.CalledProcessError as err:
        pytest.skip(f"cannot mount a tmpfs here: {err.stderr.decode().strip()}")
    mounts = [target]
    try:
        shutil.copytree(source, target, dirs_exist_ok=True)
        if read_only:
            folder = target / read_only
            _mount("--bind", str(folder), str(folder))
            mounts.append(folder)
            _mount("-o", "remount,bind,ro", str(folder))
        if free_bytes is not None:
            stat = os.statvfs(target)
            filler = stat.f_bavail * stat.f_frsize - free_bytes
            with open(target / "filler", "wb") as f:
                f.truncate(0)
                os.posix_fallocate(f.fileno(), 0, filler)
        yield target
    finally:
        for mount in reversed(mounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


# Each stage and the build subfolder it writes into.
STAGE_FOLDERS = (
    ("export", "export"),
    ("encoder-calib", "calib"),
    ("decoder-calib", "calib"),
    ("encoder-parse", "dfc/encoder"),
    ("encoder-optimize", "dfc/encoder"),
    ("encoder-compile", "dfc/encoder"),
)


@pytest.mark.parametrize("stage,folder", STAGE_FOLDERS)
def test_a_read_only_output_folder_stops_the_stage_with_the_path_and_the_fix(built, tmp_path, stage, folder,
                                                                             double_importable):
    with _copy_on_tmpfs(built.build_dir, tmp_path / "build", read_only=folder) as build:
        with pytest.raises(ToolchainError) as caught:
            _build(BuildOptions(**{**built.__dict__, "out": build, "force": (stage,)}))
    message = str(caught.value)
    assert f"Stage {stage} failed" in message
    assert f"{build / folder}" in message and "is on a read-only filesystem" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("stage", [s for s, _ in STAGE_FOLDERS] + ["bundle", "report"])
def test_a_full_disk_stops_each_stage_with_a_clear_error(built, tmp_path, stage, double_importable):
    # 16 KiB left: room for the lock and a log line, not for a stage's outputs.
    with _copy_on_tmpfs(built.build_dir, tmp_path / "build", free_bytes=16 << 10) as build:
        with pytest.raises(ToolchainError) as caught:
            _build(BuildOptions(**{**built.__dict__, "out": build, "force": (stage,)}))
    message = str(caught.value)
    assert "no space left on device" in message.lower() and str(build) in message
    assert re.search(r"free (disk )?space", message, re.IGNORECASE), "the fix is named"
    assert "Traceback" not in message


def test_a_read_only_build_folder_is_a_blocker_not_zero_free_disk(built, tmp_path, double_importable):
    with _copy_on_tmpfs(built.build_dir, tmp_path / "build", read_only=".") as build:
        with pytest.raises(ToolchainError) as caught:
            _build(BuildOptions(**{**built.__dict__, "out": build}))
    message = str(caught.value)
    assert f"{build} is on a read-only filesystem" in message
    assert "GiB free" not in message
    assert message.count("read-only filesystem") == 1, "each blocker once"


def test_partial_files_of_a_killed_run_are_removed_by_the_next(built, tmp_path, double_importable):
    build = Path(shutil.copytree(built.build_dir, tmp_path / "build"))
    left = [build / "calib" / ".decoder_calib.partial-4242.npz", build / "dfc" / "encoder" / ".x.partial-4242.har"]
    for path in left:
        path.write_bytes(b"half")
    (build / ".bundle.partial-4242").mkdir()
    result, output = _build(BuildOptions(**{**built.__dict__, "out": build}))
    assert result.ran == ()
    assert not any(p.exists() for p in left) and not (build / ".bundle.partial-4242").exists()
    assert "Removed 3 partial file(s)" in output


def test_changing_the_seconds_leaves_one_consistent_bundle(built, tmp_path, double_importable):
    build = Path(shutil.copytree(built.build_dir, tmp_path / "build"))
    old = json.loads((build / "bundle" / "config.json").read_text())
    # Twice the speech: 2 s windows of the four clips alone are fewer than the quick scripts need.
    audio = tmp_path / "speech"
    for copy in ("a", "b"):
        shutil.copytree(built.calib_dir, audio / copy)
    result, _ = _build(BuildOptions(**{**built.__dict__, "out": build, "seconds": 2, "calib_dir": audio}))
    assert "export" in result.ran and "bundle" in result.ran
    config = json.loads((build / "bundle" / "config.json").read_text())
    hefs = sorted(p.name for p in (build / "bundle").glob("*.hef"))
    export = json.loads((build / "export" / "export.json").read_text())
    assert hefs == sorted([f"{export['encoder']['net_name']}.hef", f"{export['decoder']['net_name']}.hef"])
    assert all("_2s" in name for name in hefs)
    assert config != old and json.dumps(config).count("_1s") == 0
    # The stages removed what their earlier run wrote for 1 s: nothing of it ships or lingers.
    leftovers = [str(p.relative_to(build)) for p in build.rglob("*_1s*")]
    assert leftovers == []
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["build"]["encoder_net"].endswith("_2s")
