"""Greedy Whisper decoding with the cached decoder ONNX pair (cross + step), batched; numpy + ONNX Runtime.

The host-side decoder: encoder states (from the encoder ONNX, or the encoder HEF on a Hailo
device) -> generated tokens. The cross graph computes the cross-attention keys/values once per
utterance; the step graph takes one token per row and the caches (the prompt too, token by
token). A row that reached end-of-text leaves the batch at once (drop_finished_rows moves only
the rows that finished). Used by the calibration stage, the export parity check and the host
transcriber; nothing here imports torch or transformers.

`export_meta` is the parsed export.json (pipeline.export.meta); its "cached_decoder" entry names
the graphs, the cache tensors and the encoder padding asset (pipeline/export/cached_export.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from pipeline.export.meta import cached_decoder_meta

WHISPER_POSITIONS = 1500  # encoder positions Whisper's decoder was trained on (30 s)
WHISPER_SAMPLE_LEN = 224  # openai/whisper's default tokens per window (sample_len = n_text_ctx // 2)


@dataclass(frozen=True)
class CachedDecoder:
    """The two ONNX Runtime sessions and the names that connect them."""

    cross: object  # onnxruntime.InferenceSession: encoder states -> cross caches
    step: object  # onnxruntime.InferenceSession: token + caches -> logits + grown self caches
    self_cache: tuple[str, ...]  # per-layer names, key0, value0, key1, value1, ...
    cross_cache: tuple[str, ...]
    self_cache_shape: tuple  # ("batch", heads, "past", head_dim)
    max_positions: int  # decoder positional embedding rows: prompt + generated tokens fit in it
    precision: str  # "float" | "int8"


@dataclass(frozen=True)
class DecodeOptions:
    """How greedy decoding runs; the defaults are what the host transcriber uses."""

    max_new_tokens: Optional[int] = WHISPER_SAMPLE_LEN  # after the prompt, end-of-text included (None: all that fit)
    pad_encoder: bool = True  # pad the encoder states to WHISPER_POSITIONS with the export's silence states


def load_cached_decoder(export_dir: str | Path, export_meta: Mapping, *, precision: str = "float",
                        threads: Optional[int] = None) -> CachedDecoder:
    """Sessions for the export's cached decoder ("float" or "int8"); ToolchainError for an older export."""
    import onnxruntime as ort

    cached = cached_decoder_meta(export_meta, export_dir)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    files = cached["files"][precision]
    cross, step_session = (ort.InferenceSession(str(Path(export_dir) / files[part]), options,
                                                providers=["CPUExecutionProvider"]) for part in ("cross", "step"))
    return CachedDecoder(cross, step_session, tuple(cached["self_cache"]), tuple(cached["cross_cache"]),
                         tuple(cached["cache_shape"]["self"]), int(cached["max_positions"]), precision)


def load_encoder_padding(export_dir: str | Path, export_meta: Mapping) -> np.ndarray:
    """Encoder states of silence at positions [encoder_positions, WHISPER_POSITIONS) -> [pad, d] float32."""
    return np.load(Path(export_dir) / cached_decoder_meta(export_meta, export_dir)["encoder_padding"])


def pad_encoder_states(states: np.ndarray, padding: np.ndarray) -> np.ndarray:
    """[B, P, d] + [1500 - P, d] -> [B, 1500, d]: the positions a 30 s window has after P."""
    batch, positions, _ = states.shape
    if positions + len(padding) != WHISPER_POSITIONS:
        raise ValueError(f"{positions} positions + {len(padding)} padding rows != {WHISPER_POSITIONS}")
    return np.concatenate([states, np.broadcast_to(padding, (batch, *padding.shape))], axis=1).astype(np.float32)


def start_caches(decoder: CachedDecoder, encoder_states: np.ndarray) -> dict:
    """Encoder states [B, P, d] -> {cache name: array}: the cross caches and empty self caches."""
    states = np.ascontiguousarray(encoder_states, dtype=np.float32)
    _, heads, _, head_dim = decoder.self_cache_shape
    empty = np.zeros((len(states), heads, 0, head_dim), dtype=np.float32)
    caches = dict(zip(decoder.cross_cache, decoder.cross.run(None, {"encoder_states": states})))
    caches.update((name, empty) for name in decoder.self_cache)
    return caches


def step(decoder: CachedDecoder, tokens: np.ndarray, caches: dict) -> tuple[np.ndarray, dict]:
    """One token per row (tokens [B]) -> (logits [B, vocab], caches with the self caches one longer)."""
    outputs = decoder.step.run(None, {"token": np.asarray(tokens, dtype=np.int64).reshape(-1, 1), **caches})
    return outputs[0], {**caches, **dict(zip(decoder.self_cache, outputs[1:]))}


def drop_finished_rows(alive: np.ndarray, *arrays_and_caches):
    """Keep the batch rows where `alive`, in place: each finished row among the first n_alive takes a
    live row from behind them, and every array becomes a view of its first n_alive rows. Moves
    only as many rows as finished (the cross caches are MBs per row; a gather of the live rows
    would copy all of them every time). Arguments: arrays [B, ...] or dicts of them; returned in
    the same order, the row order changed the same way in all."""
    kept = int(alive.sum())
    holes = np.flatnonzero(~alive[:kept])
    movers = kept + np.flatnonzero(alive[kept:])

    def compact(array: np.ndarray) -> np.ndarray:
        array[holes] = array[movers]
        return array[:kept]

    return tuple({name: compact(value) for name, value in item.items()} if isinstance(item, dict) else compact(item)
                 for item in arrays_and_caches)


def transcribe_tokens(encoder_out: np.ndarray, decoder: CachedDecoder, export_meta: Mapping, *,
                      options: DecodeOptions = DecodeOptions(),
                      encoder_padding: Optional[np.ndarray] = None) -> list[list[int]]:
    """Greedy decoding of encoder states [B, P, d] -> per row the generated tokens (no prompt, no end-of-text).

    Whisper's rules as the fixed decoder applies them (pipeline/export/onnx_greedy.py): the prompt
    from export.json, `suppress` always, `suppress_at_begin` at the first step, stop at
    end-of-text or after `options.max_new_tokens` tokens (end-of-text counts as one). With
    `options.pad_encoder` and `encoder_padding` given, states are padded to 1500 positions first.
    """
    tokens_meta = export_meta["tokens"]
    prompt = [int(t) for t in tokens_meta["prompt"]]
    end_of_text = int(tokens_meta["end_of_text"])
    suppress = np.asarray(tokens_meta.get("suppress", []), dtype=np.int64)
    suppress_at_begin = np.asarray(tokens_meta.get("suppress_at_begin", []), dtype=np.int64)
    room = decoder.max_positions - len(prompt)
    budget = room if options.max_new_tokens is None else int(options.max_new_tokens)
    if not 1 <= budget <= room:
        raise ValueError(f"max_new_tokens {budget} is outside 1..{room} (decoder positions {decoder.max_positions})")
    states = np.asarray(encoder_out, dtype=np.float32)
    if options.pad_encoder and encoder_padding is not None and states.shape[1] < WHISPER_POSITIONS:
        states = pad_encoder_states(states, encoder_padding)

    batch = len(states)
    caches = start_caches(decoder, states)
    for token in prompt:
        logits, caches = step(decoder, np.full(batch, token), caches)
    generated: list[list[int]] = [[] for _ in range(batch)]
    rows = np.arange(batch)  # original index of each row still in the batch
    for index in range(budget):
        logits[:, suppress] = -np.inf
        if index == 0:
            logits[:, suppress_at_begin] = -np.inf
        chosen = np.argmax(logits, axis=-1)
        for row, token in zip(rows, chosen):
            generated[row].append(int(token))
        alive = chosen != end_of_text
        if not alive.any() or index == budget - 1:
            break
        if not alive.all():
            rows, chosen, caches = drop_finished_rows(alive, rows, chosen, caches)
        logits, caches = step(decoder, chosen, caches)
    return [tokens[:-1] if tokens and tokens[-1] == end_of_text else tokens for tokens in generated]


def as_fixed_rows(generated: list[list[int]], export_meta: Mapping, seq_len: int) -> np.ndarray:
    """Generated tokens -> [N, seq_len] rows in onnx_greedy.greedy_decode's layout: prompt, tokens,
    end-of-text up to the end (a row cut at seq_len has no end-of-text)."""
    prompt = [int(t) for t in export_meta["tokens"]["prompt"]]
    rows = np.full((len(generated), seq_len), int(export_meta["tokens"]["end_of_text"]), dtype=np.int64)
    for row, tokens in zip(rows, generated):
        kept = (prompt + list(tokens))[:seq_len]
        row[: len(kept)] = kept
    return rows
