"""invoke tasks: the user-facing commands. `invoke --list` shows them; `invoke <task> --help` explains flags.

Each task parses its flags, calls one function in `pipeline/` (or `calib/`), and turns a known
`ToolchainError` into a clear message and a non-zero exit. No logic lives here.

The `help=` tables are the command-line documentation (`invoke build --help`); turning flags into
options lives beside the options (pipeline/host/build_options.py `options_from_flags`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Exit, task

from pipeline.errors import ToolchainError
from pipeline.host.task_errors import friendly_errors as _friendly_errors, require_flags
from pipeline.layout import Layout
from pipeline.tables import DEFAULT_ARCH, DEFAULT_VARIANT, MODELS, resolve_spec


# --- foundation: GPU gate and doctor (pipeline/host/gpu.py, pipeline/host/doctor.py) -------------------


@task(
    help={
        "arch": "Hailo architecture to build for: hailo8, hailo8l (DFC 3.x) or hailo10h (DFC 5.x).",
        "vendor": "Folder holding your DFC wheel(s) from Hailo's Developer Zone (default: vendor).",
        "build_dir": "Where builds write; its disk must have room (default: build).",
        "cpu": "Plan to run the DFC stages on the CPU on purpose (fine-tuning then takes hours).",
        "allow_gpu": "Accept a GPU the gate refuses or does not know (loud warning; it may hang).",
        "no_docker": "Plan to run the stages natively: check the installed hailo_sdk_client instead of Docker.",
        "min_free_gb": "Free disk the build needs in GiB, as `invoke build --min-free-gb` (default 30).",
        "min_memory_gb": "Available memory the build needs in GiB, as `invoke build --min-memory-gb` (default 16).",
        "json": "Print the report as JSON (for machines) instead of a table.",
    }
)
@_friendly_errors
def doctor(c, arch=DEFAULT_ARCH, vendor="vendor", build_dir="build", cpu=False, allow_gpu=False,
           no_docker=False, min_free_gb=None, min_memory_gb=None, json=False):
    """List every blocker a build would hit, each with its fix.

    Checks GPUs and the gate's decision, the driver, Docker Engine, NVIDIA container runtime,
    the DFC wheel in vendor/, free disk and memory. Exits 1 when a build would fail.
    """
    from pipeline.host.build_options import resource_limits
    from pipeline.host.doctor import run_doctor

    report = run_doctor(arch, vendor_dir=Path(vendor), build_dir=Path(build_dir), cpu=cpu, allow_gpu=allow_gpu,
                        no_docker=no_docker, **resource_limits(min_free_gb, min_memory_gb))
    if json:
        print(report.to_json())
    else:
        report.render()
    if not report.ok:
        raise Exit(code=report.exit_code)


@task(
    help={
        "name": 'GPU name as NVML/nvidia-smi reports it, e.g. "NVIDIA L4" or "NVIDIA A100-SXM4-80GB".',
        "compute": "CUDA compute capability, e.g. 8.9 (L4), 8.0 (A100), 9.0 (H100).",
        "dfc_version": "DFC version whose image to judge for, e.g. 3.33.1 (default: the wheel in --vendor for --arch).",
        "arch": "Hailo architecture whose wheel gives the default version: hailo8, hailo8l (3.x) or hailo10h (5.x).",
        "vendor": "Folder holding your DFC wheel(s) (default: vendor).",
        "driver": "Optional NVIDIA driver version (e.g. 535); checked against the image's minimum.",
    }
)
@_friendly_errors
def gpu_check(c, name=None, compute=None, dfc_version=None, arch=DEFAULT_ARCH, vendor="vendor", driver=None):
    """Judge a GPU for the image a DFC version uses, without having the card (e.g. before renting one).

    Prints the decision and why (native, JIT with its one-time cost, unsupported, field report);
    exits 0 when supported, 1 when refused.
    Example: invoke gpu-check --name "NVIDIA H100 80GB HBM3" --compute 9.0 --dfc-version 3.31.0
    """
    from pipeline.host.gpu import check_card
    from pipeline.host.vendor import find_dfc_wheel
    from pipeline.tables import get_arch, image_for_dfc

    require_flags(name=name, compute=compute)
    version = dfc_version or find_dfc_wheel(get_arch(arch).dfc, Path(vendor)).version
    gpu, verdict = check_card(name, compute, version, driver)
    print(f"{verdict.status.value}: {verdict.message(gpu, image_for_dfc(version))} (DFC {version})")
    if not verdict.supported:
        raise Exit(code=1)


# --- export (pipeline/export/export.py) --------------------------------------------------------------


@task(
    help={
        "variant": "tiny, tiny.en, base or base.en (default tiny)",
        "seconds": "encoder input length in seconds (default: tiny 10, base 5)",
        "seq_len": "decoder sequence length (default: tiny 32, base 24)",
        "model": "Hugging Face id, transformers directory or CTranslate2 folder (default: the variant's HF id)",
        "out": "output directory (default build/<variant>-<arch>/export)",
        "arch": "names the default output directory only (default hailo8l)",
        "offline": "use the local Hugging Face cache only, never download",
    }
)
@_friendly_errors
def export(c, variant=DEFAULT_VARIANT, seconds=None, seq_len=None, model=None, out=None, arch=DEFAULT_ARCH,
           offline=False):
    """Export Whisper to Hailo-compatible encoder/decoder ONNX, with parity checks (pipeline/export/export.py)."""
    from pipeline.export.export import export_whisper, make_config

    from pipeline.host.build_options import parse_number

    config = make_config(variant, None if seconds is None else parse_number("--seconds", seconds),
                         None if seq_len is None else parse_number("--seq-len", seq_len, int), model, out, offline,
                         arch)
    result = export_whisper(config, log=lambda message: print(f"[export] {message}", flush=True))
    print(f"export written to {result.export_json.parent}")


@task(name="graph-check", positional=["onnx"], help={"onnx": "an exported .onnx file", "json": "print the report as JSON"})
def graph_check(c, onnx=None, json=False):
    """Check an ONNX graph against the DFC graph rules (pipeline/export/GRAPH_RULES.md); exit 0 conforms, 1 not."""
    from pipeline.export.graph_check import main

    require_flags(onnx=onnx)
    code = main([onnx] + (["--json"] if json else []))
    if code:
        raise Exit(code=code)


# --- calibration (calib/) ----------------------------------------------------------------------


@task(
    help={
        "variant": "tiny, tiny.en, base or base.en (default tiny): sets the window length and default size",
        "arch": "names the default build directory only (default hailo8l)",
        "audio": "folder of speech recordings, searched recursively (wav/flac/ogg/...)",
        "download": "no --audio: download LibriSpeech dev-clean (337 MB) into <build>/calib/download",
        "seconds": "window length = the encoder input (default: the variant's, tiny 10, base 5)",
        "size": "target encoder entries (default: what the model scripts need, as `invoke build` uses)",
        "profile": "model-script profile whose needs size the set by default: full or quick (default full)",
        "min_entries": "fail below this many usable entries (the model script's finetune dataset_size)",
        "seed": "shuffle seed (default 0)",
        "export_dir": "pipeline.export.export output for the decoder set (default <build>/export)",
        "build_dir": "default build/<variant>-<arch>",
        "encoder_only": "make the encoder set only (no export needed)",
        "workers": "processes/threads (default: all cores)",
    }
)
@_friendly_errors
def calib(c, variant=DEFAULT_VARIANT, arch=DEFAULT_ARCH, audio=None, download=False, seconds=None, size=None,
          min_entries=1, seed=0, export_dir=None, build_dir=None, encoder_only=False, workers=None, profile="full"):
    """Calibration sets: encoder log-mels (.npy) and decoder pairs (.npz) in <build>/calib (calib/)."""
    from calib.decoder_set import DecoderSetConfig, build_decoder_set
    from calib.encoder_set import EncoderSetConfig, build_encoder_set
    from calib.librispeech import download_librispeech
    from pipeline.dfc.model_scripts import calibration_entries_needed
    from pipeline.host.build_options import parse_number

    spec = resolve_spec(variant, arch, None if seconds is None else parse_number("--seconds", seconds))
    layout = Layout(Path(build_dir) if build_dir else Path("build") / spec.build_name)
    if audio is None:
        if not download:
            raise ToolchainError("No calibration audio given.", "Pass --audio DIR (speech recordings) or --download.")
        audio = download_librispeech(layout.download_dir)
    workers = None if workers is None else parse_number("--workers", workers, int)
    size = parse_number("--size", size, int) if size is not None else calibration_entries_needed(variant, arch, profile)
    encoder = build_encoder_set(EncoderSetConfig(
        audio_dir=Path(audio), out=layout.encoder_calib, seconds=spec.seconds, size=size,
        min_entries=parse_number("--min-entries", min_entries, int), seed=parse_number("--seed", seed, int),
        workers=workers))
    print(f"encoder set: {encoder.path} {list(encoder.shape)} ({len(encoder.skipped)} files skipped; "
          f"manifest {encoder.manifest_path})")
    if encoder_only:
        return
    decoder = build_decoder_set(DecoderSetConfig(
        encoder_set=encoder.path, export_dir=Path(export_dir) if export_dir else layout.export_dir,
        out=layout.decoder_calib, workers=workers))
    print(f"decoder set: {decoder.path} " + ", ".join(f"{k} {v}" for k, v in decoder.shapes.items()))

# --- DFC stages (pipeline/dfc/client.py, pipeline/dfc/optimize.py, pipeline/dfc/compile.py) -------------------


def _dfc_models(model):
    return MODELS if model == "both" else (model,)


def _build_layout(variant, arch, build_dir) -> Layout:
    """The build directory a task works in: --build-dir, else build/<variant>-<arch> (BuildSpec.build_name)."""
    return Layout(Path(build_dir) if build_dir else Path("build") / resolve_spec(variant, arch).build_name)


@task(
    help={
        "variant": "names the default build dir build/<variant>-<arch> (default tiny)",
        "arch": "hailo8 | hailo8l (DFC 3.x) | hailo10h (DFC 5.x)",
        "model": "encoder | decoder | both (default both)",
        "profile": "full (hailo-whisper's settings, hours on a GPU) | quick (level 0, no fine-tune, minutes)",
        "model_script": "an .alls file to use instead of the profile",
        "noise_analysis": "run the layer noise analysis (SNR per output) even where the script does not",
        "build_dir": "build directory (default build/<variant>-<arch>)",
    }
)
@_friendly_errors
def optimize(c, variant=DEFAULT_VARIANT, arch=DEFAULT_ARCH, model="both", profile="full", model_script=None,
             noise_analysis=False, build_dir=None):
    """Parse (if needed) and optimize with the DFC installed HERE (no container; `invoke build` uses one)."""
    from pipeline.dfc.optimize import optimize_build

    results = optimize_build(_build_layout(variant, arch, build_dir).root, arch, _dfc_models(model), profile,
                             Path(model_script) if model_script else None, noise_analysis)
    for name, result in results.items():
        print(f"{name}: {result['har']} (SNR {result['snr_db'] or 'not measured'})")


@task(
    help={
        "variant": "names the default build dir build/<variant>-<arch> (default tiny)",
        "arch": "hailo8 | hailo8l (DFC 3.x) | hailo10h (DFC 5.x)",
        "model": "encoder | decoder | both (default both)",
        "build_dir": "build directory (default build/<variant>-<arch>)",
    }
)
@_friendly_errors
def compile(c, variant=DEFAULT_VARIANT, arch=DEFAULT_ARCH, model="both", build_dir=None):
    """Compile optimized HARs to HEFs with the DFC installed HERE (no container)."""
    from pipeline.dfc.compile import compile_build

    for name, result in compile_build(_build_layout(variant, arch, build_dir).root, arch, _dfc_models(model)).items():
        print(f"{name}: {result['hef']} ({result['contexts']} contexts, sha256 {result['hef_sha256'][:12]})")


@task(
    name="probe",
    help={
        "variant": "tiny, tiny.en, base or base.en",
        "arch": "hailo8, hailo8l or hailo10h",
        "all": "every variant x arch cell (needs each variant's weights in the Hugging Face cache)",
        "model": "Hugging Face id, transformers or CTranslate2 folder (one variant only)",
        "out": "scratch folder (default build/probe)",
        "seconds": "encoder input length (default: the variant's)",
        "seq_len": "decoder sequence length (default: the variant's)",
    },
)
@_friendly_errors
def probe(c, variant=None, arch=None, all=False, model=None, out="build/probe", seconds=None, seq_len=None):
    """Parse-only probe with the DFC installed HERE (CPU, no GPU): export, graph rules, parse, layer names.

    Run it first after installing a new DFC version, before renting a GPU. Exit 1 when a cell fails.
    """
    from pipeline.host import probe as probing

    variants, archs = probing.cells(variant, arch, all)
    if model and len(variants) > 1:
        raise ToolchainError("--model names one checkpoint, --all probes four variants.",
                             "Drop --model (the variants' Hugging Face ids are used) or pass --variant.")
    results = probing.probe(variants, archs, Path(out), model,
                            float(seconds) if seconds else None, int(seq_len) if seq_len else None)
    print(probing.render(results))
    print(f"details: {Path(out) / 'probe.json'}")
    if any(not cell.ok for cell in results):  # (`all` is the flag here)
        raise Exit(code=1)


@task(
    name="dfc-double-wheel",
    help={
        "dest": "folder for the wheel (default vendor)",
        "version": "e.g. 3.31.0+testdouble (Hailo-8/8L) or 5.1.0+testdouble (Hailo-10H)",
    },
)
@_friendly_errors
def dfc_double_wheel(c, dest="vendor", version=None):
    """Build the DFC TEST DOUBLE wheel (not deployable) for rehearsals and container tests.

    Version: --version, else $HAILO_DOUBLE_VERSION, else 3.31.0+testdouble.
    """
    import os
    from pipeline.host.vendor import build_test_double_wheel

    version = version or os.environ.get("HAILO_DOUBLE_VERSION") or "3.31.0+testdouble"
    print(build_test_double_wheel(Path("tests/dfc_double"), Path(dest), version))


# --- images (pipeline/host/docker_engine.py, pipeline/host/image_plan.py) ------------------------


@task(
    help={
        "target": "export, or dfc3 (Hailo-8/8L) | dfc5 (Hailo-10H): the DFC wheel's version picks the "
                  "image (dfc-cuda11 / dfc-cuda12); default: the series of --dfc-version",
        "dfc_version": "with --dry-run: answer for this DFC version instead of the wheel in --vendor",
        "dry_run": "print the Dockerfile target, base image and digest that would be used; build nothing",
        "repin": "ask the registry for the base image's digest again and record it in docker/images.lock",
        "base_image": "use this base image as given (offline hosts: a local image), no pinning",
        "wheelhouse": "folder of wheels for an offline build (pip install --no-index)",
        "vendor": "folder with your DFC wheel (default: vendor)",
        "dfc_sha256": "expected sha256 of the DFC wheel, checked on the host and in the build",
    }
)
@_friendly_errors
def image(c, target=None, dfc_version=None, dry_run=False, repin=False, base_image=None, wheelhouse=None,
          vendor="vendor", dfc_sha256=None):
    """Build one toolchain image (skipped when an image of the same inputs exists); --dry-run only tells."""
    from pipeline.host.docker_engine import ensure_image, plan_image

    if dry_run:
        print(plan_image(target, dfc_version=dfc_version, vendor_dir=Path(vendor), base_image=base_image).describe())
        return
    if dfc_version:
        raise ToolchainError("--dfc-version only goes with --dry-run: a build uses the wheel in --vendor.",
                             "Drop --dfc-version, or put that version's wheel in vendor/.")
    ref = ensure_image(target, base_image=base_image, wheelhouse=Path(wheelhouse) if wheelhouse else None,
                       vendor_dir=Path(vendor), dfc_wheel_sha256=dfc_sha256, repin=repin)
    print(f"{ref.tag} {ref.id}")


# --- end-to-end build (pipeline/host/build.py) ------------------------------------------------------


@task(
    iterable=["force", "stall_limit"],
    help={
        "variant": "Whisper variant: tiny, tiny.en, base, base.en (default tiny)",
        "arch": "Hailo architecture: hailo8, hailo8l, hailo10h (default hailo8l)",
        "seconds": "encoder input length in seconds (default: tiny 10, base 5)",
        "seq_len": "decoder token sequence length (default: tiny 32, base 24; at most 448)",
        "model": "Hugging Face id, transformers folder or CTranslate2 folder (default: the variant's id)",
        "calib": "folder of speech recordings for calibration (wav/flac/ogg, any layout, e.g. LibriSpeech)",
        "calib_download": "download LibriSpeech dev-clean into <out>/calib/download instead of --calib",
        "calib_size": "calibration entries (default: what the model scripts need)",
        "profile": "model-script profile: full (reference quality, hours) or quick (minutes, lower accuracy)",
        "decoder": "where the decoder runs: hailo (a decoder HEF, default) or cpu (the export's cached decoder "
                   "ONNX on the host, float and int8; no decoder calibration/parse/optimize/compile)",
        "model_script": "your own .alls for both models, or a folder with encoder.alls and decoder.alls",
        "cpu": "run the DFC stages on the CPU on purpose (fine-tuning takes hours)",
        "allow_gpu": "use a GPU the gate does not know to work (or refuses), with a loud warning",
        "no_docker": "run the stages in this environment instead of the images (DFC installed here)",
        "out": "build directory (default build/<variant>-<arch>)",
        "force": "rerun a stage and everything after it (repeatable): export, encoder-calib, "
                 "decoder-calib, {encoder,decoder}-{parse,optimize,compile}, bundle, report, "
                 "or a group: calib, parse, optimize, compile, encoder, decoder, all",
        "vendor": "folder with your DFC wheel (default vendor)",
        "base_image": "override the images' pinned base image (passed to the image builds)",
        "wheelhouse": "folder of wheels for offline image builds",
        "eval": "evaluation speech (LibriSpeech layout or transcripts.tsv): the accuracy ladder's float and "
                "quantized rows run after optimize, before compile; the table goes into report.md",
        "eval_download": "like --eval with LibriSpeech test-clean, downloaded into <out>/eval/download",
        "max_wer_increase": "stop before compile (exit 1) when the quantized WER exceeds the onnx WER by more "
                            "than this many points (needs --eval or --eval-download)",
        "stall_limit": "STAGE=MINUTES (repeatable): stop a stage silent that long; a stage (encoder-optimize) "
                       "or a kind (export, calib, parse, optimize, compile). Defaults: optimize 30, compile 75",
        "min_free_gb": "refuse to start below this much free disk in GiB (default 30)",
        "min_memory_gb": "refuse to start below this much available memory in GiB (default 16)",
        "verbose": "show every stage's output (result JSON included) on the console; always in <out>/logs/",
    },
)
@_friendly_errors
def build(c, variant=DEFAULT_VARIANT, arch=DEFAULT_ARCH, seconds=None, seq_len=None, model=None, calib=None,
          calib_download=False, calib_size=None, profile="full", decoder="hailo", model_script=None, cpu=False,
          allow_gpu=False, no_docker=False, out=None, force=None, vendor="vendor", base_image=None,
          wheelhouse=None, eval=None, eval_download=False, max_wer_increase=None, stall_limit=None,
          min_free_gb=None, min_memory_gb=None, verbose=False):
    """Build the encoder HEF and the decoder (HEF, or ONNX for the host CPU) end to end (resumable; reruns only what changed)."""
    import os

    from pipeline.host.build import run_build
    from pipeline.host.build_options import options_from_flags

    options = options_from_flags(
        os.environ, variant=variant, arch=arch, seconds=seconds, seq_len=seq_len, model=model, calib=calib,
        calib_download=calib_download, calib_size=calib_size, profile=profile, decoder=decoder,
        model_script=model_script, cpu=cpu, allow_gpu=allow_gpu, no_docker=no_docker, out=out, force=force,
        vendor=vendor, base_image=base_image, wheelhouse=wheelhouse, eval=eval, eval_download=eval_download,
        max_wer_increase=max_wer_increase, stall_limit=stall_limit, min_free_gb=min_free_gb,
        min_memory_gb=min_memory_gb, verbose=verbose)
    from pipeline.host.build_gate import GateFailed

    try:
        run_build(options)
    except GateFailed as err:  # a verdict on the model, not a usage error: exit 1
        raise Exit(f"error: {err}", code=1) from None


@task(
    help={
        "build_dir": "the build directory to evaluate (build/<variant>-<arch>); nothing in it is changed",
        "eval": "evaluation speech: LibriSpeech layout (*.trans.txt) or a folder with transcripts.tsv",
        "eval_download": "download LibriSpeech test-clean (346 MB, checksummed, resumable) instead of --eval",
        "eval_dest": "where --eval-download puts it (default build/eval-download)",
        "rows": "comma-separated rows (default all): reference,onnx,native,quantized,quantized-encoder,"
                "quantized-decoder,device",
        "long": "utterances longer than the window: skip (default, counted) or chunk (cut and joined)",
        "limit": "use the first N usable utterances",
        "threads": "CPU threads for ONNX Runtime / torch (default: all)",
        "decoder": "fixed (the fixed-length decoder the decoder HEF runs) or cached (the KV-cache decoder ONNX "
                   "on the host CPU); default: the build's own (--decoder cpu builds: cached)",
        "vendor": "a Docker-mode build's --vendor: the emulator rows run in its DFC image if the DFC is not here",
        "base_image": "the Docker-mode build's --base-image (so its DFC image is found, not rebuilt)",
        "wheelhouse": "the Docker-mode build's --wheelhouse (likewise)",
        "json": "print the ladder as JSON instead of a table",
    }
)
@_friendly_errors
def evaluate(c, build_dir=None, eval=None, eval_download=False, eval_dest="build/eval-download", rows=None,
             long="skip", limit=None, threads=None, decoder=None, vendor="vendor", base_image=None, wheelhouse=None,
             json=False):
    """The accuracy ladder: WER/CER of the same utterances from the checkpoint down to the device."""
    import json as json_module

    from pipeline.host.build import image_emulation_for
    from pipeline.host.build_options import parse_number
    from pipeline.host.ladder import ROWS, EvalOptions, evaluate_build, render_markdown

    require_flags(build_dir=build_dir)
    options = EvalOptions(eval_dir=Path(eval) if eval else None, download=eval_download,
                          download_dest=Path(eval_dest), long=long, decoder=decoder,
                          **{k: parse_number(f"--{k}", v, int) for k, v in (("limit", limit), ("threads", threads)) if v})
    emulation = image_emulation_for(Path(build_dir), Path(vendor), base_image, Path(wheelhouse) if wheelhouse else None)
    ladder = evaluate_build(Path(build_dir), options, tuple(r.strip() for r in rows.split(",")) if rows else ROWS,
                            log=lambda m: print(m, file=sys.stderr, flush=True), emulate_in_image=emulation)
    print(json_module.dumps(ladder.to_json(), indent=2) if json else render_markdown(ladder))


# --- many builds on a Ray cluster (pipeline/host/matrix.py) -------------------------------------------


@task(
    iterable=["model_dir", "force"],
    auto_shortflags=False,
    help={
        "variants": "comma-separated Whisper variants, e.g. tiny,base",
        "archs": "comma-separated Hailo architectures, e.g. hailo8l,hailo10h",
        "models": "which models to build per cell (default encoder,decoder; one model skips the bundle)",
        "address": "Ray cluster: HOST:6379 on a cluster node, ray://HOST:10001 from outside, or auto "
                   "(default: start Ray on this machine)",
        "store": "folder every node mounts at the same path (NFS, or local for one host); cells go to "
                 "<store>/<variant>-<arch> (default build/matrix)",
        "seconds": "encoder input length in seconds for every cell (default: each variant's)",
        "seq_len": "decoder token sequence length for every cell (default: each variant's)",
        "calib": "folder of speech recordings, on a disk every node sees",
        "calib_download": "download LibriSpeech dev-clean into each cell instead of --calib",
        "profile": "model-script profile: full or quick",
        "model_script": "your own .alls for both models, or a folder with encoder.alls and decoder.alls",
        "model_dir": "VARIANT=FOLDER: a local checkpoint for a variant (repeatable; default: the hub id)",
        "cpu": "optimize on CPUs on purpose (no GPU constraint; fine-tuning takes hours)",
        "no_docker": "run the stages in each node's environment instead of the images",
        "vendor": "folder with your DFC wheels on every node (default vendor)",
        "max_retries": "reruns of a stage whose node died (default 2)",
        "no_hang_probe": "skip the GPU hang probe before each optimize",
        "force": "rerun a stage (or group: calib, parse, optimize, compile, encoder, decoder, all) and what "
                 "follows it in every cell (repeatable)",
    },
)
@_friendly_errors
def matrix(c, variants="tiny", archs="hailo8l", models="encoder,decoder", address=None, store="build/matrix",
           seconds=None, seq_len=None, calib=None, calib_download=False, profile="full", model_script=None,
           model_dir=None, cpu=False, no_docker=False, vendor="vendor", max_retries=2, no_hang_probe=False,
           force=None):
    """Build many variant x arch cells at once on a Ray cluster; writes <store>/matrix-summary.{json,md}."""
    import os

    from pipeline.host.matrix import MatrixOptions, run_matrix

    options = MatrixOptions.from_flags(
        os.environ, variants=variants, archs=archs, models=models, address=address, store=store, seconds=seconds,
        seq_len=seq_len, calib=calib, calib_download=calib_download, profile=profile, model_script=model_script,
        model_dir=model_dir, cpu=cpu, no_docker=no_docker, vendor=vendor, max_retries=max_retries,
        no_hang_probe=no_hang_probe, force=force)
    result = run_matrix(options)
    if result.failed_cells:
        raise Exit(f"{len(result.failed_cells)} cell(s) not built: {', '.join(result.failed_cells)} "
                   f"(see {result.markdown_path})", code=1)


@task(help={"out": "scratch folder for the benchmark builds (default: a temp dir)",
            "keep": "keep the scratch folder afterwards"})
@_friendly_errors
def bench(c, out=None, keep=False):
    """Benchmark the build: full build and no-op rebuild time, natively with the DFC test double."""
    c.run(f"{sys.executable} bench/build_bench.py" + (f" --out {out}" if out else "") + (" --keep" if keep else ""),
          pty=False)


# --- rehearsal (pipeline/host/rehearsal.py) --------------------------------------------------------


@task(help={"mode": "auto (Docker when a daemon answers, else native) | docker | native",
            "out": "rehearsal folder (default build/rehearsal); nothing is written outside it"})
@_friendly_errors
def rehearsal(c, mode="auto", out=None):
    """The whole pipeline offline with the DFC TEST DOUBLE, real tiny.en weights and generated speech.

    No GPU, no DFC, no downloads but packages; everything goes to build/rehearsal/ and is NOT
    DEPLOYABLE. Ends with the steps for a real build.
    """
    from pipeline.host.rehearsal import REHEARSAL_DIR, run_rehearsal

    run_rehearsal(Path(out) if out else REHEARSAL_DIR, mode)
