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
`<net>/input_layer2` -> embedded tokens [N, 1, seq_len, d], float32 NHWC). Every ONNX Runtime
session runs single-threaded and `workers` threads share them (ONNX Runtime releases the GIL).
With the cached decoder each thread takes a batch of consecutive samples, encodes them one by one
(the encoder graph has a fixed batch of 1, as the Hailo network) and decodes them as one batch;
threads do not wait for each other between batches. With the fixed decoder each thread takes one
sample at a time. The .npz is streamed to a temporary name in sample order and renamed into place
at the end: memory stays bounded by the batches in flight.
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
# Samples one thread decodes as a batch with the cached decoder: a larger batch spreads the
# vocabulary projection's weight reads over more rows (tiny.en, 10 s, one thread: 38.6 ms/sample at
# 16, 31.5 at 32, 25.4 at 64), bounded by the cross-attention caches it holds.
DECODE_BATCH_MAX = 64
DECODE_BATCH_CACHE_BYTES = 512 * 2**20  # per thread; tiny at 10 s holds 6.1 MB per sample, base 12.3 MB


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
    decoder = _SampleDecoder(config, meta, mels, workers)
    batch = (config.chunk or decode_batch_size(meta, count, workers)) if decoder.cached else 1
    batches = [(start, min(start + batch, count)) for start in range(0, count, batch)]

    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(out)
    tokens = np.empty((count, seq_len), dtype=np.int64)
    try:
        writer = _NpzStreamWriter(tmp)
        try:
            with writer.begin(states_key, (count, 1, positions, d_model)) as entry, tqdm(
                total=count, unit="sample", desc="decoder calib", disable=not config.progress, dynamic_ncols=True
            ) as bar:
                for (start, stop), (states, tokens[start:stop]) in zip(batches, decoder.map(batches)):
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
        decoder.close()

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


def decode_batch_size(meta: dict, count: int, workers: int) -> int:
    """Samples one thread decodes as a batch: DECODE_BATCH_MAX, fewer where the cross caches would pass
    DECODE_BATCH_CACHE_BYTES, and no more than gives every thread a batch."""
    layers = len(meta["cached_decoder"]["cross_cache"]) // 2
    per_sample = 2 * layers * int(meta["encoder_positions"]) * int(meta["d_model"]) * 4
    by_memory = max(1, DECODE_BATCH_CACHE_BYTES // per_sample)
    return max(1, min(DECODE_BATCH_MAX, by_memory, -(-count // workers)))


class _SampleDecoder:
    """Batches of samples (start, stop) -> per batch (encoder states [n, positions, d], token rows [n, seq_len]).

    `map` runs the batches on `workers` threads and yields their results in order; a thread
    that finishes a batch takes the next one without waiting for the others. Every session runs
    single-threaded (no intra-op threads to synchronise).
    """

    def __init__(self, config: DecoderSetConfig, meta: dict, mels: np.ndarray, workers: int):
        self.meta = meta
        self.mels = mels
        self.seq_len = int(meta["seq_len"])
        self.encoder = onnx_greedy.load_session(config.export_dir, meta, "encoder", threads=1)
        if config.token_decoder == "cached":
            self.cached = cached_greedy.load_cached_decoder(config.export_dir, meta, threads=1)
        else:
            self.cached = None
            self.fixed_decoder = onnx_greedy.load_session(config.export_dir, meta, "decoder", threads=1)
            self.embedding = onnx_greedy.load_host_assets(config.export_dir, meta)
        self.executor = cf.ThreadPoolExecutor(workers) if workers > 1 else None

    def map(self, batches):
        return self.executor.map(self._decode, batches) if self.executor else map(self._decode, batches)

    def _decode(self, batch: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        mels = np.asarray(self.mels[batch[0]: batch[1]])
        states = np.stack([onnx_greedy.encode(self.encoder, self.meta, mel[None])[0] for mel in mels])
        if self.cached is None:
            tokens = onnx_greedy.greedy_decode(self.encoder, self.fixed_decoder, self.meta, *self.embedding, mels,
                                               encoder_states=states)
            return states, tokens
        budget = self.seq_len - len(self.meta["tokens"]["prompt"])
        options = cached_greedy.DecodeOptions(max_new_tokens=budget, pad_encoder=False)  # the Hailo decoder's view
        generated = cached_greedy.transcribe_tokens(states, self.cached, self.meta, options=options)
        return states, cached_greedy.as_fixed_rows(generated, self.meta, self.seq_len)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)
