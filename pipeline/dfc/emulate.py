"""Emulate stage: the accuracy ladder's emulator rows inside the DFC image (Docker mode, where the
host has no `hailo_sdk_client`).

    python -m pipeline.dfc.emulate --export-dir DIR --mel FILE --row NAME ENCODER DECODER [--row ...]
        --out-dir DIR
    ENCODER  onnx | <context>:<har>          the float encoder ONNX, or the DFC emulator on a HAR
    DECODER  onnx | <context>:<har> | host   the same for the fixed-length decoder; `host`: no decoder
                                             here, the row's encoder states go back to the host (its
                                             cached KV-cache decoder decodes them)
    <context>: native (SDK_NATIVE, the parsed HAR) or quantized (SDK_QUANTIZED, the optimized HAR)
    -> <out-dir>/emulate.json {"format", "dfc_version", "windows", "rows": {NAME: {"tokens": [[int]]
       per window} or {"states": "<NAME>-states.npy"}, "seconds"}}; <out-dir>/<NAME>-states.npy
       [windows, positions, d] float32 for a `host` decoder

The mel windows ([windows, frames, 80] float32, .npy) are the host's (pipeline/host/transcriber.py
`Transcriber.windows`), so the container decodes exactly what the in-process ladder would. The
greedy loop is the shared one (pipeline/export/onnx_greedy.py); the float halves run under ONNX
Runtime, which the DFC images carry. `har_encoder` / `har_decoder` are also the transcriber's `har`
backend: one place feeds the emulator its NHWC inputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Optional, Sequence

import numpy as np

from pipeline.dfc import client as dfc
from pipeline.errors import ToolchainError
from pipeline.export import onnx_greedy
from pipeline.export.meta import read_export_json
from pipeline.files import atomic_path, write_json_atomic
from pipeline.tables import N_MELS

RESULT_NAME = "emulate.json"
RESULT_FORMAT = 1
ONNX = "onnx"  # a half that runs in float under ONNX Runtime
HOST = "host"  # a decoder that is not run here: the encoder states go back to the host

Encoder = Callable[[np.ndarray], np.ndarray]  # mel [frames, 80] -> states [positions, d]
Decoder = Callable[[np.ndarray, np.ndarray], np.ndarray]  # states, embedded [seq, d] -> logits [seq, vocab]


# --- the emulator, fed the way the DFC takes its inputs (NHWC) ----------------------------------


def har_encoder(har: Path, context: str) -> Encoder:
    """The DFC emulator on an encoder HAR: NHWC [1, 1, frames, 80] in, [1, 1, positions, d] out."""
    emulator = dfc.Emulator(har, context)
    return lambda mel: np.asarray(emulator.run(mel[None, None]))[0, 0]


def har_decoder(har: Path, context: str, layers: Mapping[str, str], inputs: Sequence[str]) -> Decoder:
    """The DFC emulator on a decoder HAR; `layers` maps <net>/input_layerN to the ONNX input
    names `inputs` = (encoder states, embeddings)."""
    emulator = dfc.Emulator(har, context)
    states_layer = next(layer for layer, name in layers.items() if name == inputs[0])
    embed_layer = next(layer for layer, name in layers.items() if name == inputs[1])

    def decode(states, embedded):
        parts = emulator.run({states_layer: states[None, None], embed_layer: embedded[None, None]})
        parts = parts if isinstance(parts, list) else [parts]
        return np.concatenate([np.asarray(p)[0, 0] for p in parts], axis=-1)

    return decode


# --- the stage's command line -------------------------------------------------------------------


@dataclass(frozen=True)
class Half:
    """Where one half of a row runs: `context` None is the float ONNX, else the emulator on `har`."""

    context: Optional[str] = None  # "native" | "quantized"
    har: Optional[Path] = None

    def to_arg(self) -> str:
        return ONNX if self.context is None else f"{self.context}:{self.har}"

    @classmethod
    def from_arg(cls, text: str) -> "Half":
        if text == ONNX:
            return cls()
        context, sep, har = text.partition(":")
        if not sep or context not in dfc.EMULATION_CONTEXTS or not har:
            raise ToolchainError(f"{text!r} is not a half of an emulated row.",
                                 f"Pass {ONNX} or <context>:<har> with context one of "
                                 f"{', '.join(dfc.EMULATION_CONTEXTS)}.")
        return cls(context, Path(har))


@dataclass(frozen=True)
class EmulatedRow:
    """One ladder row: its encoder and its decoder (None: the host decodes the encoder states)."""

    name: str
    encoder: Half
    decoder: Optional[Half]

    def to_argv(self) -> list[str]:
        return ["--row", self.name, self.encoder.to_arg(), HOST if self.decoder is None else self.decoder.to_arg()]

    @classmethod
    def from_arg(cls, values: Sequence[str]) -> "EmulatedRow":
        name, encoder, decoder = values
        return cls(name, Half.from_arg(encoder), None if decoder == HOST else Half.from_arg(decoder))


@dataclass(frozen=True)
class EmulateConfig:
    """One emulate run; `to_argv()` is the command line `build_parser()` reads back into it."""

    MODULE: ClassVar[str] = "pipeline.dfc.emulate"

    export_dir: Path
    mel: Path  # .npy [windows, frames, 80] float32
    rows: tuple  # EmulatedRow, ...
    out_dir: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "EmulateConfig":
        return cls(args.export_dir, args.mel, tuple(EmulatedRow.from_arg(r) for r in args.row), args.out_dir)

    def to_argv(self) -> list[str]:
        argv = ["--export-dir", str(self.export_dir), "--mel", str(self.mel)]
        for row in self.rows:
            argv += row.to_argv()
        return argv + ["--out-dir", str(self.out_dir)]


# --- running the rows ---------------------------------------------------------------------------


def read_windows(path: Path, frames: int) -> np.ndarray:
    """The host's mel windows [windows, frames, 80] float32; a clear error for any other shape."""
    try:
        mels = np.load(path)
    except (OSError, ValueError) as err:
        raise ToolchainError(f"Cannot read the mel windows {path}: {err}.",
                             "The host writes them before it starts this stage; run the gate again.") from None
    if mels.ndim != 3 or mels.shape[1:] != (frames, N_MELS) or len(mels) == 0:
        raise ToolchainError(f"The mel windows {path} have shape {mels.shape}; the export needs "
                             f"[windows, {frames}, {N_MELS}].", "Compute them for this build's window length.")
    return mels.astype(np.float32, copy=False)


def _encoder(half: Half, export_dir: Path, meta: Mapping) -> Encoder:
    if half.context is not None:
        return har_encoder(half.har, half.context)
    session = onnx_greedy.load_session(export_dir, meta, "encoder")
    return lambda mel: onnx_greedy.encode(session, meta, mel[None, None])[0]


def _token_decoder(half: Half, export_dir: Path, meta: Mapping) -> Callable[[np.ndarray], list]:
    """states [positions, d] -> generated tokens, with the fixed-length decoder of `half`."""
    token_embedding, positional_embedding = onnx_greedy.load_host_assets(export_dir, meta)
    seq_len = int(meta["seq_len"])
    if half.context is not None:
        decoder = meta["decoder"]
        emulated = har_decoder(half.har, half.context, decoder.get("dfc_input_layers", {}),
                               [i["name"] for i in decoder["inputs"]])
        return lambda states: onnx_greedy.fixed_length_tokens(emulated, states, token_embedding, positional_embedding,
                                                              meta["tokens"], seq_len)
    session = onnx_greedy.load_session(export_dir, meta, "decoder")
    return lambda states: onnx_greedy.generated_tokens(onnx_greedy.greedy_decode(
        None, session, meta, token_embedding, positional_embedding, None, encoder_states=states[None])[0], meta)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as stream:
        np.save(stream, array)


def run_row(row: EmulatedRow, mels: np.ndarray, export_dir: Path, meta: Mapping, out_dir: Path) -> dict:
    """One row on every window: its tokens, or (decoder on the host) its encoder states' file."""
    started = time.monotonic()
    encoder = _encoder(row.encoder, export_dir, meta)
    if row.decoder is None:
        states_name = f"{row.name}-states.npy"
        _save_npy(out_dir / states_name, np.stack([np.asarray(encoder(m), dtype=np.float32) for m in mels]))
        return {"states": states_name, "seconds": round(time.monotonic() - started, 3)}
    decode = _token_decoder(row.decoder, export_dir, meta)
    tokens = [[int(t) for t in decode(np.asarray(encoder(m), dtype=np.float32))] for m in mels]
    return {"tokens": tokens, "seconds": round(time.monotonic() - started, 3)}


def run_emulate(config: EmulateConfig) -> dict:
    meta = read_export_json(config.export_dir)
    mels = read_windows(config.mel, int(meta["frames"]))
    result = {"format": RESULT_FORMAT, "dfc_version": dfc.installed_dfc_version(), "windows": len(mels),
              "rows": {row.name: run_row(row, mels, config.export_dir, meta, config.out_dir) for row in config.rows}}
    write_json_atomic(Path(config.out_dir) / RESULT_NAME, result)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.dfc.emulate",
        description="Run accuracy-ladder rows with the DFC emulator on mel windows the host computed: "
        "each half on the emulator (a HAR under the native or quantized context) or on the float ONNX. "
        "Writes <out-dir>/emulate.json with each row's tokens per window (or, with decoder `host`, "
        "<out-dir>/<row>-states.npy for the host's decoder).",
    )
    parser.add_argument("--export-dir", type=Path, required=True, help="directory with export.json")
    parser.add_argument("--mel", type=Path, required=True, help=".npy of mel windows [windows, frames, 80]")
    parser.add_argument("--row", nargs=3, action="append", required=True, metavar=("NAME", "ENCODER", "DECODER"),
                        help=f"a row: ENCODER {ONNX} | <context>:<har>; DECODER the same, or {HOST}")
    parser.add_argument("--out-dir", type=Path, required=True)
    return parser


def main(argv=None) -> int:
    return dfc.cli_main(build_parser(), lambda a: run_emulate(EmulateConfig.from_args(a)), argv)


if __name__ == "__main__":
    sys.exit(main())
