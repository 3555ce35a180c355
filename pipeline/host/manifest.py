"""What a build made, from what, with which tools: `manifest.json` (for machines), `report.md`
(for people) and the summary table printed at the end of `invoke build`.

Everything here is read from the build directory: the stage records (`.stages/`), export.json
(names, parity figures, the export environment's versions) and the DFC stage results
(parse/optimize/compile.json: DFC version, SNR per output, log timeline, HEF sha256). The host
that runs `invoke build` has no torch by design, so library versions come from what the stages
recorded, never from imports here.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from pipeline.files import sha256_file, write_json_atomic, write_text_atomic
from pipeline.host.stage_cache import STAGE_ORDER, StageRecord
from pipeline.layout import Layout
from pipeline.tables import EXPORT_LIBRARIES, MODELS, BuildSpec

MANIFEST_FORMAT = 1
# An output whose quantized SNR (the DFC's layer noise analysis) is below this is flagged. Not a
# Hailo rule: a working threshold. The seed log's tiny encoder at 9.18 dB falls under it, and its
# transcriptions were visibly worse than the float model's.
LOW_SNR_DB = 10.0
NOT_DEPLOYABLE = (
    "NOT DEPLOYABLE: rehearsal build with the DFC test double. The HEFs are placeholders that no "
    "Hailo device can load; rebuild with the real DFC wheel from Hailo's Developer Zone in vendor/."
)


def git_commit(repo_root: Path) -> dict:
    """This repository's commit and whether the work tree had changes ("dirty")."""
    try:
        commit = subprocess.run(["git", "-C", str(repo_root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo_root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def library_versions(export: Mapping[str, Any], native: bool) -> dict:
    """torch/transformers/onnx/onnxruntime versions of the export environment.

    From export.json ("versions") when the export stage recorded them; natively the stages ran in
    this environment, so its installed distributions answer (metadata only, nothing imported).
    """
    recorded = dict(export.get("versions") or {})
    versions, sources = {}, {}
    for lib in EXPORT_LIBRARIES:
        if recorded.get(lib):
            versions[lib], sources[lib] = str(recorded[lib]), "export.json"
        elif native:
            try:
                versions[lib], sources[lib] = importlib.metadata.version(lib), "native environment"
            except importlib.metadata.PackageNotFoundError:
                versions[lib], sources[lib] = None, "not installed"
        else:
            versions[lib], sources[lib] = None, "not recorded by the export stage"
    extra = {k: v for k, v in recorded.items() if k not in versions}
    return {**versions, **extra, "_source": sources}


def snr_by_output(dfc_results: Mapping[str, Mapping[str, Mapping]]) -> dict[str, dict[str, float]]:
    return {m: dict(dfc_results.get(m, {}).get("optimize", {}).get("snr_db") or {}) for m in MODELS}


def quality_warnings(export: Mapping[str, Any], dfc_results: Mapping[str, Mapping[str, Mapping]]) -> list[str]:
    """Low SNR outputs (below LOW_SNR_DB), and models with no SNR measured at all."""
    warnings = []
    for model, snrs in snr_by_output(dfc_results).items():
        for layer, db in sorted(snrs.items()):
            if db < LOW_SNR_DB:
                warnings.append(f"{model} output {layer}: SNR {db:.2f} dB is below {LOW_SNR_DB:g} dB; "
                                "expect less accurate transcriptions (try --profile full or 16-bit layers).")
        if not snrs and dfc_results.get(model, {}).get("optimize"):
            warnings.append(f"{model}: no SNR measured (the model script has no noise analysis; "
                            "--profile full enables it).")
    return warnings


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


def _record_json(record: Optional[StageRecord]) -> Optional[dict]:
    if record is None:
        return None
    return {"key": record.key, "duration_s": round(record.duration_s, 3), "finished_at": record.finished_at,
            "outputs": dict(record.outputs), "inputs": dict(record.inputs), "context": dict(record.context)}


def recorded_build(layout: Layout) -> dict:
    """The "build" entry of a finished build's manifest.json (variant, arch, mode, decoder, ...);
    {} when there is no readable manifest."""
    try:
        return dict(json.loads(layout.manifest.read_text()).get("build") or {})
    except (OSError, ValueError, AttributeError):
        return {}


def make_manifest(
    *,
    build_dir: Path,
    spec: BuildSpec,
    options,
    export: Mapping[str, Any],
    dfc_results: Mapping[str, Mapping[str, Mapping]],
    records: Mapping[str, Optional[StageRecord]],
    tools: Mapping[str, Mapping[str, Any]],
    gpu: Mapping[str, Any],
    hefs: Mapping[str, Path],
    rehearsal: bool,
    warnings: Sequence[str],
    repo_root: Path,
) -> dict:
    """The manifest as a dict (see the module docstring for where each part comes from)."""
    build_dir = Path(build_dir)
    layout = Layout(build_dir)
    dfc_version = dfc_version_of(dfc_results, tools.get("dfc", {}).get("dfc_version"))
    hef_info = {}
    for model, path in hefs.items():
        actual = sha256_file(path)
        reported = dfc_results.get(model, {}).get("compile", {}).get("hef_sha256")
        hef_info[model] = {
            "path": str(Path(path).relative_to(build_dir)),
            "bundle_path": str((layout.bundle_dir / Path(path).name).relative_to(build_dir)),
            "sha256": actual,
            "size_bytes": Path(path).stat().st_size,
            "matches_compile_json": reported == actual if reported else None,
        }
    ladder = json.loads(layout.ladder_json.read_text()) if layout.ladder_json.is_file() else None
    calib_manifest = layout.encoder_calib_manifest
    calib_info = json.loads(calib_manifest.read_text()) if calib_manifest.exists() else None
    manifest = {
        "format": MANIFEST_FORMAT,
        "deployable": not rehearsal,
        "not_deployable_reason": NOT_DEPLOYABLE if rehearsal else None,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build": {
            "variant": spec.variant.name,
            "arch": spec.arch.name,
            "seconds": spec.seconds,
            "seq_len": spec.seq_len,
            "frames": spec.frames,
            "encoder_net": spec.encoder_net_name,
            "decoder_net": spec.decoder_net_name,
            # "hailo": the decoder HEF; "cpu": the export's cached decoder ONNX on the host
            "decoder": getattr(options, "decoder", "hailo"),
            "profile": options.profile,
            "model_script": str(options.model_script) if options.model_script else None,
            "mode": "native" if options.no_docker else "docker",
            "cpu": options.cpu,
            "build_dir": str(build_dir),
        },
        "inputs": {
            "model": export.get("hf_id_or_path") or options.model or spec.variant.hf_id,
            "model_files": (records.get("export").inputs.get("files", {}) if records.get("export") else {}),
            "calibration_audio": str(options.calib_dir) if options.calib_dir else "LibriSpeech dev-clean (--calib-download)",
            "calibration_set": calib_info,
            "stage_inputs": {s: dict(r.inputs) for s, r in records.items() if r is not None},
        },
        "versions": {
            "repo": git_commit(repo_root),
            "export_environment": library_versions(export, native=options.no_docker),
            "dfc": dfc_version,
            "dfc_test_double": rehearsal,
            "images": {role: dict(tool) for role, tool in tools.items()},
        },
        "gpu": dict(gpu),
        "stages": {s: _record_json(records.get(s)) for s in STAGE_ORDER if s != "report"},
        "dfc": {
            model: {
                "snr_db": dict(dfc_results.get(model, {}).get("optimize", {}).get("snr_db") or {}),
                "timeline": {step: dfc_results.get(model, {}).get(step, {}).get("timeline")
                             for step in ("parse", "optimize", "compile")},
                "model_script": dfc_results.get(model, {}).get("optimize", {}).get("model_script"),
                "model_script_sha256": dfc_results.get(model, {}).get("optimize", {}).get("model_script_sha256"),
                # hailo-whisper's layer names -> the role -> our HAR's layers (pipeline/dfc/layer_roles.py)
                "layer_roles": dfc_results.get(model, {}).get("optimize", {}).get("layer_roles"),
                "har_layers": dfc_results.get(model, {}).get("optimize", {}).get("layers_json"),
            }
            for model in MODELS
        },
        "parity": dict(export.get("parity") or {}),
        "hefs": hef_info,
        "accuracy_ladder": ladder,
        "warnings": list(warnings),
    }
    return manifest


def _fmt_s(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


def render_report(manifest: Mapping[str, Any]) -> str:
    """report.md from the manifest."""
    b = manifest["build"]
    lines = [f"# Whisper {b['variant']} → {b['arch']} build report", ""]
    if not manifest["deployable"]:
        lines += [f"> **{manifest['not_deployable_reason']}**", ""]
    versions = manifest["versions"]
    repo = versions["repo"]
    lines += [
        f"- Input: {b['seconds']:g} s audio ({b['frames']} mel frames), decoder sequence length {b['seq_len']}",
        f"- Networks: `{b['encoder_net']}`, `{b['decoder_net']}`" if b.get("decoder", "hailo") == "hailo" else
        f"- Networks: `{b['encoder_net']}` on the Hailo; no decoder HEF",
        "- Decoder: " + ("Hailo (decoder HEF, fixed sequence length)" if b.get("decoder", "hailo") == "hailo" else
                         "host CPU (`--decoder cpu`): the export's cached KV-cache decoder ONNX, float and int8, "
                         "in the bundle; no decoder calibration, parse, optimize or compile ran"),
        f"- Profile: {b['profile']}" + (f", model script {b['model_script']}" if b["model_script"] else ""),
        f"- Ran: {b['mode']}, DFC stages on {'CPU (--cpu)' if b['cpu'] else 'GPU'}",
        f"- DFC: {versions['dfc'] or 'unknown'}" + (" (TEST DOUBLE)" if versions["dfc_test_double"] else ""),
        f"- Repository commit: {repo.get('commit') or 'unknown'}" + (" (with local changes)" if repo.get("dirty") else ""),
        f"- Built: {manifest['created_at']}",
        "",
        "## Stages",
        "",
        "| stage | last ran | took |",
        "| --- | --- | --- |",
    ]
    for stage, rec in manifest["stages"].items():
        lines.append(f"| {stage} | {rec['finished_at'] if rec else '-'} | {_fmt_s(rec['duration_s']) if rec else '-'} |")
    lines += ["", "## Export parity (max abs difference)", ""]
    parity = {k: v for k, v in manifest["parity"].items() if isinstance(v, (int, float))}
    tolerances = manifest["parity"].get("tolerances") or {}
    if parity:
        lines += ["| check | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.3g} |" for k, v in sorted(parity.items())]
        if tolerances:
            lines += ["", "Tolerances the export enforced: "
                      + ", ".join(f"{k} ≤ {v:g}" for k, v in sorted(tolerances.items())) + "."]
    else:
        lines.append("export.json reports no parity figures.")
    lines += ["", f"## Quantization SNR (warning below {LOW_SNR_DB:g} dB)", ""]
    snr_rows = [(m, layer, db) for m, d in manifest["dfc"].items() for layer, db in sorted(d["snr_db"].items())]
    if snr_rows:
        lines += ["| model | output | SNR dB |", "| --- | --- | --- |"]
        lines += [f"| {m} | {layer} | {db:.2f}{' ⚠' if db < LOW_SNR_DB else ''} |" for m, layer, db in snr_rows]
    else:
        lines.append("No SNR measured (the model scripts ran no noise analysis; `--profile full` enables it).")
    ladder = manifest.get("accuracy_ladder")
    if ladder:
        lines += ["", "## Accuracy ladder (before compile)", "", ladder["table_markdown"].rstrip()]
        if ladder.get("max_wer_increase") is not None:
            lines += ["", f"WER gate: quantized {ladder['wer_increase_points']:+.2f} points vs onnx, "
                          f"limit {ladder['max_wer_increase']:g} (--max-wer-increase)."]
    lines += ["", "## Warnings", ""]
    lines += [f"- {w}" for w in manifest["warnings"]] or ["None."]
    lines += ["", "## Files", "", "| file | sha256 |", "| --- | --- |"]
    for model, hef in manifest["hefs"].items():
        lines.append(f"| `{hef['bundle_path']}` ({model}, {hef['size_bytes']} bytes) | `{hef['sha256']}` |")
    lines += [
        "",
        f"- Deployment bundle: `{b['build_dir']}/bundle/` (HEFs, host-side .npy assets, tokenizer, "
        "config.json, README.md on loading them with HailoRT)",
        f"- Manifest: `{b['build_dir']}/manifest.json`",
        f"- Stage logs: `{b['build_dir']}/logs/`",
        "",
    ]
    return "\n".join(lines)


def write_report(manifest: Mapping[str, Any], manifest_path: Path, report_path: Path) -> None:
    write_json_atomic(manifest_path, manifest)
    write_text_atomic(report_path, render_report(manifest))


def print_summary(result, manifest: Mapping[str, Any], console) -> None:
    """The end-of-build table: each stage's status this run and its duration, then SNR and files."""
    from rich.panel import Panel
    from rich.table import Table

    table = Table(title=f"build {manifest['build']['variant']} → {manifest['build']['arch']}"
                        f" in {_fmt_s(result.duration_s)}")
    table.add_column("stage")
    table.add_column("this run")
    table.add_column("took (last run)", justify="right")
    for outcome in result.stages:
        style = "green" if outcome.status == "ran" else "dim"
        table.add_row(outcome.stage, f"[{style}]{outcome.status}[/]", _fmt_s(outcome.record.duration_s))
    console.print(table)
    for model, d in manifest["dfc"].items():
        for layer, db in sorted(d["snr_db"].items()):
            colour = "red" if db < LOW_SNR_DB else "green"
            console.print(f"SNR {model} {layer}: [{colour}]{db:.2f} dB[/]")
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    if not result.ran:
        console.print("[green]Every stage was up to date; nothing ran.[/]")
    console.print(f"bundle: {result.bundle_dir}\nreport: {result.report_path}\nmanifest: {result.manifest_path}")
    if not result.deployable:
        console.print(Panel(f"[bold red]{NOT_DEPLOYABLE}[/]", title="[bold red]NOT DEPLOYABLE[/]",
                            border_style="red"))


__all__ = [
    "LOW_SNR_DB", "NOT_DEPLOYABLE", "make_manifest", "render_report", "write_report", "print_summary",
    "quality_warnings", "library_versions", "git_commit",
]
