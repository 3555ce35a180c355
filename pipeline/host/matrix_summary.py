"""The matrix summary: every cell x stage with its status, where and how long it ran, GPU-hours
per cell and the quality the DFC reported (SNR per output). Written as JSON (for machines) and
markdown (for people) into the store: `<store>/matrix-summary.{json,md}`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence

from pipeline.files import write_json_atomic, write_text_atomic
from pipeline.host.matrix_plan import MODELS, Cell, stage_upstream

SUMMARY_FORMAT = 1
SYMBOLS = {"ran": "✓ ran", "up to date": "✓ cached", "failed": "✗ failed", "blocked": "· blocked",
           "refused": "✗ refused", "not planned": ""}


@dataclass(frozen=True)
class StageRun:
    """Where and when one stage task ran (returned by the task, a few hundred bytes)."""

    stage: str
    status: str  # "ran" | "up to date"
    node_id: str
    node_address: str
    gpu_ids: tuple[str, ...]  # the GPUs Ray gave the task; empty for CPU stages
    accelerator_type: Optional[str]  # the node's card type (filled in by the driver)
    started_at: float  # wall clock (time.time) on the node
    finished_at: float
    stage_duration_s: float  # the stage record's duration (when it last ran)

    def to_json(self) -> dict:
        data = asdict(self)
        data["gpu_ids"] = list(self.gpu_ids)
        return data


@dataclass(frozen=True)
class MatrixSummary:
    started_at: float
    finished_at: float
    cells: Mapping[str, dict]  # cell name -> {"status", "stages": {stage: {...}}, "gpu_hours", ...}

    @property
    def makespan_s(self) -> float:
        return self.finished_at - self.started_at

    def to_json(self) -> dict:
        return {"format": SUMMARY_FORMAT, "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
                "makespan_s": round(self.makespan_s, 3), "cells": dict(self.cells)}


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")


def _stage_status(cell: str, stage: str, stages: Sequence[str], runs: Mapping, errors: Mapping) -> str:
    if (cell, stage) in runs:
        return runs[(cell, stage)]["status"]
    if any(_stage_status(cell, up, stages, runs, errors) in ("failed", "blocked") for up in stage_upstream(stage, stages)):
        return "blocked"  # Ray never ran it: an upstream stage failed
    return "failed" if (cell, stage) in errors else "not run"


def _snr(build_dir: Path) -> dict[str, Optional[float]]:
    """The lowest SNR (dB) over each model's outputs, from its optimize.json (None: not measured)."""
    lowest = {}
    for model in MODELS:
        try:
            snrs = json.loads((build_dir / "dfc" / model / "optimize.json").read_text()).get("snr_db") or {}
        except (OSError, ValueError):  # not there (yet), or a file where a folder should be
            snrs = {}
        lowest[model] = min(snrs.values()) if snrs else None
    return lowest


def summarize(cells: Sequence[Cell], stages: Sequence[str], runs: Mapping, errors: Mapping,
              refused: Mapping[str, str], store: Path, *, started_at: float, finished_at: float) -> MatrixSummary:
    out = {}
    for cell in cells:
        name = cell.name
        if name in refused:
            out[name] = {"status": "refused", "error": refused[name], "stages": {s: {"status": "refused"} for s in stages},
                         "gpu_hours": 0.0, "build_dir": str(store / name)}
            continue
        rows = {}
        for stage in stages:
            row = {"status": _stage_status(name, stage, stages, runs, errors)}
            if (name, stage) in runs:
                run = runs[(name, stage)]
                row.update(run, seconds=round(run["finished_at"] - run["started_at"], 3))
            if row["status"] == "failed":
                row["error"] = errors[(name, stage)]
            rows[stage] = row
        done = [r for r in rows.values() if "finished_at" in r]
        gpu_hours = sum(r["seconds"] * len(r["gpu_ids"]) for r in done if r["status"] == "ran") / 3600
        built = all(r["status"] in ("ran", "up to date") for r in rows.values())
        failed = next((f"{s}: {r['error']}" for s, r in rows.items() if r["status"] == "failed"), None)
        out[name] = {
            "status": "built" if built else "failed",
            "error": failed,
            "stages": rows,
            "seconds": round(max(r["finished_at"] for r in done) - min(r["started_at"] for r in done), 3) if done else 0.0,
            "gpu_hours": round(gpu_hours, 6),
            "snr_db_lowest": _snr(store / name),
            "wer": None,  # the matrix does not evaluate transcriptions
            "build_dir": str(store / name),
            "report": str(store / name / "report.md") if built and "report" in stages else None,
        }
    return MatrixSummary(started_at, finished_at, out)


def to_markdown(summary: MatrixSummary, stages: Sequence[str]) -> str:
    lines = [f"# Matrix summary", "",
             f"{len(summary.cells)} cell(s), makespan {summary.makespan_s:.1f} s "
             f"({_iso(summary.started_at)} to {_iso(summary.finished_at)}).", "",
             "| cell | status | " + " | ".join(stages) + " | GPU-hours | lowest SNR (dB) enc / dec |",
             "|" + "---|" * (len(stages) + 4)]
    for name, cell in summary.cells.items():
        cols = []
        for stage in stages:
            row = cell["stages"].get(stage, {"status": "not planned"})
            text = SYMBOLS.get(row["status"], row["status"])
            if "seconds" in row:
                text += f" {row['seconds']:.1f}s" + (f" GPU {','.join(row['gpu_ids'])}@{row.get('accelerator_type')}"
                                                     if row.get("gpu_ids") else "")
            cols.append(text)
        snr = cell.get("snr_db_lowest") or {}
        snr_text = " / ".join("-" if snr.get(m) is None else f"{snr[m]:.1f}" for m in MODELS)
        lines.append(f"| {name} | {cell['status']} | " + " | ".join(cols) + f" | {cell['gpu_hours']:.4f} | {snr_text} |")
    problems = [(name, cell["error"]) for name, cell in summary.cells.items() if cell.get("error")]
    if problems:
        lines += ["", "## Problems", ""] + [f"- **{name}**: {error}" for name, error in problems]
    return "\n".join(lines) + "\n"


def write_summary(summary: MatrixSummary, store: Path) -> tuple[Path, Path]:
    stages = next((list(c["stages"]) for c in summary.cells.values()), [])
    json_path, md_path = store / "matrix-summary.json", store / "matrix-summary.md"
    write_json_atomic(json_path, summary.to_json())
    write_text_atomic(md_path, to_markdown(summary, stages))
    return json_path, md_path
