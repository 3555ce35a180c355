"""`invoke build` / `make hef`: every stage in order, each skipped when its stage cache says it is
up to date.

    doctor preflight (every blocker at once, before any long work)
    export -> encoder calib -> decoder calib -> parse -> optimize -> compile (encoder, decoder)
    -> bundle -> report

With `decoder="cpu"` the decoder's calibration, parse, optimize and compile do not run: the
bundle carries the export's cached decoder ONNX (float and int8) for the host instead of a
decoder HEF.

Export, calibration and the DFC stages run through the stage launcher (`pipeline.host.launcher`): in
the `export` image and the DFC image the wheel picks (`dfc-cuda11`/`dfc-cuda12`), or natively with
`no_docker`. Host paths are
mounted at the same absolute paths, so each stage's command line (its config's `to_argv()`, written
beside the stage's parser) is the same in both modes. Bundle and
report are host-side file work and run in this process.

Each stage is keyed by `pipeline.host.stage_cache` (input hashes, parameters, model script, the tool
that runs it); a rerun skips what is up to date, and a killed run resumes at the stage that did
not finish, because records are only written after a stage's outputs are in place. A stage that
reruns removes the outputs of its previous run that it did not write again (another input length
names its files differently), so no file of older settings ships.

The build owns its stage (`pipeline.host.stop_signals`): Ctrl-C, SIGTERM and SIGHUP stop it and
release the lock; after a SIGKILL, the next build first stops the containers the dead one left,
then takes the lock, then removes the dead run's partial files.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from calib.config import DecoderSetConfig, DownloadConfig, EncoderSetConfig
from pipeline.dfc.compile import CompileConfig
from pipeline.dfc.optimize import OptimizeConfig
from pipeline.dfc.parse import ParseConfig
from pipeline.errors import ToolchainError, filesystem_errors
from pipeline.export.export import ExportConfig
from pipeline.export.meta import read_export_json
from pipeline.host.build_gate import run_gate
from pipeline.files import remove_partial_files
from pipeline.host.build_lock import BuildLock
from pipeline.host.ladder_in_image import ImageEmulation
from pipeline.host.build_options import BuildOptions, BuildResult, StageOutcome
from pipeline.host.bundle import BUNDLE_FORMAT, bundle_files, make_bundle
from pipeline.host.bundle_runtime import EXPORT_IMAGE_CONSTRAINTS, PYPROJECT, RUNTIME_ENTRY_MODULES, find_hailort_wheel
from pipeline.host.code_closure import code_fingerprint
from pipeline.host.manifest import (dfc_version_of, is_rehearsal, make_manifest, print_summary, quality_warnings,
                                   recorded_build, write_report)
from pipeline.host.preflight import (Preflight, Tool, audio_files, calibration_entries_needed, model_script_path,
                                     preflight, resolve_tools, resolved_script)
from pipeline.host.stage_cache import STAGE_ORDER, StageCache, StageInputs, StageRecord, files_under, resolve_force
from pipeline.host.stage_runner import BuildConsole, StageRunner
from pipeline.host.stop_signals import stop_on_signals
from pipeline.layout import REPO_ROOT, Layout
from pipeline.tables import MODELS, BuildSpec

# --- what the stages wrote ----------------------------------------------------------------------


def export_outputs(layout: Layout) -> list[Path]:
    """export.json and every file it lists (the export stage's outputs)."""
    meta = read_export_json(layout.export_dir)
    return [layout.export_json] + [layout.export_dir / name for name in sorted(meta.get("files", {}))]


def export_files(layout: Layout) -> dict[str, Path]:
    """The export's outputs as stage-key inputs of a later stage."""
    return {f"export/{p.name}": p for p in export_outputs(layout)}


def dfc_results(layout: Layout, models: Sequence[str] = MODELS) -> dict:
    """{model: {"parse": {...}, "optimize": {...}, "compile": {...}}} from the stage JSONs ({} when missing)."""
    results = {}
    for model in models:
        results[model] = {}
        for step in ("parse", "optimize", "compile"):
            try:
                results[model][step] = json.loads(layout.dfc_result(model, step).read_text())
            except (FileNotFoundError, ValueError):
                results[model][step] = {}
    return results


def hef_paths(layout: Layout, export: Mapping, models: Sequence[str] = MODELS) -> dict[str, Path]:
    return {m: layout.hef(m, export[m]["net_name"]) for m in models}


def predates_cached_decoder(layout: Layout) -> bool:
    """True for a finished export made before the cached decoder existed (export.json has no entry)."""
    try:
        return "cached_decoder" not in read_export_json(layout.export_dir)
    except ToolchainError:  # no finished export: nothing to say, the stage runs anyway
        return False


# --- running the stages -------------------------------------------------------------------------


class _Builder:
    """Runs one build's stages in order (state shared between the stage methods)."""

    def __init__(self, options: BuildOptions, spec: BuildSpec, layout: Layout, pre: Preflight,
                 tools: Mapping[str, Tool], cache: StageCache, ui: BuildConsole, probe_gpu: bool = True):
        self.options, self.spec, self.layout, self.pre = options, spec, layout, pre
        self.tools, self.cache, self.ui = tools, cache, ui
        self.outcomes: list[StageOutcome] = []
        self.runner = StageRunner(options, layout, pre, ui, probe_gpu=probe_gpu)
        self.launch = self.runner.launch

    def run_stage(self, stage: str) -> StageOutcome:
        """Run (or find up to date) one stage by name; its upstream stages must be done."""
        if stage == "export":
            self.export()
        elif stage in ("encoder-calib", "decoder-calib"):
            self.encoder_calib() if stage == "encoder-calib" else self.decoder_calib()
        elif stage in ("bundle", "report"):
            export = read_export_json(self.layout.export_dir)
            if stage == "bundle":
                self.bundle(export, self.rehearsal())
            else:
                self.report(export, self.rehearsal(), self.build_warnings(export))
        else:
            model, _, step = stage.partition("-")
            if model not in MODELS or step not in ("parse", "optimize", "compile"):
                raise ValueError(f"unknown stage {stage!r}")
            getattr(self, step)(model, read_export_json(self.layout.export_dir))
        return self.outcomes[-1]

    def run_stages(self, stages: Sequence[str]) -> None:
        for stage in stages:
            self.run_stage(stage)

    def on_gpu(self, device_id: str) -> "_Builder":
        """A builder for one model's chain on one GPU: this build's tools, console and outcome list,
        its own stage cache object (the hash memo is not shared between threads)."""
        twin = _Builder(self.options, self.spec, self.layout, replace(self.pre, gpu_device_ids=(device_id,)),
                        self.tools, StageCache(self.layout.root), self.ui)
        twin.outcomes = self.outcomes
        twin.runner.share_from(self.runner)
        return twin

    def rehearsal(self) -> bool:
        return is_rehearsal(dfc_results(self.layout, self.options.dfc_models), self.pre.wheel_is_test_double,
                            self.tools["dfc"].identity.get("dfc_version"))

    def image_emulation(self) -> ImageEmulation:
        """The WER gate's emulator rows as stage containers in this build's DFC image (Docker mode)."""
        tool = self.tools["dfc"]
        return ImageEmulation(lambda name, config: self.launch(name, tool, config),
                              str(tool.identity.get("dfc_version") or "unknown"))

    def build_warnings(self, export: Mapping) -> list[str]:
        return list(self.pre.warnings) + quality_warnings(export, dfc_results(self.layout, self.options.dfc_models))

    # one stage ----------------------------------------------------------------------------------

    def stage(
        self,
        name: str,
        inputs: StageInputs,
        run: Callable[[], None],
        outputs: Callable[[], Sequence[Path]],
        context: Optional[Mapping[str, Any]] = None,
    ) -> StageRecord:
        started, started_at = time.monotonic(), time.time()
        key, described = self.cache.key(name, inputs)
        if self.cache.is_up_to_date(name, key):
            record = self.cache.load(name)
            self.ui.up_to_date(name, record)
            self.outcomes.append(StageOutcome(name, "up to date", time.monotonic() - started, record, started_at))
            return record
        self.ui.running(name)
        previous = self.cache.load(name)
        run()
        duration = time.monotonic() - started
        record = self.cache.save(name, key, described, outputs(), duration, context)
        if previous is not None:
            self.remove_stale(previous, record)
        self.ui.done(name, duration)
        self.outcomes.append(StageOutcome(name, "ran", duration, record, started_at))
        return record

    def remove_stale(self, previous: StageRecord, record: StageRecord) -> None:
        """Delete what the stage's previous run wrote and this run did not (e.g. the HEFs of another
        input length): a rerun owns its outputs."""
        for rel in set(previous.outputs) - set(record.outputs):
            (self.layout.root / rel).unlink(missing_ok=True)

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
        config = ExportConfig(spec=spec, out_dir=lay.export_dir, model=model)
        if predates_cached_decoder(lay):
            self.ui.warn(f"The export in {lay.export_dir} was made before the cached (KV-cache) decoder existed: "
                         "export.json has no cached_decoder entry. Running the export again.")
            self.cache.invalidate(["export"])
        inputs = StageInputs(
            files=files,
            params={"variant": spec.variant.name, "model": model if not files else "local folder",
                    "seconds": spec.seconds, "seq_len": spec.seq_len},
            tool=tool.identity_for(ExportConfig.MODULE),
        )
        self.stage("export", inputs, lambda: self.launch("export", tool, config, read_only),
                   lambda: export_outputs(lay), context={"tool": tool.to_json()})
        return read_export_json(lay.export_dir)

    def audio_dir(self) -> Path:
        if self.options.calib_dir is not None:
            return Path(self.options.calib_dir).absolute()
        target = self.layout.download_dir
        if not audio_files(target):
            # Not a cached stage: the download is resumable and verified by its own checksum.
            self.ui.running("calib-download")
            started = time.monotonic()
            self.launch("calib-download", self.tools["export"], DownloadConfig(dest=target))
            self.ui.done("calib-download", time.monotonic() - started)
        return target

    def encoder_calib(self) -> None:
        lay, tool = self.layout, self.tools["export"]
        audio = self.audio_dir()
        needed = calibration_entries_needed(self.options, self.spec)
        size = self.options.calib_size if self.options.calib_size is not None else needed
        # min_entries: a set too small for the fine-tune fails here, not hours into optimize.
        config = EncoderSetConfig(audio_dir=audio, out=lay.encoder_calib, seconds=self.spec.seconds, size=size,
                                  min_entries=needed)
        inputs = StageInputs(
            files={f"audio/{p.relative_to(audio)}": p for p in audio_files(audio)},
            params={"seconds": self.spec.seconds, "size": size, "min_entries": needed},
            tool=tool.identity_for("calib.__main__", "calib"),
        )
        read_only = [audio] if self.options.calib_dir is not None else []
        self.stage("encoder-calib", inputs, lambda: self.launch("encoder-calib", tool, config, read_only),
                   lambda: [lay.encoder_calib, lay.encoder_calib_manifest], context={"tool": tool.to_json()})

    def decoder_calib(self) -> None:
        lay, tool = self.layout, self.tools["export"]
        # Only as many pairs as the decoder's script uses: greedy decoding is the slow part
        # (about 0.5 s per entry on 2 cores) and the encoder set is sized for the encoder's fine-tune.
        size = resolved_script(self.options, self.spec, "decoder").needs.entries
        config = DecoderSetConfig(encoder_set=lay.encoder_calib, export_dir=lay.export_dir, out=lay.decoder_calib,
                                  size=size)
        inputs = StageInputs(
            files={"encoder_calib": lay.encoder_calib, **export_files(lay)},
            params={"size": size},
            tool=tool.identity_for("calib.__main__", "calib"),
        )
        self.stage("decoder-calib", inputs, lambda: self.launch("decoder-calib", tool, config),
                   lambda: [p for p in (lay.decoder_calib, lay.decoder_calib_manifest) if p.exists()],
                   context={"tool": tool.to_json()})

    def _dfc_context(self, kind: str) -> dict:
        tool = self.tools["dfc"]
        return {"tool": tool.to_json(), "gpu": dict(self.pre.gpu),
                "gpu_device_ids": list(self.runner.gpus_for(tool, kind))}  # this stage's own GPUs

    def parse(self, model: str, export: dict) -> None:
        lay, tool, arch = self.layout, self.tools["dfc"], self.spec.arch.name
        net = export[model]["net_name"]
        config = ParseConfig(export_dir=lay.export_dir, model=model, arch=arch, out_dir=lay.dfc_dir(model))
        inputs = StageInputs(
            files={"export.json": lay.export_json, "onnx": lay.export_dir / export[model]["onnx"]},
            params={"model": model, "arch": arch},
            tool=tool.identity_for(ParseConfig.MODULE),
        )
        self.stage(f"{model}-parse", inputs, lambda: self.launch(f"{model}-parse", tool, config),
                   lambda: [lay.har(model, net, "parse"), lay.dfc_result(model, "parse")], context=self._dfc_context("parse"))

    def optimize(self, model: str, export: dict) -> None:
        lay, tool, arch = self.layout, self.tools["dfc"], self.spec.arch.name
        net = export[model]["net_name"]
        script = resolved_script(self.options, self.spec, model)
        script_path = model_script_path(self.options, model)
        # A model script replaces the profile, which then stays at its default (not on the command line).
        config = OptimizeConfig(har=lay.har(model, net, "parse"), model=model, export_dir=lay.export_dir,
                                calib=lay.calib_set(model), arch=arch, out_dir=lay.dfc_dir(model),
                                **({"model_script": script_path} if script_path else {"profile": self.options.profile}))
        inputs = StageInputs(
            files={"har": config.har, "calib": config.calib, "export.json": lay.export_json},
            params={"model": model, "arch": arch, "script_source": script.source},
            texts={"model_script": script.text},
            tool=tool.identity_for(OptimizeConfig.MODULE),
        )
        read_only = [script_path] if script_path else []
        self.stage(f"{model}-optimize", inputs, lambda: self.launch(f"{model}-optimize", tool, config, read_only),
                   lambda: [lay.har(model, net, "optimize"), lay.dfc_result(model, "optimize"),
                            lay.used_model_script(model, net), lay.dfc_dir(model) / f"{net}.layers.json"],
                   context=self._dfc_context("optimize"))

    def compile(self, model: str, export: dict) -> None:
        lay, tool, arch = self.layout, self.tools["dfc"], self.spec.arch.name
        net = export[model]["net_name"]
        # compile loads the resolved script optimize wrote again (pipeline/dfc/compile.py)
        config = CompileConfig(har=lay.har(model, net, "optimize"), arch=arch, out_dir=lay.dfc_dir(model),
                               model_script=lay.used_model_script(model, net))
        inputs = StageInputs(
            files={"optimized_har": config.har, "model_script": config.model_script},
            params={"arch": arch},
            tool=tool.identity_for(CompileConfig.MODULE),
        )
        self.stage(f"{model}-compile", inputs, lambda: self.launch(f"{model}-compile", tool, config),
                   lambda: [lay.hef(model, net), lay.har(model, net, "compile"), lay.dfc_result(model, "compile")],
                   context=self._dfc_context("compile"))

    def bundle(self, export: dict, rehearsal: bool) -> None:
        lay = self.layout
        results = dfc_results(lay, self.options.dfc_models)
        dfc_version = dfc_version_of(results, self.pre.wheel_version, self.tools["dfc"].identity.get("dfc_version"))
        hefs = hef_paths(lay, export, self.options.dfc_models)
        hailort_wheel = find_hailort_wheel(self.options.vendor_dir)
        # The carried transcriber: its code is in the fingerprint, its requirements come from these files.
        runtime = {"pyproject": PYPROJECT, "export_constraints": EXPORT_IMAGE_CONSTRAINTS,
                   **({"hailort_wheel": hailort_wheel} if hailort_wheel else {})}
        inputs = StageInputs(
            files={**{f"{m}.hef": p for m, p in hefs.items()}, **export_files(lay), **runtime},
            params={"format": BUNDLE_FORMAT, "decoder": self.options.decoder,
                    "variant": self.spec.variant.name, "arch": self.spec.arch.name,
                    "seconds": self.spec.seconds, "seq_len": self.spec.seq_len, "dfc_version": dfc_version,
                    "rehearsal": rehearsal},
            tool={"code": code_fingerprint(["pipeline.host.bundle", *RUNTIME_ENTRY_MODULES])},
        )
        self.stage(
            "bundle", inputs,
            lambda: make_bundle(lay.bundle_dir, spec=self.spec, export=export, export_dir=lay.export_dir,
                                hefs=hefs, dfc_version=dfc_version, rehearsal=rehearsal, decoder=self.options.decoder,
                                hailort_wheel=hailort_wheel),
            lambda: bundle_files(lay.bundle_dir, export, self.options.decoder, hailort_wheel),
        )

    def report(self, export: dict, rehearsal: bool, build_warnings: Sequence[str]) -> None:
        lay = self.layout
        inputs = StageInputs(
            files={"ladder": lay.ladder_json} if lay.ladder_json.is_file() else {},
            params={"rehearsal": rehearsal, "gpu": dict(self.pre.gpu), "warnings": list(build_warnings),
                    "decoder": self.options.decoder},
            tool={"code": code_fingerprint(["pipeline.host.manifest"])},
        )

        def run() -> None:
            manifest = make_manifest(
                build_dir=lay.root, spec=self.spec, options=self.options, export=export,
                dfc_results=dfc_results(lay, self.options.dfc_models), records={s: self.cache.load(s) for s in STAGE_ORDER},
                tools={k: t.to_json() for k, t in self.tools.items()}, gpu=self.pre.gpu,
                hefs=hef_paths(lay, export, self.options.dfc_models), rehearsal=rehearsal, warnings=build_warnings,
                repo_root=REPO_ROOT,
            )
            write_report(manifest, lay.manifest, lay.report)

        self.stage("report", inputs, run, lambda: [lay.manifest, lay.report])


def run_cell_stage(options: BuildOptions, stage: str, pre: Preflight, *, console=None,
                   probe_gpu: bool = True) -> StageOutcome:
    """Run (or find up to date) ONE stage of the build `options` describes: the same tools, cache
    keys and outputs as `run_build`, for a scheduler that places the stages itself
    (`pipeline.host.matrix`). The caller holds the build's lock, has checked the inputs, and says in
    `pre` which GPUs this stage may use. probe_gpu: run the GPU hang probe before a stage on a GPU."""
    spec, layout = options.spec, Layout(options.build_dir)
    ui = BuildConsole(console, options.stream_logs)
    tools = resolve_tools(options, spec, pre.wheel_version, layout.logs, ui.stream)
    builder = _Builder(options, spec, layout, pre, tools, StageCache(layout.root), ui, probe_gpu=probe_gpu)
    return builder.run_stage(stage)


def image_emulation_for(build_dir: Path, vendor_dir: Path, base_image: Optional[str] = None,
                        wheelhouse: Optional[Path] = None, console=None) -> Optional[ImageEmulation]:
    """`invoke evaluate`'s emulator rows as emulate-stage containers in the DFC image of a Docker-mode
    build (its manifest.json says so), where this process has no DFC; None where they run here
    (the DFC imports, or the build ran natively) or the build has no manifest. The containers run
    on the CPU and take no build lock: they read the HARs and write only under <build>/eval/emulate/.
    `base_image`/`wheelhouse`: as the build was given them, so its image is found, not rebuilt."""
    import importlib.util

    from pipeline.host.vendor import find_dfc_wheel

    layout = Layout(Path(build_dir))
    build = recorded_build(layout)
    if importlib.util.find_spec("hailo_sdk_client") is not None or build.get("mode") != "docker":
        return None
    options = BuildOptions(variant=build["variant"], arch=build["arch"], seconds=build["seconds"],
                           seq_len=build["seq_len"], decoder=build.get("decoder", "hailo"), out=layout.root,
                           cpu=True, vendor_dir=Path(vendor_dir), base_image=base_image, wheelhouse=wheelhouse,
                           stream_logs=False)
    spec, ui = options.spec, BuildConsole(console, options.stream_logs)
    try:
        wheel = find_dfc_wheel(spec.arch.dfc, options.vendor_dir)
        pre = Preflight(gpu_device_ids=(), gpu={"mode": "cpu"}, wheel_version=wheel.version,
                        wheel_is_test_double=wheel.is_test_double, warnings=())
        tools = resolve_tools(options, spec, pre.wheel_version, layout.logs, ui.stream, roles=("dfc",))
    except ToolchainError as err:  # the other rows still run; these say the DFC is not here
        ui.warn(f"the emulator rows cannot run in the build's DFC image: {err}")
        return None
    return _Builder(options, spec, layout, pre, tools, StageCache(layout.root), ui, probe_gpu=False).image_emulation()


def _optimize_and_compile(builder: _Builder, models: Sequence[str], gate: Callable[[], None]) -> None:
    """Each model's optimize, then `gate` (the WER gate: it needs every optimized HAR and must stop
    the build before any compile), then each compile. With a GPU for each model, the optimize runs
    go side by side, one GPU each; without a gate a model compiles (on the CPU) while the other may
    still optimize. A chain that fails lets the other finish first."""
    devices = builder.pre.gpu_device_ids
    gated = builder.options.eval_dir is not None or builder.options.eval_download
    steps = (("optimize",), ("compile",)) if gated else (("optimize", "compile"),)
    for i, chain_steps in enumerate(steps):
        if i == 1:
            gate()
        if len(models) < 2 or len(devices) < len(models):
            builder.run_stages([f"{m}-{step}" for step in chain_steps for m in models])
            continue
        with ThreadPoolExecutor(max_workers=len(models), thread_name_prefix="model") as pool:
            chains = [pool.submit(builder.on_gpu(device).run_stages, [f"{model}-{step}" for step in chain_steps])
                      for model, device in zip(models, devices)]
        for chain in chains:
            chain.result()
    if not gated:
        gate()  # no evaluation speech: only clears an earlier build's table


def run_build(options: BuildOptions, *, console=None, doctor_probes=None) -> BuildResult:
    """Run (or resume) the build described by `options`; see the module docstring.

    Raises ToolchainError (also for read-only, permission, full-disk and quota errors, with the
    path), KeyboardInterrupt, or BuildStopped (SIGTERM/SIGHUP) after the stage was stopped."""
    with stop_on_signals(), filesystem_errors(where=str(options.build_dir)):
        return _run_build(options, console, doctor_probes)


def stop_orphan_stages(layout: Layout, ui: BuildConsole) -> None:
    """Docker mode, before the lock: stop and remove containers a killed build left in this folder."""
    from pipeline.host.docker_engine import connect, stop_orphan_containers  # Docker mode only

    for name in stop_orphan_containers(connect(), layout.root):
        ui.warn(f"Stopped and removed container {name}: a build of {layout.root} that no longer runs left it.")


def _run_build(options: BuildOptions, console, doctor_probes) -> BuildResult:
    started = time.monotonic()
    spec = options.spec
    layout = Layout(options.build_dir)
    ui = BuildConsole(console, options.stream_logs)
    ui.rich.rule(f"whisper-hailo build: {spec.variant.name} {spec.seconds_tag} seq {spec.seq_len} → "
                 f"{spec.arch.name} in {layout.root}")
    pre = preflight(options, spec, layout, doctor_probes)
    for w in pre.warnings:
        ui.warn(w)
    if not options.no_docker:
        stop_orphan_stages(layout, ui)
    with BuildLock(layout.root, warn=ui.warn):
        removed = remove_partial_files(layout.root)
        if removed:
            ui.warn(f"Removed {len(removed)} partial file(s) of an interrupted run, e.g. {removed[0]}.")
        cache = StageCache(layout.root)
        forced = resolve_force(options.force)
        if forced:
            cache.invalidate(forced)
            ui.rich.print(f"--force: rerunning {', '.join(s for s in STAGE_ORDER if s in forced)}")
        tools = resolve_tools(options, spec, pre.wheel_version, layout.logs, ui.stream)
        builder = _Builder(options, spec, layout, pre, tools, cache, ui)

        models = options.dfc_models  # without the decoder when it runs on the host CPU
        builder.run_stages(["export", "encoder-calib", *(["decoder-calib"] if "decoder" in models else []),
                            *(f"{m}-parse" for m in models)])
        _optimize_and_compile(builder, models, lambda: run_gate(
            options, layout, lambda table: ui.rich.print(table, markup=False, highlight=False),
            None if options.no_docker else builder.image_emulation()))
        builder.run_stages(("bundle", "report"))
        export = read_export_json(layout.export_dir)
        rehearsal, build_warnings = builder.rehearsal(), builder.build_warnings(export)
        result = BuildResult(
            build_dir=layout.root,
            stages=tuple(sorted(builder.outcomes, key=lambda o: STAGE_ORDER.index(o.stage))),
            manifest_path=layout.manifest,
            report_path=layout.report,
            bundle_dir=layout.bundle_dir,
            deployable=not rehearsal,
            warnings=tuple(build_warnings),
            duration_s=time.monotonic() - started,
        )
    print_summary(result, json.loads(layout.manifest.read_text()), ui.rich)
    return result
