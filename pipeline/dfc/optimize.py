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
optimize.json: {"stage": "optimize", "ok": true, "dfc_version", "arch", "model", "net_name", "har_in",
"har_in_sha256", "calib", "calib_sha256", "calib_entries", "calib_needed" {"calibset_size",
"finetune_dataset_size"}, "profile" ("full"|"quick"|"custom"), "model_script_source",
"model_script", "model_script_sha256", "noise_analysis", "layer_roles" [{"reference", "role",
"layers"}], "layers_json", "har_layer_count", "snr_db" {"<net>/output_layerN": dB},
"output_layers", "har", "har_sha256", "duration_s", "timeline", "summary", "log"}.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.dfc import client as dfc
from pipeline.dfc.model_scripts import PROFILES, resolve_model_script
from pipeline.tables import ARCHS


@dataclass(frozen=True)
class OptimizeConfig:
    har: Path  # the parsed HAR (<net>.har)
    model: str
    export_dir: Path
    calib: Path  # .npy (encoder) or .npz (decoder)
    arch: str
    out_dir: Path
    profile: str = "full"
    model_script: Optional[Path] = None  # overrides profile
    noise_analysis: bool = False
    log: Optional[Path] = None


def run_optimize(config: OptimizeConfig) -> dict:
    network = dfc.load_network_export(config.export_dir, config.model)
    script = resolve_model_script(network.variant, config.arch, config.model, config.profile,
                                  config.model_script, config.noise_analysis)
    return dfc.run_stage(
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
    parser.add_argument("--model", required=True, choices=dfc.MODELS)
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
    return dfc.cli_main(build_parser(), lambda a: run_optimize(OptimizeConfig(
        har=a.har, model=a.model, export_dir=a.export_dir, calib=a.calib, arch=a.arch,
        out_dir=a.out_dir, profile=a.profile, model_script=a.model_script,
        noise_analysis=a.noise_analysis, log=a.log)), argv)


if __name__ == "__main__":
    sys.exit(main())


def optimize_build(build_dir: Path, arch: str, models=("encoder", "decoder"), profile: str = "full",
                   model_script: Optional[Path] = None, noise_analysis: bool = False) -> dict:
    """`invoke optimize`: in a build directory's layout, parse each model if its HAR is missing
    (the model zoo's "ensure parsed"), then optimize it. Returns {model: optimize result}.

    Layout: <build>/export/export.json, <build>/calib/encoder_calib.npy|decoder_calib.npz,
    outputs in <build>/dfc/<model>/.
    """
    from pipeline.dfc.parse import ParseConfig, run_parse

    build_dir = Path(build_dir)
    export_dir = build_dir / "export"
    results = {}
    for model in models:
        network = dfc.load_network_export(export_dir, model)
        out = build_dir / "dfc" / model
        har = dfc.har_path(out, network.net_name, "parse")
        if not (har.is_file() and (out / "parse.json").is_file()):
            run_parse(ParseConfig(export_dir, model, arch, out))
        calib = build_dir / "calib" / ("encoder_calib.npy" if model == "encoder" else "decoder_calib.npz")
        results[model] = run_optimize(OptimizeConfig(
            har=har, model=model, export_dir=export_dir, calib=calib, arch=arch, out_dir=out,
            profile=profile, model_script=model_script, noise_analysis=noise_analysis))
    return results
