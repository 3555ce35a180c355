"""Reading export.json, the export stage's completion marker and the only source of names
(ONNX files, network names, cut points, DFC input layers) for every later stage.

Kept apart from pipeline/export/export.py so that torch-free stages (calibration, the DFC stages) can
read it without importing torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.errors import ToolchainError

EXPORT_JSON = "export.json"
EXPORT_FORMAT = 1  # bump when a reader of export.json would misread older files


def read_export_json(export_dir: str | os.PathLike) -> dict:
    """export.json of a finished export; a ToolchainError names the fix when it is missing,
    unreadable or of another format."""
    path = Path(export_dir) / EXPORT_JSON
    if not path.is_file():
        raise ToolchainError(
            f"No finished export in {export_dir}: {path} does not exist ({EXPORT_JSON} is missing).",
            "Run the export stage first (`invoke export` / `python -m pipeline.export.export`), or pass the "
            f"export directory that contains {EXPORT_JSON}.",
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ToolchainError(f"{path} is not valid JSON: {err}.", "Run the export stage again.") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ToolchainError(
            f"{path} is not an export.json of format {EXPORT_FORMAT}.",
            "Run the export stage again with this version of the toolchain.",
        )
    return meta


def cached_decoder_meta(meta: dict, export_dir: str | os.PathLike) -> dict:
    """export.json's "cached_decoder" entry (the host's KV-cache decoder, pipeline/export/cached_export.py);
    a ToolchainError says to rerun the export when the export predates it."""
    cached = meta.get("cached_decoder")
    if not isinstance(cached, dict):
        raise ToolchainError(
            f"The export in {export_dir} has no cached (KV-cache) decoder: it was made by an older version "
            "of the toolchain.",
            "Run the export stage again (`invoke build` does it by itself; or `invoke export` / "
            "`python -m pipeline.export.export`).",
        )
    return cached
