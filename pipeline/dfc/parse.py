"""Parse stage: the exported ONNX -> a HAR, through the DFC (run inside the DFC container).

    python -m pipeline.dfc.parse --export-dir DIR --model encoder|decoder --arch ARCH --out-dir DIR [--log FILE]
    -> <out-dir>/<net>.har, <out-dir>/parse.json

The ONNX file, network name, start/end node names and input shapes all come from export.json.
parse.json: {"dfc_version", "arch", "model", "net_name", "onnx", "onnx_sha256", "start_node_names",
"end_node_names", "net_input_shapes", "input_layers" {"<net>/input_layer1": [-1, H, W, C]},
"output_layers", "har", "har_sha256"} plus the common fields.
Every result JSON also has the fields `pipeline.dfc.client.run_dfc_step` adds: "format", "stage",
"ok", "started_at", "duration_s", "dfc_s" (inside the DFC), "dfc_is_test_double", "log",
"timeline", "summary".
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from pipeline.dfc import client as dfc
from pipeline.dfc.inputs import load_network_export
from pipeline.tables import ARCHS, MODELS


@dataclass(frozen=True)
class ParseConfig:
    """One parse run; `to_argv()` is the command line `build_parser()` reads back into it."""

    MODULE: ClassVar[str] = "pipeline.dfc.parse"

    export_dir: Path
    model: str  # "encoder" | "decoder"
    arch: str
    out_dir: Path
    log: Optional[Path] = None  # parse this log for the timeline instead of capturing the console

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ParseConfig":
        return cls(args.export_dir, args.model, args.arch, args.out_dir, args.log)

    def to_argv(self) -> list[str]:
        argv = ["--export-dir", str(self.export_dir), "--model", self.model, "--arch", self.arch,
                "--out-dir", str(self.out_dir)]
        return argv + (["--log", str(self.log)] if self.log else [])


def run_parse(config: ParseConfig) -> dict:
    """Check the DFC version and the export, parse, save the HAR and parse.json; return the result."""
    network = load_network_export(config.export_dir, config.model)
    return dfc.run_dfc_step("parse", config.out_dir,
                         lambda: dfc.parse(network, config.arch, config.out_dir), config.log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.dfc.parse",
        description="Parse an exported Whisper encoder or decoder (ONNX) into a Hailo archive (HAR) "
        "with the Dataflow Compiler. Reads export.json for the ONNX file, network name, start/end "
        "nodes and input shapes; refuses a DFC version that cannot target --arch before parsing. "
        "Writes <out-dir>/<net>.har and <out-dir>/parse.json (with the parse timeline).",
    )
    parser.add_argument("--export-dir", type=Path, required=True,
                        help="directory with export.json and the ONNX files (build/<variant>-<arch>/export)")
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--arch", required=True, choices=list(ARCHS),
                        help="hailo8/hailo8l need DFC 3.x, hailo10h DFC 5.x")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="where the HAR and parse.json go (build/<variant>-<arch>/dfc/<model>)")
    parser.add_argument("--log", type=Path, default=None,
                        help="read the timeline from this DFC log (e.g. the launcher's "
                        "logs/<model>-parse.log) instead of capturing the console into "
                        "<out-dir>/parse-dfc.log")
    return parser


def main(argv=None) -> int:
    return dfc.cli_main(build_parser(), lambda a: run_parse(ParseConfig.from_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
