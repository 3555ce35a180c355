"""Calibration data CLI (what the export container runs; the same command works natively).

    python -m calib encoder --audio DIR --seconds 10 --size N [--min-entries M] [--seed S] --out FILE.npy
    python -m calib decoder --encoder-set FILE.npy --export-dir DIR --out FILE.npz [--size N]
    python -m calib download --dest DIR

Exit status 0 on success, 2 with a one-line "error: <problem> <fix>" on a ToolchainError.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from pipeline.errors import run_cli


def _encoder(args) -> None:
    from calib.encoder_set import EncoderSetConfig, build_encoder_set

    result = build_encoder_set(
        EncoderSetConfig(
            audio_dir=Path(args.audio),
            out=Path(args.out),
            seconds=args.seconds,
            size=args.size,
            min_entries=args.min_entries,
            seed=args.seed,
            workers=args.workers,
            progress=not args.no_progress,
        )
    )
    skipped = f", {len(result.skipped)} files skipped (see manifest)" if result.skipped else ""
    print(f"wrote {result.path}: {list(result.shape)} float32 NHWC in {result.elapsed_s:.1f} s "
          f"({result.count / max(result.elapsed_s, 1e-9):.0f} entries/s){skipped}; manifest {result.manifest_path}")


def _decoder(args) -> None:
    from calib.decoder_set import DecoderSetConfig, build_decoder_set

    result = build_decoder_set(
        DecoderSetConfig(
            encoder_set=Path(args.encoder_set),
            export_dir=Path(args.export_dir),
            out=Path(args.out),
            size=args.size,
            workers=args.workers,
            progress=not args.no_progress,
        )
    )
    shapes = ", ".join(f"{k} {v}" for k, v in result.shapes.items())
    print(f"wrote {result.path}: {shapes} in {result.elapsed_s:.1f} s "
          f"({result.count / max(result.elapsed_s, 1e-9):.1f} samples/s); manifest {result.manifest_path}")


def _download(args) -> None:
    from calib.librispeech import download_librispeech

    folder = download_librispeech(Path(args.dest), progress=not args.no_progress)
    print(f"LibriSpeech dev-clean is in {folder} (use it as --audio)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m calib", description="Whisper calibration data for the Hailo DFC.")
    sub = parser.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encoder", help="encoder set: log-mel windows of speech, [N, 1, frames, 80] .npy")
    enc.add_argument("--audio", required=True, help="folder of audio files (searched recursively)")
    enc.add_argument("--seconds", type=float, default=10.0, help="window length = the encoder's input (default 10)")
    enc.add_argument("--size", type=int, required=True,
                     help="target entries (tiny 4000, base 2048: calib.encoder_set.default_calib_size)")
    enc.add_argument("--min-entries", type=int, default=1,
                     help="fail when fewer usable entries (the model script's finetune dataset_size)")
    enc.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    enc.add_argument("--out", required=True, help="output .npy; <stem>.manifest.json is written beside it")
    enc.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    enc.add_argument("--no-progress", action="store_true")
    enc.set_defaults(run=_encoder)

    dec = sub.add_parser("decoder", help="decoder set: encoder states + embedded greedy tokens, .npz")
    dec.add_argument("--encoder-set", required=True, help="the encoder set .npy")
    dec.add_argument("--export-dir", required=True, help="pipeline.export.export output folder (export.json)")
    dec.add_argument("--out", required=True, help="output .npz")
    dec.add_argument("--size", type=int, default=None, help="use the first N entries (default: all)")
    dec.add_argument("--workers", type=int, default=None, help="samples decoded concurrently (default: all cores)")
    dec.add_argument("--no-progress", action="store_true")
    dec.set_defaults(run=_decoder)

    dl = sub.add_parser("download", help="download LibriSpeech dev-clean (337 MB; needs internet)")
    dl.add_argument("--dest", required=True, help="folder to download and extract into")
    dl.add_argument("--no-progress", action="store_true")
    dl.set_defaults(run=_download)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
