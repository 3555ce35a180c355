"""Calibration data CLI (what the export container runs; the same command works natively).

    python -m calib encoder --audio DIR --seconds 10 --size N [--min-entries M] [--seed S] --out FILE.npy
    python -m calib decoder --encoder-set FILE.npy --export-dir DIR --out FILE.npz [--size N]
    python -m calib download --dest DIR

Each command's config, its arguments and its to_argv() live together in calib/config.py.
Exit status 0 on success, 2 with a one-line "error: <problem> <fix>" on a ToolchainError.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from calib.config import DecoderSetConfig, DownloadConfig, EncoderSetConfig
from pipeline.errors import run_cli


def _encoder(config: EncoderSetConfig) -> None:
    from calib.encoder_set import build_encoder_set

    result = build_encoder_set(config)
    skipped = f", {len(result.skipped)} files skipped (see manifest)" if result.skipped else ""
    print(f"wrote {result.path}: {list(result.shape)} float32 NHWC in {result.elapsed_s:.1f} s "
          f"({result.count / max(result.elapsed_s, 1e-9):.0f} entries/s){skipped}; manifest {result.manifest_path}")


def _decoder(config: DecoderSetConfig) -> None:
    from calib.decoder_set import build_decoder_set

    result = build_decoder_set(config)
    shapes = ", ".join(f"{k} {v}" for k, v in result.shapes.items())
    print(f"wrote {result.path}: {shapes} in {result.elapsed_s:.1f} s "
          f"({result.count / max(result.elapsed_s, 1e-9):.1f} samples/s); manifest {result.manifest_path}")


def _download(config: DownloadConfig) -> None:
    from calib.librispeech import download_librispeech

    folder = download_librispeech(config.dest, progress=config.progress)
    print(f"LibriSpeech dev-clean is in {folder} (use it as --audio)")


# command -> (its config, what runs it, help); each config owns its arguments and to_argv().
COMMANDS = {
    EncoderSetConfig.COMMAND: (EncoderSetConfig, _encoder,
                               "encoder set: log-mel windows of speech, [N, 1, frames, 80] .npy"),
    DecoderSetConfig.COMMAND: (DecoderSetConfig, _decoder,
                               "decoder set: encoder states + embedded greedy tokens, .npz"),
    DownloadConfig.COMMAND: (DownloadConfig, _download, "download LibriSpeech dev-clean (337 MB; needs internet)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m calib", description="Whisper calibration data for the Hailo DFC.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command, (config_type, _, help_text) in COMMANDS.items():
        config_type.add_arguments(sub.add_parser(command, help=help_text))
    return parser


def config_from_args(args: argparse.Namespace):
    """The config of the command `args` holds (the inverse of its to_argv())."""
    return COMMANDS[args.command][0].from_args(args)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: COMMANDS[args.command][1](config_from_args(args)))


if __name__ == "__main__":
    sys.exit(main())
