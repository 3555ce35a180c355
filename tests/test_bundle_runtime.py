"""pipeline/host/bundle_runtime.py: a copy of the bundle folder alone transcribes like the toolchain;
requirements.txt names what the carried code imports; HailoRT's wheel comes along from vendor/ or
the README says which file to fetch; install.sh installs both.

The transcription check uses real tiny.en (tiny_en_export_dir) on espeak-ng speech (speech_dir),
run in a subprocess where the toolchain is not importable: no site (so the shared venv's editable
install of the repository is not loaded), PYTHONPATH = the copy's runtime/ and then the venv's
site-packages for numpy, ONNX Runtime, soundfile, soxr and tokenizers.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from calib.audio import load_audio
from pipeline.errors import ToolchainError
from pipeline.host import bundle_runtime
from pipeline.host.bundle import bundle_files, make_bundle
from pipeline.host.transcriber import make_transcriber
from pipeline.tables import resolve_spec
from tests.test_bundle import _inputs as fake_export_inputs

OUR_PACKAGES = ("pipeline", "calib")
# Imported by the carried code but not from PyPI: HailoRT's wheel (hailort) comes from wheels/, the
# DFC (hailo_sdk_client) only serves the har backend on the build machine.
HAILO_MODULES = {"hailo_platform", "hailo_sdk_client"}

# Runs the transcriber as `python -m` does, then imports every carried module, and reports where
# each of our modules came from and whether the toolchain itself could be imported.
RUN_THEN_REPORT = """
import importlib, importlib.util, json, pathlib, runpy, sys
try:
    runpy.run_module("pipeline.host.transcriber", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    status = stop.code
runtime = pathlib.Path("runtime")
for path in sorted(runtime.rglob("*.py")):
    parts = path.relative_to(runtime).with_suffix("").parts
    importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
print(json.dumps({
    "status": status,
    "ours": {n: m.__file__ for n, m in sys.modules.items() if n.split(".")[0] in ("pipeline", "calib")},
    "heavy": sorted(n for n in sys.modules if n.split(".")[0] in ("torch", "transformers")),
    "toolchain_importable": importlib.util.find_spec("pipeline.host.build") is not None,
}))
"""


def _isolated_python(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -S *args` in `bundle` with only its runtime/ and the third-party packages importable."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join([str(bundle / "runtime"), sysconfig.get_paths()["purelib"]])}
    return subprocess.run([sys.executable, "-S", *args], cwd=bundle, env=env, capture_output=True, text=True,
                          timeout=600)


def _make(out: Path, export_dir: Path, spec, hailort_wheel=None, decoder: str = "hailo") -> Path:
    meta = json.loads((export_dir / "export.json").read_text())
    hefs = {}
    for model in ("encoder", "decoder") if decoder == "hailo" else ("encoder",):
        hefs[model] = out.parent / f"{meta[model]['net_name']}.hef"
        hefs[model].write_bytes(b"placeholder")  # the onnx backend does not read them
    make_bundle(out, spec=spec, export=meta, export_dir=export_dir, hefs=hefs, dfc_version="3.31.0+testdouble",
                rehearsal=True, hailort_wheel=hailort_wheel, decoder=decoder)
    return out


@pytest.fixture(scope="module")
def tiny_en_bundle(tiny_en_export_dir, module_tmp):
    return _make(module_tmp("bundle-src") / "bundle", tiny_en_export_dir, resolve_spec("tiny.en", "hailo8l", 10, 32))


@pytest.fixture(scope="module")
def copied_bundle(tiny_en_bundle, module_tmp):
    """The bundle folder copied alone to a place outside the repository."""
    return Path(shutil.copytree(tiny_en_bundle, module_tmp("bundle-copy") / "bundle"))


@pytest.mark.slow
def test_a_copied_bundle_transcribes_with_its_runtime_alone_like_the_toolchain(tiny_en_bundle, copied_bundle,
                                                                               speech_dir):
    wavs = sorted(str(p) for p in speech_dir.glob("utt*.wav"))
    toolchain = make_transcriber(tiny_en_bundle, "onnx")
    expected = [f"{wav}\t{toolchain.transcribe(load_audio(wav))}" for wav in wavs]
    assert sum(1 for line in expected if line.split("\t")[1]) >= 3, "tiny.en should hear words in the speech"

    done = _isolated_python(copied_bundle, "-c", RUN_THEN_REPORT, "--model", ".", *wavs)
    assert done.returncode == 0, done.stderr[-3000:]
    *lines, report = done.stdout.splitlines()
    report = json.loads(report)
    assert report["status"] == 0 and lines == expected
    assert report["toolchain_importable"] is False
    outside = {name: path for name, path in report["ours"].items() if not Path(path).is_relative_to(copied_bundle)}
    assert not outside, f"modules imported from outside the copied bundle: {outside}"
    assert "pipeline.host.transcriber" in report["ours"] and "calib.mel" in report["ours"]
    assert report["heavy"] == [], "the carried runtime imports torch or transformers"

    # The command the README gives, literally.
    done = _isolated_python(copied_bundle, "-m", "pipeline.host.transcriber", "--model", ".", wavs[0])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == expected[:1]


@pytest.mark.slow
def test_a_copied_cpu_decoder_bundle_transcribes_with_its_cached_decoder(tiny_en_export_dir, module_tmp, speech_dir):
    bundle = _make(module_tmp("cpu-bundle-src") / "bundle", tiny_en_export_dir,
                   resolve_spec("tiny.en", "hailo8l", 10, 32), decoder="cpu")
    copied = Path(shutil.copytree(bundle, module_tmp("cpu-bundle-copy") / "bundle"))
    wavs = sorted(str(p) for p in speech_dir.glob("utt*.wav"))
    toolchain = make_transcriber(bundle, "onnx")
    assert toolchain.decoder_name == "cached-float"
    expected = [f"{wav}\t{toolchain.transcribe(load_audio(wav))}" for wav in wavs]
    assert sum(1 for line in expected if line.split("\t")[1]) >= 3

    done = _isolated_python(copied, "-c", RUN_THEN_REPORT, "--model", ".", *wavs)
    assert done.returncode == 0, done.stderr[-3000:]
    *lines, report = done.stdout.splitlines()
    report = json.loads(report)
    assert report["status"] == 0 and lines == expected
    assert "pipeline.export.cached_greedy" in report["ours"] and report["heavy"] == []
    assert all(Path(path).is_relative_to(copied) for path in report["ours"].values())


def test_the_runtime_is_the_transcribers_import_closure_with_paths_kept(tmp_path):
    sources = bundle_runtime.runtime_sources()
    assert sources["runtime/pipeline/host/transcriber.py"] == str(Path(bundle_runtime.SOURCE_ROOT, "pipeline/host/transcriber.py"))
    assert {"runtime/pipeline/__init__.py", "runtime/pipeline/host/__init__.py", "runtime/calib/mel.py",
            "runtime/calib/audio.py", "runtime/pipeline/errors.py"} <= set(sources)
    # Host orchestration (Docker, the build, the stage cache) and the export (torch) stay out.
    assert not [n for n in sources if n.startswith(("runtime/pipeline/host/build", "runtime/pipeline/host/docker",
                                                    "runtime/pipeline/host/stage", "runtime/pipeline/export/export"))]


def test_requirements_name_every_third_party_package_the_runtime_imports():
    imported = set()
    for source in bundle_runtime.runtime_sources().values():
        for node in ast.walk(ast.parse(Path(source).read_bytes())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - set(OUR_PACKAGES) - HAILO_MODULES - {"__future__"}
    distributions = importlib.metadata.packages_distributions()
    needed = {distributions[name][0].lower() for name in third_party}
    required = {bundle_runtime.distribution_name(r).lower() for r in bundle_runtime.extra_requirements()}
    assert needed and needed <= required, f"imported but not in requirements.txt: {needed - required}"


def test_requirements_txt_carries_the_transcribe_extra_with_the_image_pins(tmp_path):
    spec = resolve_spec("tiny", "hailo8l", 2, 8)
    export, export_dir, hefs = fake_export_inputs(tmp_path, spec)
    make_bundle(tmp_path / "bundle", spec=spec, export=export, export_dir=export_dir, hefs=hefs, dfc_version="3.31.0",
                rehearsal=False)
    lines = [line for line in (tmp_path / "bundle" / "requirements.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert [line.split("  #")[0] for line in lines] == bundle_runtime.extra_requirements()
    pins = bundle_runtime.pinned_versions()
    numpy_line = next(line for line in lines if line.startswith("numpy"))
    assert f"pinned {pins['numpy']}" in numpy_line


def test_a_pyproject_without_the_transcribe_extra_is_named(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project.optional-dependencies]\nhost = [\n    "invoke>=2.2",\n]\n')
    with pytest.raises(ToolchainError, match="no `transcribe` extra"):
        bundle_runtime.extra_requirements(tmp_path / "pyproject.toml")


WHEEL = "hailort-4.21.0-cp311-cp311-linux_aarch64.whl"


def _fake_bundle(tmp_path: Path, hailort_wheel=None) -> tuple[Path, list[Path]]:
    spec = resolve_spec("tiny", "hailo8l", 2, 8)
    export, export_dir, hefs = fake_export_inputs(tmp_path, spec)
    out = tmp_path / "bundle"
    written = make_bundle(out, spec=spec, export=export, export_dir=export_dir, hefs=hefs, dfc_version="3.31.0",
                          rehearsal=False, hailort_wheel=hailort_wheel)
    assert written == bundle_files(out, export, hailort_wheel=hailort_wheel)
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(written)
    return out, written


# Stands in for python3 and pip, which cannot install from PyPI offline: logs each call; `-m venv DIR`
# makes DIR/bin/python a copy of itself; `-c` (install.sh's import check) fails, as without HailoRT.
RECORDING_PYTHON = """#!/bin/sh
echo "$*" >> "$CALLS"
if [ "$1 $2" = "-m venv" ]; then
    for last in "$@"; do :; done
    mkdir -p "$last/bin" && cp "$0" "$last/bin/python"
fi
[ "$1" = "-c" ] && exit 1
exit 0
"""


def _run_install(bundle: Path, tmp_path: Path) -> tuple[list[str], str]:
    python, calls = tmp_path / "python3", tmp_path / "calls.log"
    python.write_text(RECORDING_PYTHON)
    python.chmod(0o755)
    done = subprocess.run(["sh", str(bundle / "install.sh")], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "PYTHON": str(python), "CALLS": str(calls),
                               "VENV": str(tmp_path / "venv")})
    assert done.returncode == 0, done.stderr
    return calls.read_text().splitlines(), done.stderr


def test_a_hailort_wheel_in_vendor_is_carried_named_and_installed(tmp_path):
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    (vendor / WHEEL).write_bytes(b"the wheel's bytes")
    wheel = bundle_runtime.find_hailort_wheel(vendor)
    bundle, written = _fake_bundle(tmp_path, wheel)
    assert (bundle / "wheels" / WHEEL).read_bytes() == b"the wheel's bytes" and bundle / "wheels" / WHEEL in written
    assert json.loads((bundle / "config.json").read_text())["runtime"]["hailort_wheel"] == f"wheels/{WHEEL}"
    readme = (bundle / "README.md").read_text()
    assert f"`wheels/{WHEEL}` (HailoRT 4.21.0 for cp311 on linux_aarch64)" in readme
    assert "is **not** in this bundle" not in readme
    calls, _ = _run_install(bundle, tmp_path)
    venv_python = f"-m venv --system-site-packages {tmp_path / 'venv'}"
    assert calls[:3] == [venv_python, f"-m pip install -r {bundle / 'requirements.txt'}",
                         f"-m pip install {bundle / 'wheels' / WHEEL}"]


def test_without_a_hailort_wheel_the_readme_and_install_sh_say_what_to_fetch(tmp_path):
    (tmp_path / "vendor").mkdir()
    assert bundle_runtime.find_hailort_wheel(tmp_path / "vendor") is None
    assert bundle_runtime.find_hailort_wheel(tmp_path / "no-vendor-folder") is None
    bundle, written = _fake_bundle(tmp_path)
    assert not (bundle / "wheels").exists()
    assert json.loads((bundle / "config.json").read_text())["runtime"]["hailort_wheel"] is None
    readme = (bundle / "README.md").read_text()
    for needle in ("is **not** in this bundle", "Developer Zone", "hailort-VERSION-cpXY-cpXY-linux_aarch64.whl",
                   "`wheels/`", "vendor", "PYTHONPATH=runtime .venv/bin/python -m pipeline.host.transcriber --model .",
                   "Not checked anywhere by the toolchain"):
        assert needle in readme, needle
    calls, stderr = _run_install(bundle, tmp_path)
    assert not [c for c in calls if "wheels" in c] and f"-m pip install -r {bundle / 'requirements.txt'}" in calls
    assert "hailo_platform) is not importable" in stderr and "Developer Zone" in stderr


def test_several_or_misnamed_hailort_wheels_are_refused_by_name(tmp_path):
    (tmp_path / WHEEL).write_bytes(b"")
    (tmp_path / "hailort-4.21.0-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    with pytest.raises(ToolchainError, match="Several HailoRT wheels.*linux_aarch64.*linux_x86_64.*Keep the one"):
        bundle_runtime.find_hailort_wheel(tmp_path)
    for path in tmp_path.iterdir():
        path.unlink()
    (tmp_path / "hailort-latest.whl").write_bytes(b"")
    with pytest.raises(ToolchainError, match="hailort-latest.whl is not named like a wheel"):
        bundle_runtime.find_hailort_wheel(tmp_path)
