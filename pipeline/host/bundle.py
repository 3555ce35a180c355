"""The deployment bundle: everything a Hailo host needs to run the built Whisper, in one folder.

    bundle/
      <encoder_net>.hef, <decoder_net>.hef   the two networks
      decoder_assets/<variant>/decoder_tokenization/
        token_embedding_weight_<variant>.npy  [vocab, d_model] float32   (host: token embedding)
        onnx_add_input_<variant>.npy          [seq_len, d_model] float32 (host: positional embedding)
      onnx/<encoder_net>.onnx, onnx/<decoder_net>.onnx   the float networks (CPU reference backend)
      tokenizer files                         as transformers saved them
      config.json                             shapes, names, layouts, mel parameters, tokens
      README.md                               how to load and run them with HailoRT
      runtime/, requirements.txt, install.sh  the host transcriber's code and packages, and
      wheels/hailort-*.whl                    HailoRT's wheel when vendor/ has it (bundle_runtime.py)

The host arrays carry the paths and names Hailo's speech-recognition app loads them from
(hailo-ai/Hailo-Application-Code-Examples, runtime/hailo-8/python/speech_recognition/app/
hailo_whisper_pipeline.py, commit 0764642: `decoder_assets/{variant}/decoder_tokenization/
token_embedding_weight_{variant}.npy` and `onnx_add_input_{variant}.npy`), so the folder can be
dropped into that app. `PYTHONPATH=runtime python -m pipeline.host.transcriber --model .` transcribes
with it from inside the folder, without the toolchain.

With the decoder on the host CPU (`invoke build --decoder cpu`) the bundle has no decoder HEF and
no host embedding files; it carries the export's cached decoder instead:
<decoder>_cached_{cross,step}.onnx (float32), <decoder>_cached_{cross,step}_int8.onnx and
encoder_padding_<s>s.npy, driven by pipeline/export/cached_greedy.py, and onnx/<encoder_net>.onnx
(the transcriber's float backend for the encoder).

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
from pipeline.host.bundle_runtime import render_runtime_readme, runtime_config, runtime_names, write_runtime
from pipeline.tables import (
    DECODER_VOCAB_SPLITS,
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_FFT,
    N_MELS,
    SAMPLE_RATE,
    BuildSpec,
)

# 2: host arrays under Hailo app names, ONNX pair shipped; 3: the transcriber's code carried (runtime/),
# and a CPU-decoder bundle ships the encoder ONNX and the cache shapes.
BUNDLE_FORMAT = 3
CONFIG_NAME = "config.json"
README_NAME = "README.md"
NOT_DEPLOYABLE_BANNER = (
    "NOT DEPLOYABLE: these HEFs were made by the DFC TEST DOUBLE in a rehearsal build. They are "
    "placeholders that no Hailo device can load. Rebuild with the real DFC wheel in vendor/."
)


def host_array_names(variant: str) -> dict[str, str]:
    """Bundle paths of the host arrays, as Hailo's speech-recognition app loads them."""
    folder = f"decoder_assets/{variant}/decoder_tokenization"
    return {"token_embedding": f"{folder}/token_embedding_weight_{variant}.npy",
            "positional_embedding": f"{folder}/onnx_add_input_{variant}.npy"}


def onnx_names(export: Mapping[str, Any]) -> dict[str, str]:
    return {m: f"onnx/{export[m]['onnx']}" for m in ("encoder", "decoder")}


def _copies(export: Mapping[str, Any], variant: str) -> dict[str, str]:
    """{bundle path: export file name} of everything copied from the export."""
    assets = export["host_assets"]
    arrays = host_array_names(variant)
    copies = {arrays[k]: assets[k] for k in ("token_embedding", "positional_embedding")}
    copies.update({name: name for name in assets.get("tokenizer_files", [])})
    copies.update({path: export[m]["onnx"] for m, path in onnx_names(export).items()})
    return copies


def _cached_decoder_names(export: Mapping[str, Any]) -> list[str]:
    cached = export["cached_decoder"]
    return [*(name for files in cached["files"].values() for name in files.values()), cached["encoder_padding"]]


def _copied_names(export: Mapping[str, Any], decoder: str) -> dict[str, str]:
    """{bundle path: export file name} copied from the export directory: the host embedding (under
    the Hailo app's names) and the float ONNX pair for the decoder HEF, the cached decoder for the
    CPU; the tokenizer for both."""
    if decoder == "hailo":
        return _copies(export, export["variant"])
    names = [*_cached_decoder_names(export), *export["host_assets"].get("tokenizer_files", [])]
    encoder_onnx = onnx_names(export)["encoder"]  # the transcriber's float (onnx) backend for the encoder
    return {**{name: name for name in names}, encoder_onnx: export["encoder"]["onnx"]}


def bundle_files(bundle_dir: Path, export: Mapping[str, Any], decoder: str = "hailo",
                 hailort_wheel: Optional[Path] = None) -> list[Path]:
    """Every file of a complete bundle (`decoder`: "hailo" or "cpu", where the decoder runs;
    `hailort_wheel`: HailoRT's wheel from the vendor folder, carried along)."""
    hefs = [f"{export['encoder']['net_name']}.hef"] + ([f"{export['decoder']['net_name']}.hef"] if decoder == "hailo" else [])
    names = [*hefs, *_copied_names(export, decoder), CONFIG_NAME, README_NAME, *runtime_names(hailort_wheel)]
    return [Path(bundle_dir) / n for n in names]


def _swap_in(new: Path, target: Path) -> None:
    """Put the finished folder `new` at `target`, replacing what was there."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def cpu_decoder_config(export: Mapping[str, Any]) -> dict:
    """config.json's decoder entry for the host CPU: the cached decoder's files and its parity figures."""
    cached, parity = export["cached_decoder"], export.get("parity") or {}
    return {
        "runs_on": "cpu",
        "onnx": dict(cached["files"]),  # {"float": {"cross", "step"}, "int8": {...}}
        "encoder_padding": cached["encoder_padding"],
        "self_cache": list(cached["self_cache"]),
        "cross_cache": list(cached["cross_cache"]),
        "max_positions": cached["max_positions"],
        "cache_shape": dict(cached["cache_shape"]),
        "quantization": cached.get("quantization"),
        "parity": {
            "float": {"logits_vs_transformers": parity.get("cached_decoder_vs_hf"),
                      "greedy_token_mismatches_vs_generate": parity.get("cached_greedy_token_mismatches")},
            "int8": {"logits_vs_transformers": parity.get("cached_int8_vs_hf"),
                     "greedy_rows_equal_to_float": parity.get("cached_int8_greedy_rows_equal"),
                     "greedy_rows": parity.get("cached_greedy_rows")},
        },
        "loop": "pipeline/export/cached_greedy.py: transcribe_tokens(encoder states, load_cached_decoder(...), "
                "export meta, encoder_padding=...)",
    }


def make_config(spec: BuildSpec, export: Mapping[str, Any], hefs: Mapping[str, Path],
                dfc_version: Optional[str], rehearsal: bool, decoder: str = "hailo",
                hailort_wheel: Optional[Path] = None) -> dict:
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
            "runs_on": "hailo",
            **io_of("decoder"),
            "logits_splits": DECODER_VOCAB_SPLITS,
            "logits": "concatenate the split outputs in order along the last axis -> [1, seq_len, vocab]",
        } if decoder == "hailo" else cpu_decoder_config(export),
        "host_assets": {**host_array_names(spec.variant.name),
                        "tokenizer_files": list(export["host_assets"].get("tokenizer_files", []))}
        if decoder == "hailo" else {"tokenizer_files": list(export["host_assets"].get("tokenizer_files", []))},
        "onnx": onnx_names(export) if decoder == "hailo" else {"encoder": onnx_names(export)["encoder"]},
        "tokens": dict(export.get("tokens") or {}),
        "embedding": "embedded[t] = token_embedding[token_t] + positional_embedding[t]",
        "runtime": runtime_config(hailort_wheel),
    }


def render_cpu_decoder_readme(config: Mapping[str, Any]) -> str:
    """README for a bundle whose decoder runs on the host CPU (`--decoder cpu`)."""
    enc, dec = config["encoder"], config["decoder"]
    banner = f"> **{config['not_deployable_reason']}**\n\n" if not config["deployable"] else ""
    figures = dec["parity"]
    return f"""# Whisper {config['variant']} for {config['arch']}: encoder on the Hailo, decoder on the CPU

{banner}Built with DFC {config['dfc_version'] or 'unknown'} for {config['input_seconds']:g} s of audio
({config['mel']['frames']} mel frames). Shapes, names and layouts are in `config.json`.

## What runs where

| step | where |
| --- | --- |
| audio → 16 kHz mono → log-mel `[80, {config['mel']['frames']}]` (Whisper's log/clamp/scale) | host |
| encoder | Hailo: `{enc['hef']}` |
| pad the encoder states to 1500 positions with `{dec['encoder_padding']}` (Whisper's own states for silence) | host |
| cross-attention keys/values, once per utterance: `{dec['onnx']['float']['cross']}` | host CPU (ONNX Runtime) |
| one token per step with a key/value cache, greedy: `{dec['onnx']['float']['step']}` | host CPU (ONNX Runtime) |
| tokens → text (tokenizer files here) | host |

`*_int8.onnx` are the same graphs with int8 weights (ONNX Runtime dynamic quantization): about half
the time per token. Export parity: float logits within {figures['float']['logits_vs_transformers']}
of transformers', greedy token mismatches vs `generate`: {figures['float']['greedy_token_mismatches_vs_generate']};
int8 logits within {figures['int8']['logits_vs_transformers']}, greedy rows equal to float:
{figures['int8']['greedy_rows_equal_to_float']} of {figures['int8']['greedy_rows']} (the repository's README
gives word error rates measured on speech).

The decoding loop is `pipeline/export/cached_greedy.py` of the toolchain repository
(`transcribe_tokens`): numpy and onnxruntime only. Caches are named in `config.json`
(`self_cache`, `cross_cache`); the step graph's first input is `token` `[batch, 1]`.

{render_runtime_readme(config)}"""


def render_readme(config: Mapping[str, Any]) -> str:
    if config["decoder"].get("runs_on") == "cpu":
        return render_cpu_decoder_readme(config)
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

The host arrays sit where Hailo's speech-recognition app (Hailo-Application-Code-Examples,
`runtime/hailo-8/python/speech_recognition`) loads them: `{config['host_assets']['token_embedding']}`
and `{config['host_assets']['positional_embedding']}`. `onnx/` holds the float networks for a CPU run.

{render_runtime_readme(config)}"""


def make_bundle(bundle_dir: Path, *, spec: BuildSpec, export: Mapping[str, Any], export_dir: Path,
                hefs: Mapping[str, Path], dfc_version: Optional[str], rehearsal: bool,
                decoder: str = "hailo", hailort_wheel: Optional[Path] = None) -> list[Path]:
    """Write the bundle (whole, then swapped in); returns its files (the same list as `bundle_files`).
    `hailort_wheel`: HailoRT's wheel to carry (bundle_runtime.find_hailort_wheel of the vendor folder)."""
    bundle_dir = Path(bundle_dir)
    staging = bundle_dir.with_name(f".{bundle_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for path in hefs.values():
            shutil.copyfile(Path(path), staging / Path(path).name)
        for target, source in _copied_names(export, decoder).items():
            (staging / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(export_dir) / source, staging / target)
        write_runtime(staging, hailort_wheel)
        config = make_config(spec, export, hefs, dfc_version, rehearsal, decoder, hailort_wheel)
        write_json_atomic(staging / CONFIG_NAME, config)
        write_text_atomic(staging / README_NAME, render_readme(config))
        _swap_in(staging, bundle_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bundle_files(bundle_dir, export, decoder, hailort_wheel)
