"""Decoder calibration set: (encoder states, embedded tokens) pairs from greedy decoding.

For each entry of the encoder calibration set ([N, 1, frames, 80] NHWC mel):
1. run the exported encoder ONNX (input [1, 80, 1, frames] NCHW) -> states [positions, d];
2. greedy-decode from export.json's prompt until end-of-text or seq_len. By default with the
   export's cached (KV-cache) decoder, a chunk of samples as one batch
   (pipeline.export.cached_greedy); `token_decoder="fixed"` runs the Hailo decoder's own
   fixed-length ONNX once per token per sample as before (pipeline.export.onnx_greedy). Both give
   the same tokens (tests/test_calib_decoder_set.py checks the bytes of the output);
3. embed the token sequence on the host: token_embedding[tokens] + positional_embedding.

The two decoder inputs are saved in an .npz keyed by the DFC input layer names that export.json
gives (decoder "dfc_input_layers": `<net>/input_layer1` -> encoder states [N, 1, positions, d],
`<net>/input_layer2` -> embedded tokens [N, 1, seq_len, d], float32 NHWC). The encoder graph has
a fixed batch of 1 (as the Hailo network), so samples run concurrently on worker threads (ONNX
Runtime releases the GIL), each session run single-threaded; the cached decoder then runs the
chunk as one batch on `workers` threads. The .npz is streamed to a temporary name, one sample at
a time, and renamed into place at the end: memory stays bounded by a chunk.
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
from pipeline.export import cached_greedy, onnx_greedy
from pipeline.errors import ToolchainError
from pipeline.export.meta import read_export_json
from pipeline.files import temp_path_for, write_json_atomic

MANIFEST_FORMAT = 1
TOKEN_DECODERS = ("cached", "fixed")
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip entry can say
CHUNK_PER_WORKER = 16  # samples in flight per worker: their encoder states are the memory bound


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
    """Write float32 arrays of known shape into an uncompressed .npz, row by row.

    Entries carry a fixed timestamp, so the same arrays always give the same file bytes."""

    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def begin(self, key: str, shape: tuple[int, ...]):
        info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE_TIME)
        entry = self.zip.open(info, mode="w", force_zip64=True)
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

    if config.token_decoder not in TOKEN_DECODERS:
        raise ToolchainError(f"Unknown token decoder {config.token_decoder!r}.", f"Use one of {', '.join(TOKEN_DECODERS)}.")

    workers = resolve_workers(config.workers)
    states_key, embeddings_key = decoder_input_keys(meta)
    token_embedding, positional_embedding = onnx_greedy.load_host_assets(config.export_dir, meta)
    positions, d_model, seq_len = int(meta["encoder_positions"]), int(meta["d_model"]), int(meta["seq_len"])
    end_of_text = int(meta["tokens"]["end_of_text"])
    prompt_len = len(meta["tokens"]["prompt"])
    decode_chunk = _ChunkDecoder(config, meta, workers)

    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(out)
    tokens = np.empty((count, seq_len), dtype=np.int64)
    chunk = config.chunk or CHUNK_PER_WORKER * workers
    try:
        writer = _NpzStreamWriter(tmp)
        try:
            with writer.begin(states_key, (count, 1, positions, d_model)) as entry, tqdm(
                total=count, unit="sample", desc="decoder calib", disable=not config.progress, dynamic_ncols=True
            ) as bar:
                for start in range(0, count, chunk):
                    stop = min(start + chunk, count)
                    states, tokens[start:stop] = decode_chunk(np.asarray(mels[start:stop]))
                    for sample_states in states:
                        entry.write(np.ascontiguousarray(sample_states, dtype=np.float32).tobytes())
                    bar.update(stop - start)
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
        decode_chunk.close()

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
        "token_decoder": config.token_decoder,
    }
    manifest_path = write_json_atomic(out.with_name(f"{out.stem}.manifest.json"), manifest)
    return DecoderSetResult(out, manifest_path, count, shapes, time.monotonic() - started, manifest)


class _ChunkDecoder:
    """mel chunk [n, 1, frames, 80] -> (encoder states [n, positions, d], token rows [n, seq_len]).

    Every session runs single-threaded; `workers` threads share them. With the cached decoder each
    thread takes a contiguous slice of the chunk, encodes it sample by sample and decodes it as
    one batch (no intra-op threads to synchronise); with the fixed decoder each thread takes one
    sample at a time, as before.
    """

    def __init__(self, config: DecoderSetConfig, meta: dict, workers: int):
        self.meta = meta
        self.seq_len = int(meta["seq_len"])
        self.workers = workers
        self.encoder, self.fixed_decoder = onnx_greedy.load_sessions(config.export_dir, meta, threads=1)
        self.cached = (cached_greedy.load_cached_decoder(config.export_dir, meta, threads=1)
                       if config.token_decoder == "cached" else None)
        self.embedding = onnx_greedy.load_host_assets(config.export_dir, meta)
        self.executor = cf.ThreadPoolExecutor(workers) if workers > 1 else None

    def _map(self, function, items) -> list:
        return list(self.executor.map(function, items) if self.executor else map(function, items))

    def _encode(self, mels: np.ndarray) -> np.ndarray:
        return np.stack([onnx_greedy.encode(self.encoder, self.meta, mel[None])[0] for mel in mels])

    def _fixed(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        states = self._encode(mel[None])
        tokens = onnx_greedy.greedy_decode(self.encoder, self.fixed_decoder, self.meta, *self.embedding, mel[None],
                                           encoder_states=states)
        return states[0], tokens[0]

    def _cached(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        states = self._encode(mels)
        budget = self.seq_len - len(self.meta["tokens"]["prompt"])
        options = cached_greedy.DecodeOptions(max_new_tokens=budget, pad_encoder=False)  # the Hailo decoder's view
        generated = cached_greedy.transcribe_tokens(states, self.cached, self.meta, options=options)
        return states, cached_greedy.as_fixed_rows(generated, self.meta, self.seq_len)

    def __call__(self, mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.cached is None:
            states, tokens = zip(*self._map(self._fixed, mels))
            return np.stack(states), np.stack(tokens)
        slices = [part for part in np.array_split(mels, min(self.workers, len(mels))) if len(part)]
        states, tokens = zip(*self._map(self._cached, slices))
        return np.concatenate(states), np.concatenate(tokens)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)
