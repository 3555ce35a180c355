"""What each `python -m calib` command builds (a frozen config), its arguments, and `to_argv()`:
the command line that `calib.__main__.build_parser()` reads back into the same config.

Kept free of the calibration dependencies (numpy, soundfile, tqdm) so that the host-side build can
make these configs without them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from pipeline.tables import FRAMES_PER_SECOND, SAMPLE_RATE

# LibriSpeech dev-clean on openslr.org (resource 12); here so the host's preflight can check it is
# reachable without calib's dependencies.
DEV_CLEAN_URL = "https://www.openslr.org/resources/12/dev-clean.tar.gz"



def _optional(flag: str, value) -> list[str]:
    return [] if value is None else [flag, str(value)]


@dataclass(frozen=True)
class EncoderSetConfig:
    """What to build; made once by the entry point and passed down."""

    MODULE: ClassVar[str] = "calib"  # python -m calib <COMMAND> ...
    COMMAND: ClassVar[str] = "encoder"

    audio_dir: Path
    out: Path  # the .npy; the manifest goes to <stem>.manifest.json beside it
    seconds: float = 10.0
    size: int = 4000  # target entries, fewer if the audio runs out; the build and `invoke calib` pass
    #                   pipeline.dfc.model_scripts.calibration_entries_needed()
    min_entries: int = 1  # fail below this (the finetune dataset_size of the model script)
    seed: int = 0
    workers: Optional[int] = None  # None: every available core
    windows_per_task: int = 8  # mels a worker computes and sends back at once (not on the command line)
    progress: bool = True

    @property
    def window_samples(self) -> int:
        return int(round(self.seconds * SAMPLE_RATE))

    @property
    def frames(self) -> int:
        return int(round(self.seconds * FRAMES_PER_SECOND))

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--audio", type=Path, required=True, help="folder of audio files (searched recursively)")
        parser.add_argument("--seconds", type=float, default=10.0,
                            help="window length = the encoder's input (default 10)")
        parser.add_argument("--size", type=int, required=True,
                            help="target entries (`invoke calib`/`invoke build`: what the model scripts need, "
                            "pipeline.dfc.model_scripts.calibration_entries_needed)")
        parser.add_argument("--min-entries", type=int, default=1,
                            help="fail when fewer usable entries (the model script's finetune dataset_size)")
        parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
        parser.add_argument("--out", type=Path, required=True,
                            help="output .npy; <stem>.manifest.json is written beside it")
        parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
        parser.add_argument("--no-progress", action="store_true")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "EncoderSetConfig":
        return cls(audio_dir=args.audio, out=args.out, seconds=args.seconds, size=args.size,
                   min_entries=args.min_entries, seed=args.seed, workers=args.workers,
                   progress=not args.no_progress)

    def to_argv(self) -> list[str]:
        argv = [self.COMMAND, "--audio", str(self.audio_dir), "--seconds", repr(float(self.seconds)),
                "--size", str(self.size), "--min-entries", str(self.min_entries), "--seed", str(self.seed),
                "--out", str(self.out)]
        return argv + _optional("--workers", self.workers) + ([] if self.progress else ["--no-progress"])


@dataclass(frozen=True)
class DecoderSetConfig:
    MODULE: ClassVar[str] = "calib"  # python -m calib <COMMAND> ...
    COMMAND: ClassVar[str] = "decoder"

    encoder_set: Path  # .npy [N, 1, frames, 80] from calib.encoder_set
    export_dir: Path  # pipeline.export.export output (export.json + ONNX + host .npy assets)
    out: Path  # .npz; a manifest goes to <stem>.manifest.json beside it
    size: Optional[int] = None  # use the first `size` entries (None: all)
    workers: Optional[int] = None  # concurrent samples (None: every available core)
    progress: bool = True
    token_decoder: str = "cached"  # "cached": the export's KV-cache decoder, batched; "fixed": the Hailo decoder ONNX
    chunk: Optional[int] = None  # samples one thread decodes as a batch, cached decoder (None: calib.decoder_set.decode_batch_size)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--encoder-set", type=Path, required=True, help="the encoder set .npy")
        parser.add_argument("--export-dir", type=Path, required=True,
                            help="pipeline.export.export output folder (export.json)")
        parser.add_argument("--out", type=Path, required=True, help="output .npz")
        parser.add_argument("--size", type=int, default=None, help="use the first N entries (default: all)")
        parser.add_argument("--workers", type=int, default=None,
                            help="samples decoded concurrently (default: all cores)")
        parser.add_argument("--token-decoder", choices=("cached", "fixed"), default="cached",
                            help="greedy tokens from the export's KV-cache decoder, batched (default), or from the "
                                 "fixed-length Hailo decoder ONNX, one run per token (same tokens, several times slower)")
        parser.add_argument("--chunk", type=int, default=None, help="samples one thread decodes as one batch with the cached decoder (default: up to 64, fewer where the cross-attention caches would pass 512 MiB per thread)")
        parser.add_argument("--no-progress", action="store_true")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DecoderSetConfig":
        return cls(encoder_set=args.encoder_set, export_dir=args.export_dir, out=args.out, size=args.size,
                   workers=args.workers, progress=not args.no_progress, token_decoder=args.token_decoder,
                   chunk=args.chunk)

    def to_argv(self) -> list[str]:
        argv = [self.COMMAND, "--encoder-set", str(self.encoder_set), "--export-dir", str(self.export_dir),
                "--out", str(self.out)]
        return (argv + _optional("--size", self.size) + _optional("--workers", self.workers)
                + (["--token-decoder", self.token_decoder] if self.token_decoder != "cached" else [])
                + _optional("--chunk", self.chunk) + ([] if self.progress else ["--no-progress"]))


@dataclass(frozen=True)
class DownloadConfig:
    """LibriSpeech dev-clean into `dest` (calib.librispeech)."""

    MODULE: ClassVar[str] = "calib"  # python -m calib <COMMAND> ...
    COMMAND: ClassVar[str] = "download"

    dest: Path
    progress: bool = True

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--dest", type=Path, required=True, help="folder to download and extract into")
        parser.add_argument("--no-progress", action="store_true")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DownloadConfig":
        return cls(dest=args.dest, progress=not args.no_progress)

    def to_argv(self) -> list[str]:
        return [self.COMMAND, "--dest", str(self.dest)] + ([] if self.progress else ["--no-progress"])
