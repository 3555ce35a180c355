"""The transformers reference the exported graphs are checked against, and the ONNX writer.

Shared by the Hailo export (pipeline/export/export.py) and the cached decoder's export
(pipeline/export/cached_export.py).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Mapping, Optional

import numpy as np


def hf_reference_model(model, positions: int):
    """transformers Whisper with max_source_positions = positions and the (cut) same weights.

    transformers' encoder requires exactly 2 * max_source_positions input frames, so this is
    the reference our shortened encoder must match.
    """
    import torch
    from transformers import WhisperForConditionalGeneration

    config = copy.deepcopy(model.config)
    config.max_source_positions = positions
    state = dict(model.state_dict())
    state["model.encoder.embed_positions.weight"] = state["model.encoder.embed_positions.weight"][:positions]
    with torch.device("meta"):
        reference = WhisperForConditionalGeneration(config)
    reference.load_state_dict(state, strict=True, assign=True)
    reference.tie_weights()
    reference.generation_config = copy.deepcopy(model.generation_config)
    return reference.eval()


def hf_generation_config(tokens: Mapping, max_new_tokens: int, multilingual: bool):
    """A GenerationConfig under which transformers' Whisper `generate` decodes greedily from our prompt."""
    from transformers import GenerationConfig

    prompt = tokens["prompt"]
    gen = GenerationConfig(
        decoder_start_token_id=prompt[0],
        eos_token_id=tokens["end_of_text"],
        pad_token_id=tokens["end_of_text"],
        bos_token_id=tokens["end_of_text"],
        no_timestamps_token_id=tokens["no_timestamps"],
        suppress_tokens=list(tokens["suppress"]) or None,
        begin_suppress_tokens=list(tokens["suppress_at_begin"]) or None,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
    )
    if multilingual:
        gen.lang_to_id = {"<|en|>": prompt[1]}
        gen.task_to_id = {"transcribe": prompt[2], "translate": prompt[2] - 1}
        gen.is_multilingual = True
        gen.language = "en"
        gen.task = "transcribe"
    return gen


def hf_generated_tokens(row, meta) -> list[int]:
    """transformers 5.x returns the generated tokens without the prompt; 4.x included it."""
    row = [int(t) for t in row]
    prompt = meta["tokens"]["prompt"]
    if row[: len(prompt)] == prompt:
        row = row[len(prompt):]
    end = meta["tokens"]["end_of_text"]
    return row[: row.index(end)] if end in row else row


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def export_onnx(module, example_inputs: tuple, path: Path, input_names: list[str], output_names: list[str], opset: int,
                dynamic_axes: Optional[dict] = None):
    """torch.onnx.export (fixed shapes unless `dynamic_axes`), onnxslim, onnx.checker; returns the
    ModelProto written to `path`."""
    import onnx
    import onnxslim
    import torch

    raw = path.with_suffix(".raw.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # The TorchScript exporter gives plain, stable node names and no dynamic shapes.
        torch.onnx.export(module, example_inputs, str(raw), input_names=input_names, output_names=output_names,
                          opset_version=opset, do_constant_folding=True, dynamo=False, dynamic_axes=dynamic_axes)
    slimmed = onnxslim.slim(onnx.load(str(raw)))
    raw.unlink()
    onnx.checker.check_model(slimmed, full_check=True)
    onnx.save(slimmed, str(path))
    return slimmed
