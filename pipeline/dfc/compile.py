"""Compile stage: an optimized HAR -> the HEF the Hailo device runs (DFC container).

    python -m pipeline.dfc.compile --har FILE --arch ARCH --out-dir DIR [--model-script ALLS] [--log FILE]
    -> <out-dir>/<net>.hef (written atomically), <out-dir>/<net>_compiled.har, <out-dir>/compile.json

A .hef left from an earlier run is removed before compiling, so after a failed or interrupted
compile there is no .hef at all. The model script optimize wrote is loaded again before compile()
(--model-script; the Model Zoo does the same): its compile-time commands need not be in the HAR.
compile.json: {"dfc_version", "arch", "net_name", "har_in", "har_in_sha256", "hef", "hef_sha256",
"hef_bytes", "model_script", "model_script_sha256", "compiled_har",
"compiled_har_sha256", "contexts"} plus the common fields.
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
from pipeline.errors import ToolchainError
from pipeline.layout import Layout
from pipeline.tables import ARCHS, MODELS


@dataclass(frozen=True)
class CompileConfig:
    """One compile run; `to_argv()` is the command line `build_parser()` reads back into it."""

    MODULE: ClassVar[str] = "pipeline.dfc.compile"

    har: Path  # the optimized HAR (<net>_optimized.har)
    arch: str
    out_dir: Path
    log: Optional[Path] = None
    model_script: Optional[Path] = None  # the resolved <net>.alls from optimize, loaded before compile()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CompileConfig":
        return cls(args.har, args.arch, args.out_dir, args.log, args.model_script)

    def to_argv(self) -> list[str]:
        argv = ["--har", str(self.har), "--arch", self.arch, "--out-dir", str(self.out_dir)]
        argv += ["--model-script", str(self.model_script)] if self.model_script else []
        return argv + (["--log", str(self.log)] if self.log else [])


def run_compile(config: CompileConfig) -> dict:
    return dfc.run_dfc_step(
        "compile", config.out_dir,
        lambda: dfc.compile_har(config.har, config.arch, config.out_dir, config.model_script), config.log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.dfc.compile",
        description="Compile an optimized HAR into a HEF with the Dataflow Compiler. The HEF is "
        "written atomically (a failed compile leaves no .hef); the compiled HAR and compile.json "
        "(timeline, context count, HEF sha256) are written beside it.",
    )
    parser.add_argument("--har", type=Path, required=True,
                        help="the optimized HAR written by pipeline.dfc.optimize (<net>_optimized.har)")
    parser.add_argument("--arch", required=True, choices=list(ARCHS))
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--model-script", type=Path, default=None,
                        help="the <net>.alls optimize wrote: loaded before compile() (its performance and "
                        "resource commands are not kept in the HAR)")
    parser.add_argument("--log", type=Path, default=None,
                        help="read the timeline from this DFC log instead of capturing the console "
                        "into <out-dir>/compile-dfc.log")
    return parser


def main(argv=None) -> int:
    return dfc.cli_main(build_parser(), lambda a: run_compile(CompileConfig.from_args(a)), argv)


def compile_build(build_dir: Path, arch: str, models=MODELS) -> dict:
    """`invoke compile`: compile <build>/dfc/<model>/<net>_optimized.har for each model."""
    layout = Layout(build_dir)
    results = {}
    for model in models:
        network = load_network_export(layout.export_dir, model)
        out = layout.dfc_dir(model)
        har = layout.har(model, network.net_name, "optimize")
        if not (har.is_file() and layout.dfc_result(model, "optimize").is_file()):
            # optimize.json is written last: without it the HAR is from an earlier or failed run
            raise ToolchainError(f"{har} or {layout.dfc_result(model, 'optimize')} is missing: the {model} is not "
                                 "optimized (or its last optimize failed).",
                                 f"Run `invoke optimize --model {model}` first.")
        results[model] = run_compile(CompileConfig(har, arch, out,
                                                   model_script=layout.used_model_script(model, network.net_name)))
    return results


if __name__ == "__main__":
    sys.exit(main())
