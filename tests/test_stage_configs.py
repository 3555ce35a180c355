"""Each stage's command line is written once: its config's to_argv() is what its own parser reads
back into the same config (pipeline/export/export.py, calib/config.py, pipeline/dfc/parse.py,
optimize.py, compile.py, emulate.py)."""

from pathlib import Path

import pytest

from calib.__main__ import build_parser as calib_parser, config_from_args
from calib.config import DecoderSetConfig, DownloadConfig, EncoderSetConfig
from pipeline.dfc import compile as compile_stage, emulate as emulate_stage, optimize as optimize_stage, parse as parse_stage
from pipeline.dfc.compile import CompileConfig
from pipeline.dfc.emulate import EmulateConfig, EmulatedRow, Half
from pipeline.dfc.optimize import OptimizeConfig
from pipeline.dfc.parse import ParseConfig
from pipeline.export import export as export_stage
from pipeline.export.export import ExportConfig, make_config

B = Path("/builds/tiny-hailo8l")

DFC_CONFIGS = [
    (parse_stage, ParseConfig(B / "export", "encoder", "hailo8l", B / "dfc/encoder")),
    (parse_stage, ParseConfig(B / "export", "decoder", "hailo10h", B / "dfc/decoder", log=B / "logs/decoder-parse.log")),
    (optimize_stage, OptimizeConfig(har=B / "dfc/encoder/enc.har", model="encoder", export_dir=B / "export",
                                    calib=B / "calib/encoder_calib.npy", arch="hailo8l", out_dir=B / "dfc/encoder",
                                    profile="quick")),
    (optimize_stage, OptimizeConfig(har=B / "dfc/decoder/dec.har", model="decoder", export_dir=B / "export",
                                    calib=B / "calib/decoder_calib.npz", arch="hailo8", out_dir=B / "dfc/decoder",
                                    model_script=Path("/scripts/decoder.alls"), noise_analysis=True,
                                    log=B / "logs/decoder-optimize.log")),
    (compile_stage, CompileConfig(B / "dfc/encoder/enc_optimized.har", "hailo8l", B / "dfc/encoder")),
    (compile_stage, CompileConfig(B / "dfc/decoder/dec_optimized.har", "hailo10h", B / "dfc/decoder", B / "c.log")),
    (emulate_stage, EmulateConfig(B / "export", B / "eval/emulate/quantized/mel.npy",
                                  (EmulatedRow("quantized", Half("quantized", B / "dfc/encoder/enc_optimized.har"),
                                               Half("quantized", B / "dfc/decoder/dec_optimized.har")),),
                                  B / "eval/emulate/quantized")),
    (emulate_stage, EmulateConfig(B / "export", B / "m.npy",
                                  (EmulatedRow("quantized-encoder", Half("quantized", B / "a:b/enc.har"), Half()),
                                   EmulatedRow("native", Half("native", B / "enc.har"), None),
                                   EmulatedRow("quantized-decoder", Half(), Half("quantized", B / "dec.har"))),
                                  B / "out")),
]


@pytest.mark.parametrize("stage, config", DFC_CONFIGS, ids=lambda v: getattr(v, "__name__", type(v).__name__))
def test_a_dfc_stage_reads_its_own_command_line_back_into_the_same_config(stage, config):
    assert type(config).from_args(stage.build_parser().parse_args(config.to_argv())) == config
    assert config.MODULE == stage.__name__


@pytest.mark.parametrize("config", [
    make_config("tiny", None, None, None, str(B / "export")),
    make_config("base.en", 2.5, 16, "/models/whisper-base", str(B / "export"), offline=True, arch="hailo10h"),
], ids=["defaults", "every-flag"])
def test_the_export_reads_its_own_command_line_back_into_the_same_config(config):
    assert ExportConfig.from_args(export_stage.build_parser().parse_args(config.to_argv())) == config
    assert config.MODULE == export_stage.__name__


@pytest.mark.parametrize("config", [
    EncoderSetConfig(audio_dir=Path("/audio"), out=B / "calib/encoder_calib.npy", seconds=10.0, size=3340,
                     min_entries=3340),
    EncoderSetConfig(audio_dir=Path("/audio"), out=B / "e.npy", seconds=2.5, size=8, seed=3, workers=2, progress=False),
    DecoderSetConfig(encoder_set=B / "calib/encoder_calib.npy", export_dir=B / "export", out=B / "calib/d.npz",
                     size=1024),
    DecoderSetConfig(encoder_set=B / "e.npy", export_dir=B / "export", out=B / "d.npz", workers=1, progress=False),
    DownloadConfig(dest=B / "calib/download"),
    DownloadConfig(dest=B / "dl", progress=False),
], ids=lambda c: type(c).__name__)
def test_a_calib_command_reads_its_own_command_line_back_into_the_same_config(config):
    assert config_from_args(calib_parser().parse_args(config.to_argv())) == config
    assert config.MODULE == "calib"


def test_a_command_line_that_differs_from_the_config_is_told_apart():
    config = CompileConfig(B / "x_optimized.har", "hailo8l", B / "dfc/encoder")
    other = CompileConfig.from_args(compile_stage.build_parser().parse_args(
        ["--har", str(config.har), "--arch", "hailo8", "--out-dir", str(config.out_dir)]))
    assert other != config
