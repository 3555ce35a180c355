"""Optimize stage: quantize a parsed HAR with calibration data and a model script (DFC container).

    python -m pipeline.dfc.optimize --har FILE --model encoder|decoder --export-dir DIR --calib FILE
        --arch ARCH (--profile full|quick | --model-script FILE) [--noise-analysis] --out-dir DIR [--log FILE]
    -> <out-dir>/<net>_optimized.har, <out-dir>/<net>.alls (the script used, layer names resolved
       for this HAR), <out-dir>/<net>.layers.json (HAR layers, role table), <out-dir>/optimize.json;
       the DFC's temporary files go to <out-dir>/optimize-work (optimize(work_dir=...))

Before the DFC starts, every layer the script names is checked against the parsed HAR (a generated
profile's hailo-whisper names are first resolved by role), the HAR must hold export.json's network,
and the calibration set is checked against the parsed network (NHWC layout,
shapes, input layer names) and against the script's needs (calibset_size, fine-tune dataset_size).
optimize.json: {"dfc_version", "arch", "model", "net_name", "har_in", "har_in_sha256", "calib",
"calib_sha256", "calib_entries", "calib_needed" {"calibset_size", "finetune_dataset_size"},
"profile" ("full"|"quick"|"custom"), "model_script_source", "model_script", "model_script_sha256",
"noise_analysis", "layer_roles" [{"reference", "role", "layers"}], "layers_json", "har_layer_count",
"snr_db" {"<net>/output_layerN": dB}, "output_layers", "har", "har_sha256"} plus the common fields.
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
from pipeline.dfc.model_scripts import PROFILES, resolve_model_script
from pipeline.dfc.parse import ParseConfig, run_parse
from pipeline.layout import Layout
from pipeline.tables import ARCHS, MODELS


@dataclass(frozen=True)
class OptimizeConfig:
    """One optimize run; `to_argv()` is the command line `build_parser()` reads back into it."""

    MODULE: ClassVar[str] = "pipeline.dfc.optimize"

    har: Path  # the parsed HAR (<net>.har)
    model: str
    export_dir: Path
    calib: Path  # .npy (encoder) or .npz (decoder)
    arch: str
    out_dir: Path
    profile: str = "full"  # ignored (and not on the command line) when model_script is given
    model_script: Optional[Path] = None  # overrides profile
    noise_analysis: bool = False
    log: Optional[Path] = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "OptimizeConfig":
        return cls(har=args.har, model=args.model, export_dir=args.export_dir, calib=args.calib, arch=args.arch,
                   out_dir=args.out_dir, profile=args.profile, model_script=args.model_script,
                   noise_analysis=args.noise_analysis, log=args.log)

    def to_argv(self) -> list[str]:
        argv = ["--har", str(self.har), "--model", self.model, "--export-dir", str(self.export_dir),
                "--calib", str(self.calib), "--arch", self.arch]
        argv += ["--model-script", str(self.model_script)] if self.model_script else ["--profile", self.profile]
        argv += ["--noise-analysis"] if self.noise_analysis else []
        argv += ["--out-dir", str(self.out_dir)]
        return argv + (["--log", str(self.log)] if self.log else [])


def run_optimize(config: OptimizeConfig) -> dict:
    network = load_network_export(config.export_dir, config.model)
    script = resolve_model_script(network.variant, config.arch, config.model, config.profile,
                                  config.model_script, config.noise_analysis)
    return dfc.run_dfc_step(
        "optimize", config.out_dir,
        lambda: dfc.optimize(config.har, network, config.arch, config.calib, script, config.out_dir),
        config.log,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.dfc.optimize",
        description="Quantize a parsed HAR with the Dataflow Compiler. The model script is the "
        "generated profile (full: hailo-whisper's settings, hours on a GPU; quick: optimization "
        "level 0, no fine-tune, minutes) or your --model-script. The calibration set is checked "
        "before the DFC starts. Writes <net>_optimized.har, <net>.alls and optimize.json (with the "
        "timeline and the SNR per output when noise analysis runs).",
    )
    parser.add_argument("--har", type=Path, required=True, help="the parsed HAR written by pipeline.dfc.parse")
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--export-dir", type=Path, required=True, help="directory with export.json")
    parser.add_argument("--calib", type=Path, required=True,
                        help="calibration set: calib/encoder_calib.npy [N,1,frames,80] or "
                        "calib/decoder_calib.npz keyed by <net>/input_layerN")
    parser.add_argument("--arch", required=True, choices=list(ARCHS))
    script = parser.add_mutually_exclusive_group()
    script.add_argument("--profile", choices=PROFILES, default="full",
                        help="generated model script (default: full)")
    script.add_argument("--model-script", type=Path, default=None,
                        help="use this .alls file instead of a generated profile")
    parser.add_argument("--noise-analysis", action="store_true",
                        help="run the layer noise analysis (SNR per output) even if the script "
                        "does not enable it (full already does)")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--log", type=Path, default=None,
                        help="read the timeline from this DFC log instead of capturing the console "
                        "into <out-dir>/optimize-dfc.log")
    return parser


def main(argv=None) -> int:
    return dfc.cli_main(build_parser(), lambda a: run_optimize(OptimizeConfig.from_args(a)), argv)


def optimize_build(build_dir: Path, arch: str, models=MODELS, profile: str = "full",
                   model_script: Optional[Path] = None, noise_analysis: bool = False) -> dict:
    """`invoke optimize`: in a build directory's layout, parse each model if its HAR is missing
    (the model zoo's "ensure parsed"), then optimize it. Returns {model: optimize result}.

    Paths: pipeline.layout.Layout (export.json, the calibration sets, outputs in <build>/dfc/<model>/).
    """
    layout = Layout(build_dir)
    export_dir = layout.export_dir
    results = {}
    for model in models:
        network = load_network_export(export_dir, model)
        out = layout.dfc_dir(model)
        har = layout.har(model, network.net_name, "parse")
        if not (har.is_file() and layout.dfc_result(model, "parse").is_file()):
            run_parse(ParseConfig(export_dir, model, arch, out))
        results[model] = run_optimize(OptimizeConfig(
            har=har, model=model, export_dir=export_dir, calib=layout.calib_set(model), arch=arch, out_dir=out,
            profile=profile, model_script=model_script, noise_analysis=noise_analysis))
    return results


if __name__ == "__main__":
    sys.exit(main())
