"""Greedy Whisper decoding with the exported encoder and decoder ONNX files (numpy + ONNX Runtime).

This is how the Hailo networks are driven: the host embeds the tokens (token + positional
embedding), the decoder sees the whole fixed-length sequence every step, and the next token is
the argmax of the logits at the last filled position (the causal mask makes the padding after it
irrelevant). Used by the export parity check and by the calibration stage (which runs without
torch), so nothing here imports torch or transformers.

`export_meta` is the parsed export.json of pipeline.export.export: it gives the input/output names, the
prompt tokens, the end-of-text token and the suppressed tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from pipeline.tables import N_MELS


def load_session(export_dir: str | Path, export_meta: Mapping, part: str, threads: int | None = None):
    """A CPU session for export_meta's "encoder" or "decoder" ONNX file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(Path(export_dir) / export_meta[part]["onnx"]), options,
                                providers=["CPUExecutionProvider"])


def load_sessions(export_dir: str | Path, export_meta: Mapping, threads: int | None = None):
    """(encoder session, decoder session) on the CPU for the ONNX files named in export_meta."""
    return tuple(load_session(export_dir, export_meta, part, threads) for part in ("encoder", "decoder"))


def load_host_assets(export_dir: str | Path, export_meta: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """(token embedding [vocab, d], positional embedding [seq_len, d]) from the export dir."""
    assets = export_meta["host_assets"]
    export_dir = Path(export_dir)
    return (np.load(export_dir / assets["token_embedding"]), np.load(export_dir / assets["positional_embedding"]))


def as_encoder_input(mel_batch: np.ndarray, frames: int) -> np.ndarray:
    """Mel batch -> [N, 80, 1, frames] float32 (the encoder ONNX layout).

    Accepts [N, 80, frames] (WhisperFeatureExtractor layout), [N, 80, 1, frames] (NCHW) and
    [N, 1, frames, 80] (NHWC, the DFC calibration layout).
    """
    mel = np.asarray(mel_batch, dtype=np.float32)
    if mel.ndim == 3 and mel.shape[1:] == (N_MELS, frames):
        return mel[:, :, None, :]
    if mel.ndim == 4 and mel.shape[1:] == (N_MELS, 1, frames):
        return mel
    if mel.ndim == 4 and mel.shape[1:] == (1, frames, N_MELS):
        return np.ascontiguousarray(mel.transpose(0, 3, 1, 2))
    raise ValueError(
        f"mel batch of shape {mel.shape} does not match the export ({frames} frames): expected "
        f"[N, {N_MELS}, {frames}], [N, {N_MELS}, 1, {frames}] or [N, 1, {frames}, {N_MELS}]"
    )


def encode(encoder_session, export_meta: Mapping, mel_batch: np.ndarray) -> np.ndarray:
    """Mel batch (see as_encoder_input) -> encoder states [N, positions, d_model] float32.

    The graphs have a fixed batch of 1 (as the Hailo networks do), so samples run one by one.
    """
    mel = as_encoder_input(mel_batch, int(export_meta["frames"]))
    input_name = export_meta["encoder"]["inputs"][0]["name"]
    output_name = export_meta["encoder"]["outputs"][0]["name"]
    states = [encoder_session.run([output_name], {input_name: sample[None]})[0][0] for sample in mel]
    return np.stack(states).astype(np.float32)


def greedy_decode(
    encoder_session,
    decoder_session,
    export_meta: Mapping,
    token_embedding: np.ndarray,
    positional_embedding: np.ndarray,
    mel_batch: np.ndarray,
    *,
    encoder_states: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy decoding of each mel in the batch -> tokens [N, seq_len] int64.

    Each row starts with the prompt (export_meta["tokens"]["prompt"]); generation stops at
    end-of-text or when the sequence is full; every position after the end is end-of-text, so a
    row is directly a decoder calibration sequence. Pass `encoder_states` ([N, positions, d]) to
    skip the encoder run when they are already known.
    """
    seq_len = int(export_meta["seq_len"])
    if positional_embedding.shape[0] != seq_len:
        raise ValueError(f"positional embedding has {positional_embedding.shape[0]} rows, the export seq_len is {seq_len}")
    if encoder_states is None:
        encoder_states = encode(encoder_session, export_meta, mel_batch)
    return np.stack([
        greedy_row(lambda row, last, states=states: next_token_logits(
            decoder_session, export_meta, token_embedding, positional_embedding, states, row, last),
            export_meta["tokens"], seq_len)
        for states in encoder_states
    ])


def greedy_row(next_logits: Callable[[np.ndarray, int], np.ndarray], tokens_meta: Mapping, seq_len: int) -> np.ndarray:
    """Whisper's greedy rules on a fixed-length decoder -> one row [seq_len] int64.

    `next_logits(row, last)` gives the logits [vocab] for the token after position `last` of
    `row` (any fixed-length decoder: ONNX, the DFC emulator, a HEF). The row starts with the
    prompt; `suppress` is masked always and `suppress_at_begin` at the first step; generation
    stops at end-of-text or when the row is full, and every position after the end is
    end-of-text.
    """
    prompt = [int(t) for t in tokens_meta["prompt"]]
    end_of_text = int(tokens_meta["end_of_text"])
    suppress = np.asarray(tokens_meta.get("suppress", []), dtype=np.int64)
    suppress_at_begin = np.asarray(tokens_meta.get("suppress_at_begin", []), dtype=np.int64)
    if len(prompt) >= seq_len:
        raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in a sequence of {seq_len}")
    row = np.full(seq_len, end_of_text, dtype=np.int64)
    row[: len(prompt)] = prompt
    for last in range(len(prompt) - 1, seq_len - 1):
        logits = np.array(next_logits(row, last), dtype=np.float32)  # a copy: the masks write into it
        logits[suppress] = -np.inf
        if last == len(prompt) - 1:
            logits[suppress_at_begin] = -np.inf
        token = int(np.argmax(logits))
        row[last + 1] = token
        if token == end_of_text:
            break
    return row


def fixed_length_tokens(decoder: Callable[[np.ndarray, np.ndarray], np.ndarray], states: np.ndarray,
                        token_embedding: np.ndarray, positional_embedding: np.ndarray, tokens_meta: Mapping,
                        seq_len: int) -> list[int]:
    """Generated tokens of one window with a fixed-length decoder on any backend:
    `decoder(states [positions, d], embedded [seq_len, d]) -> logits [seq_len, vocab]`, the tokens
    embedded on the host (`token_embedding[token] + positional_embedding`)."""
    def next_logits(row, last):
        embedded = (token_embedding[row] + positional_embedding).astype(np.float32)
        return decoder(states, embedded)[last]
    return generated_tokens(greedy_row(next_logits, tokens_meta, seq_len), {"tokens": tokens_meta})


def next_token_logits(decoder_session, export_meta: Mapping, token_embedding: np.ndarray,
                      positional_embedding: np.ndarray, encoder_states: np.ndarray, row: np.ndarray,
                      last: int) -> np.ndarray:
    """Logits [vocab] for the token after position `last` of `row` ([seq_len] tokens; later
    positions are ignored thanks to the causal mask). encoder_states: [positions, d]."""
    decoder = export_meta["decoder"]
    states_name, embeddings_name = (i["name"] for i in decoder["inputs"])
    logits_names = [o["name"] for o in decoder["outputs"]]
    embedded = (token_embedding[row] + positional_embedding).astype(np.float32)  # [seq_len, d]
    parts = decoder_session.run(logits_names, {states_name: encoder_states[None].astype(np.float32),
                                               embeddings_name: embedded[None]})
    return np.concatenate([p[0, last] for p in parts])


def generated_tokens(sequence: Sequence[int], export_meta: Mapping) -> list[int]:
    """The tokens after the prompt, up to (not including) end-of-text."""
    tokens_meta = export_meta["tokens"]
    out = []
    for token in list(sequence)[len(tokens_meta["prompt"]):]:
        if int(token) == int(tokens_meta["end_of_text"]):
            break
        out.append(int(token))
    return out
