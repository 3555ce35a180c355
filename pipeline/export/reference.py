"""The transformers reference model the exported graphs are checked against, and the ONNX writer.

Shared by the Hailo export (pipeline/export/export.py) and the cached decoder's export
(pipeline/export/cached_export.py); the comparisons themselves are in pipeline/export/parity.py.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Optional


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


def export_onnx(module, example_inputs: tuple, path: Path, input_names: list[str], output_names: list[str], opset: int,
                dynamic_axes: Optional[dict] = None, fuse_gemm: bool = False):
    """torch.onnx.export (fixed shapes unless `dynamic_axes`), onnxslim, onnx.checker; returns the
    ModelProto written to `path`.

    fuse_gemm: let onnxslim's FusionGemm turn Linear into Reshape -> Gemm -> Reshape. Only for
    graphs that run on the host (the cached decoder): the known-good Whisper-on-Hailo graphs keep
    rank-3 MatMul + Add (pipeline/export/GRAPH_RULES.md), so the Hailo graphs never fuse.
    """
    import onnx
    import onnxslim
    import torch

    raw = path.with_suffix(".raw.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # The TorchScript exporter gives plain, stable node names and no dynamic shapes.
        torch.onnx.export(module, example_inputs, str(raw), input_names=input_names, output_names=output_names,
                          opset_version=opset, do_constant_folding=True, dynamo=False, dynamic_axes=dynamic_axes)
    skip = () if fuse_gemm else ("FusionGemm",)
    slimmed = onnxslim.slim(onnx.load(str(raw)), skip_fusion_patterns=list(skip))
    raw.unlink()
    onnx.checker.check_model(slimmed, full_check=True)
    onnx.save(slimmed, str(path))
    return slimmed
