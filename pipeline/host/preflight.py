"""Before any long work: the checks that block a build (doctor plus the build's own inputs), the
calibration size the model scripts need, and the tools (images or this environment) that run the
stages."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pipeline.dfc import model_scripts
from pipeline.errors import ToolchainError
from pipeline.host.build_options import BuildOptions, looks_like_path
from pipeline.host.code_closure import code_fingerprint
from pipeline.host.doctor import WARN, Probes, run_doctor
from pipeline.host.stage_cache import files_under
from pipeline.host.vendor import find_dfc_wheel
from pipeline.layout import Layout
from pipeline.tables import MODELS, BuildSpec, image_for_dfc

# Audio the calib stage reads (calib.audio.AUDIO_EXTENSIONS is the full list; these cover the
# cache key without importing calib, whose dependencies belong to the export image).
_AUDIO_SUFFIXES_FALLBACK = (".wav", ".flac", ".ogg", ".mp3", ".opus")


@dataclass(frozen=True)
class Tool:
    """What runs a stage: an image (Docker) or this environment (native)."""

    image: str  # "export" | a DFC image target ("dfc-cuda11", "dfc-cuda12")
    tag: Optional[str]  # Docker image tag; None natively
    identity: Mapping[str, Any]  # goes into the stage keys

    def to_json(self) -> dict:
        return {"image": self.image, "tag": self.tag, **self.identity}

    def identity_for(self, *entry_modules: str) -> dict:
        """The identity a stage key records; natively the code is this checkout, so it adds the
        fingerprint of the stage's modules (in Docker the image id covers the code)."""
        identity = dict(self.identity)
        if self.tag is None:
            identity["code"] = code_fingerprint(entry_modules)
        return identity


def _native_dfc_identity(env: Mapping[str, str]) -> dict:
    """The DFC the native stages will import: its distribution version and location.

    Asked in a subprocess with the stages' environment (PYTHONPATH may point elsewhere), and
    without importing hailo_sdk_client, which would start TensorFlow. A package that is not an
    installed distribution (e.g. on PYTHONPATH) is known by its location only; the stage results
    then report its version.
    """
    probe = (
        "import importlib.util, importlib.metadata, json\n"
        "spec = importlib.util.find_spec('hailo_sdk_client')\n"
        "try:\n    version = importlib.metadata.version('hailo_dataflow_compiler')\n"
        "except importlib.metadata.PackageNotFoundError:\n    version = None\n"
        "print(json.dumps({'origin': spec.origin if spec else None, 'version': version}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)
    if done.returncode != 0:
        return {"dfc_version": None, "dfc_origin": None}
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {"dfc_version": found["version"], "dfc_origin": found["origin"]}


def resolve_tools(options: BuildOptions, spec: BuildSpec, wheel_version: Optional[str],
                  log_dir: Optional[Path] = None, console=None, roles: Sequence[str] = ("export", "dfc")) -> dict[str, Tool]:
    """The export tool and the DFC tool (those of `roles` in Docker mode); builds (or finds up to
    date) the images in Docker mode."""
    if options.no_docker:
        python = {"python": platform.python_version()}
        dfc = _native_dfc_identity(options.stage_env)
        # the image whose GPU policy and JIT cache fit the DFC that runs (table: pipeline/dfc_images.py)
        dfc_image = image_for_dfc(dfc["dfc_version"] or wheel_version or spec.arch.dfc.min_dfc_version).name
        return {
            "export": Tool("export", None, {"mode": "native", **python}),
            "dfc": Tool(dfc_image, None, {"mode": "native", **python, **dfc}),
        }
    from pipeline.host.docker_engine import ensure_image  # host side only: native mode needs no docker-py

    tools = {}
    for role, kind in (("export", "export"), ("dfc", spec.arch.series)):
        if role not in roles:
            continue
        ref = ensure_image(kind, base_image=options.base_image, wheelhouse=options.wheelhouse,
                           vendor_dir=options.vendor_dir, log_dir=log_dir, console=console)
        identity = {"mode": "docker", "image_id": ref.id}
        if role == "dfc":
            identity["dfc_version"] = wheel_version
        tools[role] = Tool(ref.target, ref.tag, identity)
    return tools


# --- preflight ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preflight:
    gpu_device_ids: tuple[str, ...]
    gpu: Mapping[str, Any]  # GpuChoice.to_json() or {"mode": "cpu"}
    wheel_version: Optional[str]
    wheel_is_test_double: bool
    warnings: tuple[str, ...]


def preflight(options: BuildOptions, spec: BuildSpec, layout: Layout, doctor_probes=None) -> Preflight:
    """The doctor's checks plus the build's own inputs; raises once with every blocker."""
    report = run_doctor(
        spec.arch.name,
        vendor_dir=options.vendor_dir,
        build_dir=layout.root,
        cpu=options.cpu,
        allow_gpu=options.allow_gpu,
        no_docker=options.no_docker,
        probes=doctor_probes or Probes(),
        **{name: value for name, value in (("min_free_disk_gib", options.min_free_disk_gib),
                                           ("min_memory_gib", options.min_memory_gib)) if value is not None},
    )
    blockers = [f"{c.name}: {c.detail}" + (f" Fix: {c.fix}" if c.fix else "") for c in report.blockers]
    warnings = [f"{c.name}: {c.detail}" for c in report.checks if c.status == WARN]

    if options.model and looks_like_path(options.model):
        if not Path(options.model).is_dir():
            blockers.append(f"model: {options.model} is not a folder. Fix: pass a Hugging Face id "
                            "(e.g. openai/whisper-tiny) or a folder with a Whisper checkpoint.")
        else:
            blockers += unreadable_inputs("model", Path(options.model))
    if options.calib_dir is not None and options.calib_dir.is_dir():
        blockers += unreadable_inputs("calibration audio", options.calib_dir)
    if options.calib_download and not audio_files(layout.download_dir):
        blockers += download_unreachable(options.download_probe)
    if options.calib_dir is None and not options.calib_download:
        blockers.append("calibration audio: none given; the optimizer quantizes with real speech. Fix: pass "
                        "--calib DIR (a folder of speech recordings, e.g. LibriSpeech) or --calib-download.")
    if options.calib_dir is not None:
        calib_dir = Path(options.calib_dir)
        if not calib_dir.is_dir():
            blockers.append(f"calibration audio: {calib_dir} is not a folder. Fix: pass --calib with a "
                            "folder of speech recordings, or --calib-download.")
        elif not audio_files(calib_dir):
            blockers.append(f"calibration audio: no audio files under {calib_dir}. Fix: pass a folder "
                            "with wav/flac/ogg speech, or --calib-download.")
    if options.model_script is not None:
        for model in MODELS:
            try:
                model_script_path(options, model)
            except ToolchainError as err:
                blockers.append(f"model script: {err}")
    try:
        needed = calibration_entries_needed(options, spec)
    except ToolchainError as err:
        blockers.append(f"model script: {err}")
    else:
        if options.calib_size is not None and options.calib_size < needed:
            blockers.append(
                f"calibration size: --calib-size {options.calib_size} is below the {needed} entries the "
                f"model scripts need (profile {options.profile}). Fix: drop --calib-size, raise it to "
                f"{needed}, or use a model script that needs fewer (--profile quick)."
            )

    blockers = list(dict.fromkeys(blockers))  # each once, in the order found
    if blockers:
        raise ToolchainError(
            f"The build cannot start: {len(blockers)} blocker(s):\n" + "\n".join(f"  - {b}" for b in blockers),
            "\nFix them and rerun (`invoke doctor` shows the environment checks in detail).",
        )
    wheel = None
    try:
        wheel = find_dfc_wheel(spec.arch.dfc, options.vendor_dir)
    except ToolchainError:
        pass  # natively, the installed DFC counts (the doctor checked it)
    choice = report.gpu_choice
    return Preflight(
        gpu_device_ids=choice.device_ids if choice and choice.mode == "gpu" else (),
        gpu=choice.to_json() if choice else {"mode": "cpu" if options.cpu else "unknown"},
        wheel_version=wheel.version if wheel else None,
        wheel_is_test_double=bool(wheel and wheel.is_test_double),
        warnings=tuple(warnings),
    )


def unreadable_inputs(what: str, path: Path) -> list[str]:
    """Blockers for files or folders under an input `path` this user cannot read (the stages would
    fail on them after the export, or inside a container)."""
    bad = [p for p in (path, *path.rglob("*")) if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0))]
    if not bad:
        return []
    shown = ", ".join(str(p) for p in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    return [f"{what}: cannot read {shown} (uid {os.getuid()}). Fix: make it readable (`chmod -R a+rX`) "
            "or pass a folder you can read."]


def download_unreachable(probe) -> list[str]:
    """--calib-download: a blocker when the LibriSpeech server cannot be reached, so the build stops
    now instead of after the export."""
    from calib.config import DEV_CLEAN_URL

    try:
        probe(DEV_CLEAN_URL)
    except OSError as err:
        return [f"calibration download: {DEV_CLEAN_URL} cannot be reached ({err}). Fix: check the network, "
                "or pass a folder of speech recordings with --calib DIR (`make hef CALIB=DIR`)."]
    return []


def calibration_entries_needed(options: BuildOptions, spec: BuildSpec) -> int:
    """The most calibration entries either model script uses (calibset_size, fine-tune dataset_size)."""
    return model_scripts.calibration_entries_needed(spec.variant.name, spec.arch.name, options.profile,
                                                    lambda model: model_script_path(options, model))


def audio_files(directory: Path) -> list[Path]:
    try:
        from calib.audio import AUDIO_EXTENSIONS
    except ImportError:  # calib's dependencies (soundfile) are not on this host
        AUDIO_EXTENSIONS = _AUDIO_SUFFIXES_FALLBACK
    return files_under(directory, tuple(AUDIO_EXTENSIONS))


def model_script_path(options: BuildOptions, model: str) -> Optional[Path]:
    """The user's script for `model`: the file itself, or <folder>/<model>.alls."""
    if options.model_script is None:
        return None
    path = Path(options.model_script).absolute()
    if path.is_dir():
        path = path / f"{model}.alls"
    if not path.is_file():
        raise ToolchainError(
            f"Model script {path} does not exist.",
            "Pass an .alls file (used for both models) or a folder holding encoder.alls and decoder.alls.",
        )
    return path


def resolved_script(options: BuildOptions, spec: BuildSpec, model: str) -> model_scripts.ResolvedScript:
    """The script the optimize stage of `model` will load (profile or the user's file)."""
    return model_scripts.resolve_model_script(spec.variant.name, spec.arch.name, model, options.profile,
                                model_script=model_script_path(options, model))
