"""The deployment bundle: everything a Hailo host needs to run the built Whisper, in one folder.

    bundle/
      <encoder_net>.hef, <decoder_net>.hef   the two networks
      token_embedding.npy                     [vocab, d_model] float32   (host: token embedding)
      positional_embedding_seq<N>.npy         [seq_len, d_model] float32 (host: positional embedding)
      tokenizer files                         as transformers saved them
      config.json                             shapes, names, layouts, mel parameters, tokens
      README.md                               how to load and run them with HailoRT

The bundle is written whole into a hidden temporary folder beside it and swapped in by rename, so
`bundle/` never mixes files of two builds (HEFs of another input length, a config of the new one),
also when the bundle step fails halfway. `bundle_files()` lists what a complete bundle holds, so
the stage cache can check it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

from pipeline.files import write_json_atomic, write_text_atomic
from pipeline.tables import (
    DECODER_VOCAB_SPLITS,
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_FFT,
    N_MELS,
    SAMPLE_RATE,
    BuildSpec,
)

BUNDLE_FORMAT = 1
CONFIG_NAME = "config.json"
README_NAME = "README.md"
NOT_DEPLOYABLE_BANNER = (
    "NOT DEPLOYABLE: these HEFs were made by the DFC TEST DOUBLE in a rehearsal build. They are "
    "placeholders that no Hailo device can load. Rebuild with the real DFC wheel in vendor/."
)


def _host_asset_names(export: Mapping[str, Any]) -> list[str]:
    assets = export["host_assets"]
    return [assets["token_embedding"], assets["positional_embedding"], *assets.get("tokenizer_files", [])]


def bundle_files(bundle_dir: Path, export: Mapping[str, Any]) -> list[Path]:
    """Every file of a complete bundle."""
    names = [f"{export['encoder']['net_name']}.hef", f"{export['decoder']['net_name']}.hef",
             *_host_asset_names(export), CONFIG_NAME, README_NAME]
    return [Path(bundle_dir) / n for n in names]


def _swap_in(new: Path, target: Path) -> None:
    """Put the finished folder `new` at `target`, replacing what was there."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def make_config(spec: BuildSpec, export: Mapping[str, Any], hefs: Mapping[str, Path],
                dfc_version: Optional[str], rehearsal: bool) -> dict:
    """config.json: what a host program needs to feed the HEFs and read their outputs."""
    def io_of(model: str) -> dict:
        part = export[model]
        return {
            "hef": Path(hefs[model]).name,
            "net_name": part["net_name"],
            "onnx_inputs": part["inputs"],
            "onnx_outputs": part["outputs"],
            # The DFC names the HEF's input layers <net>/input_layer<i>; this maps them to the ONNX
            # inputs so a host program knows which buffer is which.
            "hef_input_layers": part.get("dfc_input_layers", {}),
        }

    return {
        "format": BUNDLE_FORMAT,
        "deployable": not rehearsal,
        "not_deployable_reason": NOT_DEPLOYABLE_BANNER if rehearsal else None,
        "variant": spec.variant.name,
        "arch": spec.arch.name,
        "dfc_version": dfc_version,
        "input_seconds": spec.seconds,
        "seq_len": spec.seq_len,
        "d_model": export.get("d_model"),
        "vocab_size": export.get("vocab_size"),
        "mel": {
            "sample_rate": SAMPLE_RATE,
            "n_fft": N_FFT,
            "hop_length": HOP_LENGTH,
            "n_mels": N_MELS,
            "frames": spec.frames,
            "frames_per_second": FRAMES_PER_SECOND,
            "log": "log10(max(mel, 1e-10)), floored at max-8, then (x + 4) / 4 (Whisper)",
        },
        "encoder": {
            **io_of("encoder"),
            # The ONNX input is NCHW [1, 80, 1, frames]; the DFC's input layer takes NHWC.
            "input_layout": "NHWC [1, 1, frames, 80] on the HEF; NCHW [1, 80, 1, frames] in the ONNX",
        },
        "decoder": {
            **io_of("decoder"),
            "logits_splits": DECODER_VOCAB_SPLITS,
            "logits": "concatenate the split outputs in order along the last axis -> [1, seq_len, vocab]",
        },
        "host_assets": dict(export["host_assets"]),
        "tokens": dict(export.get("tokens") or {}),
        "embedding": "embedded[t] = token_embedding[token_t] + positional_embedding[t]",
    }


def render_readme(config: Mapping[str, Any]) -> str:
    enc, dec, tokens = config["encoder"], config["decoder"], config["tokens"]
    banner = f"> **{config['not_deployable_reason']}**\n\n" if not config["deployable"] else ""
    layer_names = ", ".join(f"`{k}` = {v}" for k, v in sorted(dec["hef_input_layers"].items())) or "see config.json"
    return f"""# Whisper {config['variant']} for {config['arch']}

{banner}Built with DFC {config['dfc_version'] or 'unknown'} for {config['input_seconds']:g} s of audio
({config['mel']['frames']} mel frames) and a decoder sequence of {config['seq_len']} tokens.
Shapes, names and layouts are in `config.json`.

## What runs where

| step | where |
| --- | --- |
| audio → 16 kHz mono → log-mel `[80, {config['mel']['frames']}]` (n_fft {config['mel']['n_fft']}, hop {config['mel']['hop_length']}, Whisper's log/clamp/scale) | host |
| encoder | Hailo: `{enc['hef']}` |
| token + positional embedding: `token_embedding[tok] + positional_embedding[t]` (`{config['host_assets']['token_embedding']}`, `{config['host_assets']['positional_embedding']}`) | host |
| decoder (encoder states + embedded tokens → {dec['logits_splits']} logit splits) | Hailo: `{dec['hef']}` |
| concatenate the {dec['logits_splits']} logit splits along the last axis, pick the next token (greedy), repeat | host |
| tokens → text (tokenizer files here) | host |

## Loading with HailoRT (pyhailort)

```python
import numpy as np
from hailo_platform import FormatType, VDevice

def run(configured, model, inputs):  # inputs: {{input name: array}} -> {{output name: array}}
    bindings = configured.create_bindings()
    for name, array in inputs.items():
        bindings.input(name).set_buffer(np.ascontiguousarray(array, dtype=np.float32))
    outputs = {{name: np.empty(model.output(name).shape, dtype=np.float32) for name in model.output_names}}
    for name, buffer in outputs.items():
        bindings.output(name).set_buffer(buffer)
    configured.run([bindings], 10_000)
    return outputs

with VDevice() as vdevice:
    encoder = vdevice.create_infer_model("{enc['hef']}")
    decoder = vdevice.create_infer_model("{dec['hef']}")
    for model in (encoder, decoder):  # let HailoRT (de)quantize: float in, float out
        for name in model.input_names:
            model.input(name).set_format_type(FormatType.FLOAT32)
        for name in model.output_names:
            model.output(name).set_format_type(FormatType.FLOAT32)
    with encoder.configure() as enc, decoder.configure() as dec:
        # mel: [80, frames] -> the HEF's NHWC input [1, frames, 80] (batch dimension implicit)
        states = run(enc, encoder, {{encoder.input_names[0]: mel.T[None]}})
        # decoder inputs by HEF layer name ({layer_names});
        # embed the prompt {tokens.get('prompt', [])} on the host, run, concatenate the logit
        # splits in order, take the argmax at the last filled position, append the token,
        # repeat until end_of_text ({tokens.get('end_of_text')}) or seq_len tokens.
```

The HEF's input/output names are the DFC's layer names; `hef_input_layers` in `config.json` maps
each input layer to the ONNX input it came from, and the output order follows `onnx_outputs`.
"""


def make_bundle(bundle_dir: Path, *, spec: BuildSpec, export: Mapping[str, Any], export_dir: Path,
                hefs: Mapping[str, Path], dfc_version: Optional[str], rehearsal: bool) -> list[Path]:
    """Write the bundle (whole, then swapped in); returns its files (the same list as `bundle_files`)."""
    bundle_dir = Path(bundle_dir)
    staging = bundle_dir.with_name(f".{bundle_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for model in ("encoder", "decoder"):
            shutil.copyfile(Path(hefs[model]), staging / Path(hefs[model]).name)
        for name in _host_asset_names(export):
            shutil.copyfile(Path(export_dir) / name, staging / name)
        config = make_config(spec, export, hefs, dfc_version, rehearsal)
        write_json_atomic(staging / CONFIG_NAME, config)
        write_text_atomic(staging / README_NAME, render_readme(config))
        _swap_in(staging, bundle_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundle_files(bundle_dir, export)
