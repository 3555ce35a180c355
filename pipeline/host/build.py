"""`invoke build` / `make hef`: every stage in order, each skipped when its stage cache says it is
up to date.

    doctor preflight (every blocker at once, before any long work)
    export -> encoder calib -> decoder calib -> parse -> optimize -> compile (encoder, decoder)
    -> bundle -> report

Export, calibration and the DFC stages run through the stage launcher (`pipeline.host.launcher`): in
the `export` image and the `dfc3`/`dfc5` image, or natively with `no_docker`. Host paths are
mounted at the same absolute paths, so every argv below is the same in both modes. Bundle and
report are host-side file work and run in this process.

Each stage is keyed by `pipeline.host.stage_cache` (input hashes, parameters, model script, the tool
that runs it); a rerun skips what is up to date, and a killed run resumes at the stage that did
not finish, because records are only written after a stage's outputs are in place.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from pipeline.host.build_lock import BuildLock
from pipeline.host.code_closure import code_fingerprint
from pipeline.errors import ToolchainError
from pipeline.host.stage_cache import STAGE_ORDER, StageCache, StageInputs, StageRecord, files_under, resolve_force
from pipeline.tables import BuildSpec, resolve_spec

PROFILES = ("full", "quick")
MODELS = ("encoder", "decoder")
REPO_ROOT = Path(__file__).resolve().parents[2]
# Audio the calib stage reads (calib.audio.AUDIO_EXTENSIONS is the full list; these cover the
# cache key without importing calib, whose dependencies belong to the export image).
_AUDIO_SUFFIXES_FALLBACK = (".wav", ".flac", ".ogg", ".mp3", ".opus")


@dataclass(frozen=True)
class BuildOptions:
    """Everything one build needs, made once by the entry point (tasks.py) and passed down."""

    variant: str = "tiny"
    arch: str = "hailo8l"
    seconds: Optional[float] = None  # None: the variant's default
    seq_len: Optional[int] = None  # None: the variant's default
    model: Optional[str] = None  # Hugging Face id or local dir (transformers or CTranslate2); None: the variant's id
    calib_dir: Optional[Path] = None  # folder of speech recordings
    calib_download: bool = False  # fetch LibriSpeech dev-clean into <build>/calib/download
    calib_size: Optional[int] = None  # None: what the model scripts need
    profile: str = "full"
    model_script: Optional[Path] = None  # an .alls for both models, or a folder with encoder.alls/decoder.alls
    cpu: bool = False
    allow_gpu: bool = False
    no_docker: bool = False
    out: Optional[Path] = None  # None: build/<variant>-<arch>
    force: tuple[str, ...] = ()  # stage names or groups (pipeline.host.stage_cache.FORCE_GROUPS)
    vendor_dir: Path = Path("vendor")
    base_image: Optional[str] = None  # passed to the image builds
    wheelhouse: Optional[Path] = None  # passed to the image builds (offline installs)
    stall_timeouts: Mapping[str, float] = field(default_factory=dict)  # stage or kind -> seconds
    stage_env: Mapping[str, str] = field(default_factory=dict)  # extra environment for every stage
    export_env: Mapping[str, str] = field(default_factory=dict)  # export/calib only, e.g. HF_TOKEN
    hang_probe_timeout_s: float = 120.0  # GPU hang probe before the first DFC stage on a GPU
    stream_logs: bool = True  # stage output on the console too (always in logs/)

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ToolchainError(f"Unknown profile {self.profile!r}.", f"Choose one of: {', '.join(PROFILES)}.")
        if self.calib_dir is not None and self.calib_download:
            raise ToolchainError("--calib and --calib-download both given.", "Pass only one of them.")
        if self.calib_size is not None and self.calib_size < 1:
            raise ToolchainError(f"Calibration size {self.calib_size} is not positive.", "Pass a size >= 1.")
        object.__setattr__(self, "force", tuple(self.force))
        resolve_force(self.force)  # unknown names fail now, not after the export

    @property
    def spec(self) -> BuildSpec:
        return resolve_spec(self.variant, self.arch, self.seconds, self.seq_len)

    @property
    def build_dir(self) -> Path:
        return (Path(self.out) if self.out else Path("build") / self.spec.build_name).absolute()


@dataclass(frozen=True)
class StageOutcome:
    stage: str
    status: str  # "up to date" | "ran"
    duration_s: float  # this run's wall time (up to date: the check's time)
    record: StageRecord  # the record now on disk (its duration_s: when the stage last ran)


@dataclass(frozen=True)
class BuildResult:
    build_dir: Path
    stages: tuple[StageOutcome, ...]
    manifest_path: Path
    report_path: Path
    bundle_dir: Path
    deployable: bool  # False for a rehearsal with the DFC test double
    warnings: tuple[str, ...]
    duration_s: float

    @property
    def ran(self) -> tuple[str, ...]:
        return tuple(s.stage for s in self.stages if s.status == "ran")

    @property
    def up_to_date(self) -> tuple[str, ...]:
        return tuple(s.stage for s in self.stages if s.status == "up to date")


@dataclass(frozen=True)
class Layout:
    """Where a build's files live (contract: build directory)."""

    root: Path

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def export_json(self) -> Path:
        return self.export_dir / "export.json"

    @property
    def calib_dir(self) -> Path:
        return self.root / "calib"

    @property
    def encoder_calib(self) -> Path:
        return self.calib_dir / "encoder_calib.npy"

    @property
    def encoder_calib_manifest(self) -> Path:
        return self.calib_dir / "encoder_calib.manifest.json"

    @property
    def decoder_calib(self) -> Path:
        return self.calib_dir / "decoder_calib.npz"

    @property
    def decoder_calib_manifest(self) -> Path:
        return self.calib_dir / "decoder_calib.manifest.json"

    @property
    def download_dir(self) -> Path:
        return self.calib_dir / "download"

    def dfc_dir(self, model: str) -> Path:
        return self.root / "dfc" / model

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def bundle_dir(self) -> Path:
        return self.root / "bundle"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"


# --- the tools that run the stages --------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """What runs a stage: an image (Docker) or this environment (native)."""

    image: str  # "export" | "dfc3" | "dfc5"
    tag: Optional[str]  # Docker image tag; None natively
    identity: Mapping[str, Any]  # goes into the stage keys

    def to_json(self) -> dict:
        return {"image": self.image, "tag": self.tag, **self.identity}


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
                  log_dir: Optional[Path] = None, console=None) -> dict[str, Tool]:
    """The export tool and the DFC tool; builds (or finds up to date) the images in Docker mode."""
    dfc_image = spec.arch.image
    if options.no_docker:
        python = {"python": platform.python_version()}
        dfc = _native_dfc_identity(options.stage_env)
        return {
            "export": Tool("export", None, {"mode": "native", **python}),
            "dfc": Tool(dfc_image, None, {"mode": "native", **python, **dfc}),
        }
    from pipeline.host.docker_engine import ensure_image  # host side only: native mode needs no docker-py

    tools = {}
    for role, target in (("export", "export"), ("dfc", dfc_image)):
        ref = ensure_image(target, base_image=options.base_image, wheelhouse=options.wheelhouse,
                           vendor_dir=options.vendor_dir, log_dir=log_dir, console=console)
        identity = {"mode": "docker", "image_id": ref.id}
        if role == "dfc":
            identity["dfc_version"] = wheel_version
        tools[role] = Tool(target, ref.tag, identity)
    return tools


# --- preflight ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preflight:
    gpu_device_ids: tuple[str, ...]
    gpu: Mapping[str, Any]  # GpuChoice.to_json() or {"mode": "cpu"}
    wheel_version: Optional[str]
    wheel_is_test_double: bool
    warnings: tuple[str, ...]


def preflight(options: BuildOptions, spec: BuildSpec, layout: Layout, doctor_probes=None) -> Preflight:
    """The doctor's checks plus the build's own inputs; raises once with every blocker."""
    from pipeline.host.doctor import WARN, Probes, run_doctor
    from pipeline.host.vendor import find_dfc_wheel

    report = run_doctor(
        spec.arch.name,
        vendor_dir=options.vendor_dir,
        build_dir=layout.root,
        cpu=options.cpu,
        allow_gpu=options.allow_gpu,
        no_docker=options.no_docker,
        probes=doctor_probes or Probes(),
    )
    blockers = [f"{c.name}: {c.detail}" + (f" Fix: {c.fix}" if c.fix else "") for c in report.blockers]
    warnings = [f"{c.name}: {c.detail}" for c in report.checks if c.status == WARN]

    if options.model and (options.model.startswith((".", "/", "~")) or Path(options.model).exists()):
        if not Path(options.model).expanduser().is_dir():
            blockers.append(f"model: {options.model} is not a folder. Fix: pass a Hugging Face id "
                            "(e.g. openai/whisper-tiny) or a folder with a Whisper checkpoint.")
    if options.calib_dir is None and not options.calib_download:
        blockers.append("calibration audio: none given; the optimizer quantizes with real speech. Fix: pass "
                        "--calib DIR (a folder of speech recordings, e.g. LibriSpeech) or --calib-download.")
    if options.calib_dir is not None:
        calib_dir = Path(options.calib_dir)
        if not calib_dir.is_dir():
            blockers.append(f"calibration audio: {calib_dir} is not a folder. Fix: pass --calib with a "
                            "folder of speech recordings, or --calib-download.")
        elif not _audio_files(calib_dir):
            blockers.append(f"calibration audio: no audio files under {calib_dir}. Fix: pass a folder "
                            "with wav/flac/ogg speech, or --calib-download.")
    if options.model_script is not None:
        for model in MODELS:
            try:
                _model_script_path(options, model)
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


def calibration_entries_needed(options: BuildOptions, spec: BuildSpec) -> int:
    """The most calibration entries either model script uses (calibset_size, fine-tune dataset_size)."""
    return max(_resolved_script(options, spec, m).needs.entries for m in MODELS)


def _audio_files(directory: Path) -> list[Path]:
    try:
        from calib.audio import AUDIO_EXTENSIONS
    except ImportError:  # calib's dependencies (soundfile) are not on this host
        AUDIO_EXTENSIONS = _AUDIO_SUFFIXES_FALLBACK
    return files_under(directory, tuple(AUDIO_EXTENSIONS))


def _model_script_path(options: BuildOptions, model: str) -> Optional[Path]:
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


def _resolved_script(options: BuildOptions, spec: BuildSpec, model: str):
    from pipeline.dfc.model_scripts import resolve_model_script

    return resolve_model_script(spec.variant.name, spec.arch.name, model, options.profile,
                                model_script=_model_script_path(options, model))


# --- running the stages -------------------------------------------------------------------------


class _Console:
    """Stage status lines (rich) and the stream the launcher tees stage output to."""

    def __init__(self, console=None, stream_logs: bool = True):
        from rich.console import Console

        self.rich = console or Console(highlight=False)
        self.stream = self.rich.file if stream_logs else io.StringIO()

    def up_to_date(self, stage: str, record: StageRecord) -> None:
        self.rich.print(f"[green]✓[/] {stage:<18} up to date [dim](ran {record.finished_at}, "
                        f"{record.duration_s:.1f} s)[/]")

    def running(self, stage: str) -> None:
        self.rich.print(f"[cyan]▶[/] {stage:<18} running …")

    def done(self, stage: str, duration_s: float) -> None:
        self.rich.print(f"[green]✓[/] {stage:<18} done in {duration_s:.1f} s")

    def warn(self, text: str) -> None:
        self.rich.print(f"[yellow]warning:[/] {text}")


class _Builder:
    """Runs one build's stages in order (state shared between the stage methods)."""

    def __init__(self, options: BuildOptions, spec: BuildSpec, layout: Layout, pre: Preflight,
                 tools: Mapping[str, Tool], cache: StageCache, ui: _Console):
        self.options, self.spec, self.layout, self.pre = options, spec, layout, pre
        self.tools, self.cache, self.ui = tools, cache, ui
        self.outcomes: list[StageOutcome] = []
        self._docker_client = None
        self._gpu_probed = False

    # one stage ----------------------------------------------------------------------------------

    def stage(
        self,
        name: str,
        inputs: StageInputs,
        run: Callable[[], None],
        outputs: Callable[[], Sequence[Path]],
        context: Optional[Mapping[str, Any]] = None,
    ) -> StageRecord:
        started = time.monotonic()
        key, described = self.cache.key(name, inputs)
        if self.cache.is_up_to_date(name, key):
            record = self.cache.load(name)
            self.ui.up_to_date(name, record)
            self.outcomes.append(StageOutcome(name, "up to date", time.monotonic() - started, record))
            return record
        self.ui.running(name)
        run()
        duration = time.monotonic() - started
        record = self.cache.save(name, key, described, outputs(), duration, context)
        self.ui.done(name, duration)
        self.outcomes.append(StageOutcome(name, "ran", duration, record))
        return record

    def launch(self, name: str, tool: Tool, argv: Sequence[str], read_only: Sequence[Path] = ()) -> None:
        from pipeline.host.launcher import StageCommand, run_stage

        model, _, kind = name.rpartition("-")
        log_name = f"{model or name}-{kind}.log" if model else f"{name}.log"
        stall = self.options.stall_timeouts.get(name, self.options.stall_timeouts.get(kind))
        cmd = StageCommand(
            name=name,
            image=tool.image,
            argv=tuple(argv),
            build_dir=self.layout.root,
            log_path=self.layout.logs / log_name,
            read_only_paths=tuple(read_only),
            gpu_device_ids=self.pre.gpu_device_ids if tool.image != "export" else (),
            env=self.stage_env(tool),
            stall_timeout_s=stall,
        )
        if not self.options.no_docker and self._docker_client is None:
            from pipeline.host.docker_engine import connect

            self._docker_client = connect()
        if cmd.gpu_device_ids and not self._gpu_probed:
            self.probe_gpu(tool)
        run_stage(cmd, native=self.options.no_docker, image_tag=tool.tag, console=self.ui.stream,
                  docker_client=self._docker_client)

    def stage_env(self, tool: Tool) -> dict[str, str]:
        env = dict(self.options.stage_env)
        if tool.image == "export":
            env.update(self.options.export_env)
            if not self.options.no_docker:
                # The container's home is thrown away: keep Hugging Face downloads in the build
                # directory (mounted read-write) so a rerun does not fetch the weights again.
                env.setdefault("HF_HOME", str(self.layout.root / ".cache" / "huggingface"))
        return env

    def probe_gpu(self, tool: Tool) -> None:
        """Once per build, before the first DFC stage on a GPU: a card that would hang the
        optimizer is reported within the probe's timeout instead of hours later."""
        from pipeline.host.hang_probe import HangProbe, run_hang_probe

        devices = self.pre.gpu.get("devices") or [{}]
        advice = next((v.get("advice", "") for v in self.pre.gpu.get("verdicts", [])
                       if v.get("gpu", {}).get("uuid") == devices[0].get("uuid")), "")
        probe = HangProbe(image=tool.image, gpu_device_ids=self.pre.gpu_device_ids,
                          gpu_name=devices[0].get("name", "the GPU"), advice=advice,
                          build_dir=self.layout.root, log_path=self.layout.logs / "gpu-hang-probe.log",
                          timeout_s=self.options.hang_probe_timeout_s)
        self.ui.running("gpu-hang-probe")
        took = run_hang_probe(probe, native=self.options.no_docker, image_tag=tool.tag, console=self.ui.stream,
                              docker_client=self._docker_client)
        self.ui.done("gpu-hang-probe", took)
        self._gpu_probed = True

    def tool_identity(self, tool: Tool, *entry_modules: str) -> dict:
        identity = dict(tool.identity)
        if tool.tag is None:  # native: the code is this checkout
            identity["code"] = code_fingerprint(entry_modules)
        return identity

    # the stages ---------------------------------------------------------------------------------

    def export(self) -> dict:
        o, spec, lay = self.options, self.spec, self.layout
        tool = self.tools["export"]
        model = o.model or spec.variant.hf_id
        model_path = Path(model).expanduser()
        files, read_only = {}, []
        if model_path.is_dir():
            model = str(model_path.absolute())
            files = {f"model/{p.relative_to(model_path)}": p for p in files_under(model_path)}
            read_only = [model_path.absolute()]
        argv = ["python", "-m", "pipeline.export.export", "--variant", spec.variant.name, "--model", model,
                "--seconds", f"{spec.seconds:g}", "--seq-len", str(spec.seq_len), "--out", str(lay.export_dir)]
        inputs = StageInputs(
            files=files,
            params={"variant": spec.variant.name, "model": model if not files else "local folder",
                    "seconds": spec.seconds, "seq_len": spec.seq_len},
            tool=self.tool_identity(tool, "pipeline.export.export"),
        )
        self.stage("export", inputs, lambda: self.launch("export", tool, argv, read_only),
                   lambda: self._export_outputs(), context={"tool": tool.to_json()})
        return self.read_export()

    def read_export(self) -> dict:
        try:
            return json.loads(self.layout.export_json.read_text())
        except (FileNotFoundError, ValueError) as err:
            raise ToolchainError(f"{self.layout.export_json} is missing or unreadable ({err}).",
                                 "Rerun the build with --force export.") from None

    def _export_outputs(self) -> list[Path]:
        meta = self.read_export()
        return [self.layout.export_json] + [self.layout.export_dir / name for name in sorted(meta.get("files", {}))]

    def calib_needed(self) -> int:
        return calibration_entries_needed(self.options, self.spec)

    def calib_size(self) -> int:
        return self.options.calib_size if self.options.calib_size is not None else self.calib_needed()

    def audio_dir(self) -> Path:
        if self.options.calib_dir is not None:
            return Path(self.options.calib_dir).absolute()
        target = self.layout.download_dir
        if not _audio_files(target):
            # Not a cached stage: the download is resumable and verified by its own checksum.
            self.ui.running("calib-download")
            started = time.monotonic()
            self.launch("calib-download", self.tools["export"],
                        ["python", "-m", "calib", "download", "--dest", str(target)])
            self.ui.done("calib-download", time.monotonic() - started)
        return target

    def encoder_calib(self) -> None:
        lay, tool = self.layout, self.tools["export"]
        audio = self.audio_dir()
        size, needed = self.calib_size(), self.calib_needed()
        # --min-entries: a set too small for the fine-tune fails here, not hours into optimize.
        argv = ["python", "-m", "calib", "encoder", "--audio", str(audio), "--seconds", f"{self.spec.seconds:g}",
                "--size", str(size), "--min-entries", str(needed), "--out", str(lay.encoder_calib)]
        inputs = StageInputs(
            files={f"audio/{p.relative_to(audio)}": p for p in _audio_files(audio)},
            params={"seconds": self.spec.seconds, "size": size, "min_entries": needed},
            tool=self.tool_identity(tool, "calib.__main__", "calib"),
        )
        read_only = [audio] if self.options.calib_dir is not None else []
        self.stage("encoder-calib", inputs, lambda: self.launch("encoder-calib", tool, argv, read_only),
                   lambda: [lay.encoder_calib, lay.encoder_calib_manifest], context={"tool": tool.to_json()})

    def decoder_calib(self) -> None:
        lay, tool = self.layout, self.tools["export"]
        # Only as many pairs as the decoder's script uses: greedy decoding is the slow part
        # (about 0.5 s per entry on 2 cores) and the encoder set is sized for the encoder's fine-tune.
        size = _resolved_script(self.options, self.spec, "decoder").needs.entries
        argv = ["python", "-m", "calib", "decoder", "--encoder-set", str(lay.encoder_calib),
                "--export-dir", str(lay.export_dir), "--size", str(size), "--out", str(lay.decoder_calib)]
        inputs = StageInputs(
            files={"encoder_calib": lay.encoder_calib, **self._export_files()},
            params={"size": size},
            tool=self.tool_identity(tool, "calib.__main__", "calib"),
        )
        self.stage("decoder-calib", inputs, lambda: self.launch("decoder-calib", tool, argv),
                   lambda: [p for p in (lay.decoder_calib, lay.decoder_calib_manifest) if p.exists()],
                   context={"tool": tool.to_json()})

    def _export_files(self) -> dict[str, Path]:
        return {f"export/{p.name}": p for p in self._export_outputs()}

    def _dfc_context(self) -> dict:
        return {"tool": self.tools["dfc"].to_json(), "gpu": dict(self.pre.gpu)}

    def parse(self, model: str, export: dict) -> None:
        lay, tool, arch = self.layout, self.tools["dfc"], self.spec.arch.name
        out = lay.dfc_dir(model)
        net = export[model]["net_name"]
        argv = ["python", "-m", "pipeline.dfc.parse", "--export-dir", str(lay.export_dir), "--model", model,
                "--arch", arch, "--out-dir", str(out)]
        inputs = StageInputs(
            files={"export.json": lay.export_json, "onnx": lay.export_dir / export[model]["onnx"]},
            params={"model": model, "arch": arch},
            tool=self.tool_identity(tool, "pipeline.dfc.parse"),
        )
        self.stage(f"{model}-parse", inputs, lambda: self.launch(f"{model}-parse", tool, argv),
                   lambda: [out / f"{net}.har", out / "parse.json"], context=self._dfc_context())

    def optimize(self, model: str, export: dict) -> None:
        lay, tool, arch = self.layout, self.tools["dfc"], self.spec.arch.name
        out = lay.dfc_dir(model)
        net = export[model]["net_name"]
        calib = lay.encoder_calib if model == "encoder" else lay.decoder_calib
        script = _resolved_script(self.options, self.spec, model)
        argv = ["python", "-m", "pipeline.dfc.optimize", "--har", str(out / f"{net}.har"), "--model", model,
                "--export-dir", str(lay.export_dir), "--calib", str(calib), "--arch", arch]
        script_path = _model_script_path(self.options, model)
        argv += ["--model-script", str(script_path)] if script_path else ["--profile", self.options.profile]
        argv += ["--out-dir", str(out)]
        inputs = StageInputs(
            files={"har": out / f"{net}.har", "calib": calib, "export.json": lay.export_json},
            params={"model": model, "arch": arch, "script_source": script.source},
            texts={"model_script": script.text},
            tool=self.tool_identity(tool, "pipeline.dfc.optimize"),
        )
        read_only = [script_path] if script_path else []
        self.stage(f"{model}-optimize", inputs, lambda: self.launch(f"{model}-optimize", tool, argv, read_only),
                   lambda: [out / f"{net}_optimized.har", out / "optimize.json", out / f"{net}.alls",
                            out / f"{net}.layers.json"],
                   context=self._dfc_context())

    def compile(self, model: str, export: dict) -> None:
        lay, tool, arch = self.layout, self.tools["dfc"], self.spec.arch.name
        out = lay.dfc_dir(model)
        net = export[model]["net_name"]
        argv = ["python", "-m", "pipeline.dfc.compile", "--har", str(out / f"{net}_optimized.har"), "--arch", arch,
                "--out-dir", str(out), "--model-script", str(out / f"{net}.alls")]
        inputs = StageInputs(
            files={"optimized_har": out / f"{net}_optimized.har", "model_script": out / f"{net}.alls"},
            params={"arch": arch},
            tool=self.tool_identity(tool, "pipeline.dfc.compile"),
        )
        self.stage(f"{model}-compile", inputs, lambda: self.launch(f"{model}-compile", tool, argv),
                   lambda: [out / f"{net}.hef", out / f"{net}_compiled.har", out / "compile.json"],
                   context=self._dfc_context())

    def dfc_results(self, export: dict) -> dict:
        """{model: {"parse": {...}, "optimize": {...}, "compile": {...}}} from the stage JSONs."""
        results = {}
        for model in MODELS:
            results[model] = {}
            for step in ("parse", "optimize", "compile"):
                path = self.layout.dfc_dir(model) / f"{step}.json"
                try:
                    results[model][step] = json.loads(path.read_text())
                except (FileNotFoundError, ValueError):
                    results[model][step] = {}
        return results

    def hef_paths(self, export: dict) -> dict[str, Path]:
        return {m: self.layout.dfc_dir(m) / f"{export[m]['net_name']}.hef" for m in MODELS}

    def bundle(self, export: dict, rehearsal: bool) -> None:
        from pipeline.host.bundle import BUNDLE_FORMAT, make_bundle, bundle_files

        lay = self.layout
        results = self.dfc_results(export)
        dfc_version = dfc_version_of(results, self.pre.wheel_version, self.tools["dfc"].identity.get("dfc_version"))
        hefs = self.hef_paths(export)
        inputs = StageInputs(
            files={**{f"{m}.hef": p for m, p in hefs.items()}, **self._export_files()},
            params={"format": BUNDLE_FORMAT, "variant": self.spec.variant.name, "arch": self.spec.arch.name,
                    "seconds": self.spec.seconds, "seq_len": self.spec.seq_len, "dfc_version": dfc_version,
                    "rehearsal": rehearsal},
            tool={"code": code_fingerprint(["pipeline.host.bundle"])},
        )
        self.stage(
            "bundle", inputs,
            lambda: make_bundle(lay.bundle_dir, spec=self.spec, export=export, export_dir=lay.export_dir,
                                hefs=hefs, dfc_version=dfc_version, rehearsal=rehearsal),
            lambda: bundle_files(lay.bundle_dir, export),
        )

    def report(self, export: dict, rehearsal: bool, build_warnings: Sequence[str]) -> None:
        from pipeline.host.manifest import make_manifest, write_report

        lay = self.layout
        inputs = StageInputs(
            params={"rehearsal": rehearsal, "gpu": dict(self.pre.gpu), "warnings": list(build_warnings)},
            tool={"code": code_fingerprint(["pipeline.host.manifest"])},
        )

        def run() -> None:
            manifest = make_manifest(
                build_dir=lay.root, spec=self.spec, options=self.options, export=export,
                dfc_results=self.dfc_results(export), records={s: self.cache.load(s) for s in STAGE_ORDER},
                tools={k: t.to_json() for k, t in self.tools.items()}, gpu=self.pre.gpu,
                hefs=self.hef_paths(export), rehearsal=rehearsal, warnings=build_warnings,
                repo_root=REPO_ROOT,
            )
            write_report(manifest, lay.manifest, lay.report)

        self.stage("report", inputs, run, lambda: [lay.manifest, lay.report])


def dfc_version_of(results: Mapping[str, Mapping[str, Mapping]], *fallbacks: Optional[str]) -> Optional[str]:
    """The DFC version the stage results report (parse/optimize/compile JSON "dfc_version")."""
    for model in MODELS:
        for step in ("compile", "optimize", "parse"):
            version = results.get(model, {}).get(step, {}).get("dfc_version")
            if version:
                return str(version)
    return next((v for v in fallbacks if v), None)


def is_rehearsal(results: Mapping[str, Mapping[str, Mapping]], wheel_is_test_double: bool,
                 *versions: Optional[str]) -> bool:
    """True when the HEFs come from the DFC test double (its wheel, or its version in the results)."""
    reported = [dfc_version_of(results)] + list(versions)
    return wheel_is_test_double or any(v and "testdouble" in v for v in reported)


def run_build(options: BuildOptions, *, console=None, doctor_probes=None) -> BuildResult:
    """Run (or resume) the build described by `options`; see the module docstring."""
    started = time.monotonic()
    spec = options.spec
    layout = Layout(options.build_dir)
    ui = _Console(console, options.stream_logs)
    ui.rich.rule(f"whisper-hailo build: {spec.variant.name} {spec.seconds_tag} seq {spec.seq_len} → "
                 f"{spec.arch.name} in {layout.root}")
    pre = preflight(options, spec, layout, doctor_probes)
    for w in pre.warnings:
        ui.warn(w)
    with BuildLock(layout.root, warn=ui.warn):
        cache = StageCache(layout.root)
        forced = resolve_force(options.force)
        if forced:
            cache.invalidate(forced)
            ui.rich.print(f"--force: rerunning {', '.join(s for s in STAGE_ORDER if s in forced)}")
        tools = resolve_tools(options, spec, pre.wheel_version, layout.logs, ui.stream)
        builder = _Builder(options, spec, layout, pre, tools, cache, ui)

        export = builder.export()
        builder.encoder_calib()
        builder.decoder_calib()
        for model in MODELS:
            builder.parse(model, export)
        for model in MODELS:
            builder.optimize(model, export)
        for model in MODELS:
            builder.compile(model, export)
        results = builder.dfc_results(export)
        rehearsal = is_rehearsal(results, pre.wheel_is_test_double, tools["dfc"].identity.get("dfc_version"))
        from pipeline.host.manifest import quality_warnings

        build_warnings = list(pre.warnings) + quality_warnings(export, results)
        builder.bundle(export, rehearsal)
        builder.report(export, rehearsal, build_warnings)
        result = BuildResult(
            build_dir=layout.root,
            stages=tuple(builder.outcomes),
            manifest_path=layout.manifest,
            report_path=layout.report,
            bundle_dir=layout.bundle_dir,
            deployable=not rehearsal,
            warnings=tuple(build_warnings),
            duration_s=time.monotonic() - started,
        )
    from pipeline.host.manifest import print_summary

    print_summary(result, json.loads(layout.manifest.read_text()), ui.rich)
    return result
