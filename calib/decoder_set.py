"""Decoder calibration set: (encoder states, embedded tokens) pairs from greedy decoding.

For each entry of the encoder calibration set ([N, 1, frames, 80] NHWC mel):
1. run the exported encoder ONNX (input [1, 80, 1, frames] NCHW) -> states [positions, d];
2. greedy-decode with the exported decoder ONNX from export.json's prompt until end-of-text or
   seq_len (pipeline.export.onnx_greedy: one decoder run per generated token, no more);
3. embed the token sequence on the host: token_embedding[tokens] + positional_embedding.

The two decoder inputs are saved in an .npz keyed by the DFC input layer names that export.json
gives (decoder "dfc_input_layers": `<net>/input_layer1` -> encoder states [N, 1, positions, d],
`<net>/input_layer2` -> embedded tokens [N, 1, seq_len, d], float32 NHWC). The ONNX graphs have a
fixed batch of 1 (as the Hailo networks), so samples run concurrently on worker threads (ONNX
Runtime releases the GIL), each session run single-threaded. The .npz is streamed to a temporary
name, one sample at a time, and renamed into place at the end: memory stays bounded by a chunk.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format
from tqdm import tqdm

from calib.audio import resolve_workers
from calib.config import DecoderSetConfig
from pipeline.export import onnx_greedy
from pipeline.errors import ToolchainError
from pipeline.export.meta import read_export_json
from pipeline.files import temp_path_for, write_json_atomic

MANIFEST_FORMAT = 1


@dataclass
class DecoderSetResult:
    path: Path
    manifest_path: Path
    count: int
    shapes: dict
    elapsed_s: float
    manifest: dict = field(repr=False, default_factory=dict)


def decoder_input_keys(meta: dict) -> tuple[str, str]:
    """(npz key of the encoder states, npz key of the embedded tokens) from export.json.

    The keys are the DFC input layer names; which is which comes from the ONNX input each maps to.
    """
    decoder = meta["decoder"]
    states_name, embeddings_name = (i["name"] for i in decoder["inputs"])
    by_input = {onnx_name: layer for layer, onnx_name in decoder["dfc_input_layers"].items()}
    missing = [n for n in (states_name, embeddings_name) if n not in by_input]
    if missing:
        raise ToolchainError(
            f"export.json maps no DFC input layer to decoder input(s) {missing} "
            f"(dfc_input_layers: {decoder['dfc_input_layers']}).",
            "Re-run the export stage with this toolchain version.",
        )
    return by_input[states_name], by_input[embeddings_name]


class _NpzStreamWriter:
    """Write float32 arrays of known shape into an uncompressed .npz, row by row."""

    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def begin(self, key: str, shape: tuple[int, ...]):
        entry = self.zip.open(f"{key}.npy", mode="w", force_zip64=True)
        header = {"descr": npy_format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": shape}
        npy_format.write_array_header_1_0(entry, header)
        return entry

    def close(self) -> None:
        self.zip.close()


def _check_encoder_set(encoder_set: np.ndarray, meta: dict, path: Path) -> None:
    frames = int(meta["frames"])
    if encoder_set.ndim != 4 or encoder_set.shape[1:] != (1, frames, 80) or encoder_set.dtype != np.float32:
        raise ToolchainError(
            f"Encoder set {str(path)!r} has shape {list(encoder_set.shape)} ({encoder_set.dtype}); the export "
            f"expects [N, 1, {frames}, 80] float32 ({meta['seconds']:g} s).",
            f"Rebuild it with `python -m calib encoder --seconds {meta['seconds']:g} ...`.",
        )
    if len(encoder_set) == 0:
        raise ToolchainError(f"Encoder set {str(path)!r} is empty.", "Rebuild it with more audio.")


def build_decoder_set(config: DecoderSetConfig) -> DecoderSetResult:
    """Build the decoder calibration .npz described by `config`; see the module docstring."""
    started = time.monotonic()
    meta = read_export_json(config.export_dir)
    if not Path(config.encoder_set).is_file():
        raise ToolchainError(
            f"Encoder calibration set {str(config.encoder_set)!r} does not exist.",
            "Build it first: `python -m calib encoder --audio DIR --seconds S --size N --out FILE.npy`.",
        )
    if Path(config.out).suffix != ".npz":
        raise ToolchainError(f"Output {str(config.out)!r} must end in .npz.", "Name it e.g. decoder_calib.npz.")
    mels = np.load(config.encoder_set, mmap_mode="r")
    _check_encoder_set(mels, meta, Path(config.encoder_set))
    count = len(mels) if config.size is None else min(int(config.size), len(mels))
    if count < 1:
        raise ToolchainError(f"--size {config.size} is not a positive number of entries.", "Use 1 or more.")

    workers = resolve_workers(config.workers)
    encoder, decoder = onnx_greedy.load_sessions(config.export_dir, meta, threads=1)
    token_embedding, positional_embedding = onnx_greedy.load_host_assets(config.export_dir, meta)
    states_key, embeddings_key = decoder_input_keys(meta)
    positions, d_model, seq_len = int(meta["encoder_positions"]), int(meta["d_model"]), int(meta["seq_len"])
    end_of_text = int(meta["tokens"]["end_of_text"])
    prompt_len = len(meta["tokens"]["prompt"])

    def decode_one(index: int) -> tuple[np.ndarray, np.ndarray]:
        """Entry `index` -> (encoder states [positions, d], tokens [seq_len])."""
        mel = np.asarray(mels[index : index + 1])  # [1, 1, frames, 80]
        states = onnx_greedy.encode(encoder, meta, mel)  # [1, positions, d]
        tokens = onnx_greedy.greedy_decode(
            encoder, decoder, meta, token_embedding, positional_embedding, mel, encoder_states=states
        )
        return states[0], tokens[0]

    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(out)
    tokens = np.empty((count, seq_len), dtype=np.int64)
    executor = cf.ThreadPoolExecutor(workers) if workers > 1 else None
    chunk = 8 * workers  # samples in flight: their encoder states are the memory bound
    try:
        writer = _NpzStreamWriter(tmp)
        try:
            with writer.begin(states_key, (count, 1, positions, d_model)) as entry, tqdm(
                total=count, unit="sample", desc="decoder calib", disable=not config.progress, dynamic_ncols=True
            ) as bar:
                for start in range(0, count, chunk):
                    indices = range(start, min(start + chunk, count))
                    results = executor.map(decode_one, indices) if executor else map(decode_one, indices)
                    for index, (states, sample_tokens) in zip(indices, results):
                        entry.write(np.ascontiguousarray(states, dtype=np.float32).tobytes())
                        tokens[index] = sample_tokens
                        bar.update(1)
            with writer.begin(embeddings_key, (count, 1, seq_len, d_model)) as entry:
                for row in tokens:  # host embedding, exactly as the runtime does it
                    embedded = (token_embedding[row] + positional_embedding).astype(np.float32)
                    entry.write(embedded.tobytes())
        finally:
            writer.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)

    generated = [int(np.argmax(np.append(row[prompt_len:] == end_of_text, True))) for row in tokens]
    shapes = {states_key: [count, 1, positions, d_model], embeddings_key: [count, 1, seq_len, d_model]}
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "whisper-decoder-calibration",
        "file": out.name,
        "count": count,
        "shapes": shapes,
        "dtype": "float32",
        "layout": "NHWC",
        "encoder_set": str(config.encoder_set),
        "export_dir": str(config.export_dir),
        "decoder_net_name": meta["decoder"]["net_name"],
        "prompt": [int(t) for t in meta["tokens"]["prompt"]],
        "seq_len": seq_len,
        "generated_tokens_mean": float(np.mean(generated)),
        "ended_with_end_of_text": int(sum(g < seq_len - prompt_len for g in generated)),
        "tokens_sha256": hashlib.sha256(tokens.tobytes()).hexdigest(),
    }
    manifest_path = write_json_atomic(out.with_name(f"{out.stem}.manifest.json"), manifest)
    return DecoderSetResult(out, manifest_path, count, shapes, time.monotonic() - started, manifest)
