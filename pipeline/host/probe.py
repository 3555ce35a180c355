"""Parse-only probe: does the installed DFC take our graphs and name their layers as we expect?

    invoke probe --variant tiny --arch hailo8l [--model ID|DIR]     one cell
    invoke probe --all                                             every variant x arch

For each cell, on the CPU and in this environment (the DFC wheel installed here, no GPU, no
Docker): export (once per variant), the DFC graph rules, parse with the DFC, and resolution of the
`full` profile's layer names against the parsed HAR (every name the script would use must exist).
Minutes per cell. Run it first after installing a new DFC version, before renting a GPU: a graph
the DFC refuses or a layer name it does not have shows up here, not hours into optimize.

Writes <out>/probe.json ({"cells": [{variant, arch, ok, step, error, ...}]}) and a table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from pipeline.errors import ToolchainError
from pipeline.files import write_json_atomic
from pipeline.tables import ARCHS, MODELS, VARIANTS


@dataclass
class CellResult:
    variant: str
    arch: str
    ok: bool = False
    step: str = ""  # the step that failed, or "done"
    error: str = ""
    dfc_version: str = ""
    models: dict = field(default_factory=dict)  # model -> {"layers", "resolved", "gemm"}


def _export(variant: str, model: Optional[str], out: Path, seconds, seq_len, log) -> Path:
    from pipeline.export.export import make_config, export_whisper

    export_dir = out / variant.replace(".", "_") / "export"
    if (export_dir / "export.json").is_file():
        return export_dir
    export_whisper(make_config(variant, seconds, seq_len, model, str(export_dir), offline=False), log=log)
    return export_dir


def _probe_model(export_dir: Path, variant: str, arch: str, model: str, out: Path) -> dict:
    from pipeline.dfc import client as dfc
    from pipeline.dfc import layer_roles
    from pipeline.dfc.inputs import load_network_export
    from pipeline.dfc.model_scripts import generated_script
    from pipeline.export.graph_check import check_graph

    network = load_network_export(export_dir, model)
    report = check_graph(network.onnx_path, network.start_node_names, network.end_node_names)
    parsed = dfc.parse(network, arch, out)
    hn = dfc.load_hn(arch, Path(parsed["har"]))
    _, table, layers = layer_roles.resolve_for_har(
        generated_script(variant, arch, model, "full"), True, model,
        layer_roles.blocks_of(variant, model), hn, f"profile:full ({variant} {model} {arch})")
    return {"graph_ok": report.ok, "gemm": report.op_histogram.get("Gemm", 0), "layers": len(layers),
            "resolved": {row["reference"]: row["layers"] for row in table}, "har": parsed["har"],
            "dfc_version": parsed["dfc_version"]}


def probe(variants: Sequence[str], archs: Sequence[str], out: Path, model: Optional[str] = None,
          seconds: Optional[float] = None, seq_len: Optional[int] = None,
          log: Callable[[str], None] = print) -> list[CellResult]:
    """Probe every variant x arch cell; a failing cell is recorded and the others still run."""
    out = Path(out)
    results = []
    for variant in variants:
        try:
            export_dir = _export(variant, model, out, seconds, seq_len, log)
        except ToolchainError as err:
            results += [CellResult(variant, arch, step="export", error=str(err)) for arch in archs]
            continue
        for arch in archs:
            cell = CellResult(variant, arch)
            log(f"probe {variant} {arch}")
            try:
                for name in MODELS:
                    cell.step = f"{name}: parse and layer names"
                    found = _probe_model(export_dir, variant, arch, name, out / f"{variant}-{arch}" / name)
                    cell.dfc_version = found.pop("dfc_version")
                    cell.models[name] = found
                cell.ok, cell.step = True, "done"
            except ToolchainError as err:
                cell.error = str(err)
            results.append(cell)
    write_json_atomic(out / "probe.json", {"cells": [asdict(c) for c in results]})
    return results


def render(results: Sequence[CellResult]) -> str:
    lines = [f"{'variant':8} {'arch':9} {'result':6} details"]
    for cell in results:
        if cell.ok:
            detail = ", ".join(f"{m}: {v['layers']} layers, {len(v['resolved'])} script names resolved"
                               for m, v in cell.models.items()) + f" (DFC {cell.dfc_version})"
        else:
            detail = f"failed at {cell.step}: {cell.error.splitlines()[0] if cell.error else ''}"
        lines.append(f"{cell.variant:8} {cell.arch:9} {'ok' if cell.ok else 'FAIL':6} {detail}")
    return "\n".join(lines)


def cells(variant: Optional[str], arch: Optional[str], all_cells: bool) -> tuple[list[str], list[str]]:
    if all_cells:
        return list(VARIANTS), list(ARCHS)
    if not variant or not arch:
        raise ToolchainError("Say which cell to probe.", "Pass --variant and --arch, or --all for every cell.")
    for value, table, what in ((variant, VARIANTS, "variant"), (arch, ARCHS, "arch")):
        if value not in table:
            raise ToolchainError(f"Unknown {what} {value!r}.", f"Choose one of: {', '.join(table)}.")
    return [variant], [arch]


def load(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())["cells"]
