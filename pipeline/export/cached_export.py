"""Export of the host's cached decoder (pipeline/export/whisper_cached.py) beside the Hailo decoder.

Part of the export stage (pipeline/export/export.py calls `export_cached_decoder`, then
`measure_cached_parity`). Writes, into the export's work directory:

- `<decoder>_cached_cross.onnx` and `<decoder>_cached_step.onnx` (float32, dynamic batch, encoder
  positions and cache length), and `*_int8.onnx` copies whose MatMul weights ONNX Runtime's
  `quantize_dynamic` made int8 (activations quantized at run time);
- `encoder_padding_<seconds>.npy`: Whisper's own encoder states for 30 s of silence at the
  positions our shorter encoder does not have ([1500 - P, d]), to pad the encoder output to what
  the decoder was trained on (pipeline/export/cached_greedy.py, `DecodeOptions.pad_encoder`).

The export.json entry ("cached_decoder") names these files, the cache tensors and the parity
figures: logits against transformers (teacher-forced over the parity tokens, both
precisions) and greedy tokens against transformers' `generate` over CACHED_PARITY_NEW_TOKENS
tokens (more than the Hailo decoder's seq_len, so a long utterance is not cut).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from pipeline.export import cached_greedy
from pipeline.export.parity import hf_generated_tokens, hf_generation_config, max_abs
from pipeline.export.reference import export_onnx

CACHED_PARITY_NEW_TOKENS = 96  # greedy parity length: room for ~70 words, 3x the Hailo decoder's 32
# Whisper's log-mel of digital silence: log10 of the 1e-10 floor, normalised as (x + 4) / 4
# (WhisperFeatureExtractor / openai/whisper audio.log_mel_spectrogram).
SILENCE_LOG_MEL = (math.log10(1e-10) + 4.0) / 4.0
PRECISIONS = ("float", "int8")


def file_names(decoder_net_name: str, seconds_tag: str) -> dict:
    """Files of the cached decoder: per precision the two graphs, plus the encoder padding."""
    stem = f"{decoder_net_name.rsplit('_seq', 1)[0]}_cached"
    return {
        "float": {"cross": f"{stem}_cross.onnx", "step": f"{stem}_step.onnx"},
        "int8": {"cross": f"{stem}_cross_int8.onnx", "step": f"{stem}_step_int8.onnx"},
        "encoder_padding": f"encoder_padding_{seconds_tag.replace('.', 'p')}.npy",
    }


def export_cached_decoder(model, names: Mapping, work: Path, encoder_positions: int, opset: int,
                          log: Callable[[str], None] = lambda message: None) -> dict:
    """Write the cached decoder graphs and the padding asset into `work`; returns export.json's entry
    (without parity figures). `model`: the full transformers Whisper (1500 encoder positions)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from pipeline.export.whisper_cached import CachedCrossKV, CachedDecoderStep, cache_names

    config = model.config
    n_layer, n_head, d = config.decoder_layers, config.decoder_attention_heads, config.d_model
    head_dim = d // n_head
    self_names, cross_names = cache_names(n_layer, "self"), cache_names(n_layer, "cross")
    grown_names = [f"grown_{name}" for name in self_names]
    cross_axes = {name: ({0: "batch", 3: "positions"} if "_key_" in name else {0: "batch", 2: "positions"})
                  for name in cross_names}

    log(f"exporting {names['float']['cross']} and {names['float']['step']} (cached decoder, opset {opset})")
    cross_module, step_module = CachedCrossKV.from_hf(model), CachedDecoderStep.from_hf(model)
    states = torch.zeros(2, encoder_positions, d)
    export_onnx(cross_module, (states,), work / names["float"]["cross"], ["encoder_states"], cross_names, opset,
                dynamic_axes={"encoder_states": {0: "batch", 1: "positions"}, **cross_axes}, fuse_gemm=True)
    with torch.no_grad():
        cross_example = cross_module(states)
    past = [torch.zeros(2, n_head, 3, head_dim) for _ in self_names]
    export_onnx(step_module, (torch.zeros(2, 1, dtype=torch.int64), *past, *cross_example),
                work / names["float"]["step"], ["token", *self_names, *cross_names], ["logits", *grown_names], opset,
                dynamic_axes={"token": {0: "batch"}, "logits": {0: "batch"}, **cross_axes,
                              **{name: {0: "batch", 2: "past"} for name in self_names},
                              **{name: {0: "batch", 2: "past_plus_1"} for name in grown_names}}, fuse_gemm=True)
    for part in ("cross", "step"):
        # MatMul only: the token embedding lookup (a Gather of the same matrix) stays float.
        quantize_dynamic(work / names["float"][part], work / names["int8"][part], weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"])

    log(f"computing {names['encoder_padding']} (Whisper's encoder states of 30 s of silence)")
    silence = torch.full((1, config.num_mel_bins, 2 * config.max_source_positions), SILENCE_LOG_MEL)
    with torch.no_grad():
        silent_states = model.model.encoder(silence).last_hidden_state[0, encoder_positions:].float().numpy()
    np.save(work / names["encoder_padding"], np.ascontiguousarray(silent_states))
    return {
        "files": {precision: dict(names[precision]) for precision in PRECISIONS},
        "encoder_padding": names["encoder_padding"],
        "self_cache": self_names,
        "cross_cache": cross_names,
        "cache_shape": {"self": ["batch", n_head, "past", head_dim], "cross_key": ["batch", n_head, head_dim, "positions"],
                        "cross_value": ["batch", n_head, "positions", head_dim]},
        "max_positions": int(config.max_target_positions),
        "quantization": "onnxruntime.quantization.quantize_dynamic, QInt8 weights, MatMul only",
    }


def teacher_forced_logits(decoder: cached_greedy.CachedDecoder, encoder_states: np.ndarray,
                          tokens: np.ndarray) -> np.ndarray:
    """Logits after every position of `tokens` [B, n] fed one by one -> [B, n, vocab]."""
    caches = cached_greedy.start_caches(decoder, encoder_states)
    logits = []
    for position in range(tokens.shape[1]):
        step_logits, caches = cached_greedy.step(decoder, tokens[:, position], caches)
        logits.append(step_logits)
    return np.stack(logits, axis=1)


def measure_cached_parity(reference, work: Path, meta: dict, tokens: np.ndarray, hf_states: np.ndarray,
                          greedy_states: np.ndarray, greedy_mel: np.ndarray, tolerance: float) -> dict:
    """The cached ONNX decoder against transformers.

    tokens [1, n] with hf_states [1, P, d]: teacher-forced logits (float and int8) vs transformers'.
    greedy_states [N, P, d], from the encoder ONNX on greedy_mel [N, 80, frames]: greedy tokens vs
    transformers' generate; a divergence at a near-tie (the two candidates' float logits within
    `tolerance`) is recorded under cached_greedy_near_ties, any other counts its remaining tokens.
    """
    import torch

    with torch.no_grad():
        hf_logits = reference(encoder_outputs=(torch.from_numpy(hf_states),),
                              decoder_input_ids=torch.from_numpy(tokens)).logits.numpy()
    decoders = {p: cached_greedy.load_cached_decoder(work, meta, precision=p) for p in PRECISIONS}
    figures = {"cached_decoder_vs_hf": max_abs(teacher_forced_logits(decoders["float"], hf_states, tokens), hf_logits),
               "cached_int8_vs_hf": max_abs(teacher_forced_logits(decoders["int8"], hf_states, tokens), hf_logits)}

    prompt, end = meta["tokens"]["prompt"], meta["tokens"]["end_of_text"]
    options = cached_greedy.DecodeOptions(max_new_tokens=CACHED_PARITY_NEW_TOKENS, pad_encoder=False)
    ours = cached_greedy.transcribe_tokens(greedy_states, decoders["float"], meta, options=options)
    int8 = cached_greedy.transcribe_tokens(greedy_states, decoders["int8"], meta, options=options)
    gen = hf_generation_config(meta["tokens"], CACHED_PARITY_NEW_TOKENS, len(prompt) > 2)
    with torch.no_grad():
        hf_rows = reference.generate(torch.from_numpy(greedy_mel), generation_config=gen).numpy()
    mismatches, ties = 0, []
    for sample, (our_tokens, hf_row) in enumerate(zip(ours, hf_rows)):
        hf_tokens = hf_generated_tokens(hf_row, meta)
        diverged = next((i for i, (a, b) in enumerate(zip(our_tokens + [end], hf_tokens + [end])) if a != b), None)
        if diverged is None:
            continue
        row = np.asarray([prompt + our_tokens[:diverged]], dtype=np.int64)
        logits = teacher_forced_logits(decoders["float"], greedy_states[sample: sample + 1], row)[0, -1]
        gap = float(logits[([*our_tokens, end])[diverged]] - logits[([*hf_tokens, end])[diverged]])
        if abs(gap) <= tolerance:
            ties.append({"sample": sample, "step": diverged, "logit_gap": gap})
        else:
            mismatches += max(len(our_tokens), len(hf_tokens)) - diverged
    figures["cached_greedy_token_mismatches"] = mismatches
    figures["cached_greedy_tokens"] = ours
    figures["cached_int8_greedy_rows_equal"] = sum(a == b for a, b in zip(int8, ours))
    figures["cached_greedy_rows"] = len(ours)
    if ties:
        figures["cached_greedy_near_ties"] = ties
    return figures
