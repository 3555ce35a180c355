"""Export stage: Whisper weights -> Hailo-compatible encoder and decoder ONNX, with parity checks.

    python -m pipeline.export.export --variant tiny --seconds 10 [--seq-len 32] [--model ID|DIR] --out DIR

1. Load a transformers `WhisperForConditionalGeneration` from a Hugging Face id (hub cache,
   HF_HOME respected), a local transformers directory or a CTranslate2 (faster-whisper) folder.
2. Build our Hailo-friendly modules (pipeline/export/whisper_hailo.py) from its weights.
3. Export both at fixed shapes (opset OPSET), simplify with onnxslim (without its Gemm fusion),
   run onnx.checker and the DFC graph rules (pipeline/export/graph_check.py).
4. Prove they compute what Whisper computes (pipeline/export/parity.py; the stage fails when a
   tolerance is missed): torch vs ONNX Runtime, our encoder/decoder vs transformers', greedy ONNX
   decoding vs transformers' `generate`.
5. Write the host assets (token and positional embedding .npy, tokenizer files) and export.json,
   the only place later stages take names from.

Everything is written into a temporary directory inside the output directory and moved into
place only after all checks passed; export.json is written last and is the completion marker.

About 500 lines: loading, module building, ONNX export and the stage are one sequence a reader
follows top to bottom; parity (the largest separable part) lives in pipeline/export/parity.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Optional

import numpy as np

from pipeline.export import cached_export, ct2, onnx_greedy
from pipeline.export.reference import export_onnx, hf_reference_model
from pipeline.errors import ToolchainError, run_cli
from pipeline.export.meta import EXPORT_FORMAT, EXPORT_JSON
from pipeline.export.parity import ParityInputs, ParityTolerances, check_parity, measure_onnx_parity, measure_torch_parity
from pipeline.files import sha256_file, write_json_atomic
from pipeline.layout import Layout
from pipeline.tables import ARCHS, DECODER_VOCAB_SPLITS, DEFAULT_ARCH, DEFAULT_VARIANT, EXPORT_LIBRARIES, VARIANTS, BuildSpec, resolve_spec

OPSET = 17
ENCODER_INPUT = "input_features"
ENCODER_OUTPUT = "encoder_states"
DECODER_INPUTS = ("encoder_states", "decoder_embeddings")
TOKEN_EMBEDDING_FILE = "token_embedding.npy"


def logits_name(index: int) -> str:
    return f"logits_{index}"


@dataclass(frozen=True)
class ExportConfig:
    """What to export and where. `model`: HF id, transformers dir or CTranslate2 dir (None: the variant's HF id).

    `to_argv()` is the command line `build_parser()` reads back into it (opset, tolerances and seed
    are not on the command line: their defaults)."""

    MODULE: ClassVar[str] = "pipeline.export.export"

    spec: BuildSpec
    out_dir: Path
    model: Optional[str] = None
    opset: int = OPSET
    allow_download: bool = True
    tolerances: ParityTolerances = field(default_factory=ParityTolerances)
    seed: int = 0

    @property
    def model_source(self) -> str:
        return self.model or self.spec.variant.hf_id

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ExportConfig":
        return make_config(args.variant, args.seconds, args.seq_len, args.model, args.out, args.offline, args.arch)

    def to_argv(self) -> list[str]:
        spec = self.spec
        argv = ["--variant", spec.variant.name, "--arch", spec.arch.name, "--seconds", repr(float(spec.seconds)),
                "--seq-len", str(spec.seq_len), "--out", str(self.out_dir)]
        return argv + (["--model", self.model] if self.model else []) + ([] if self.allow_download else ["--offline"])


@dataclass(frozen=True)
class ExportResult:
    export_json: Path
    meta: dict


@dataclass(frozen=True)
class LoadedWhisper:
    """A transformers Whisper model plus what came with it (tokenizer may be None)."""

    model: object
    tokenizer: object
    source_kind: str  # "hub" | "transformers-dir" | "ctranslate2"


# --- loading -------------------------------------------------------------------------------------


def load_whisper(source: str, *, allow_download: bool = True) -> LoadedWhisper:
    """Load WhisperForConditionalGeneration (float32, eval) from an HF id, a transformers dir or a CTranslate2 dir."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ToolchainError(f"Model path {path} is a file, not a model directory.",
                                 "Pass the directory that holds config.json (and model.bin for CTranslate2).")
        if ct2.is_ct2_folder(path):
            model, tokenizer = ct2.load_ct2_whisper(path)
            return LoadedWhisper(model, tokenizer, "ctranslate2")
        _check_whisper_config(path)
        return _load_transformers(str(path), local_only=True, kind="transformers-dir")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", source):
        raise ToolchainError(
            f"Model directory {source} does not exist.",
            "Pass an existing transformers or CTranslate2 Whisper directory, or a Hugging Face id "
            "such as openai/whisper-tiny.",
        )
    return _load_transformers(source, local_only=not allow_download, kind="hub")


def _check_whisper_config(path: Path) -> None:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ToolchainError(
            f"{path} is not a Whisper model directory: it has no config.json.",
            "Pass a directory written by save_pretrained (or a CTranslate2 folder with model.bin).",
        )
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        model_type = None
    if model_type != "whisper":
        raise ToolchainError(
            f"{path} is not a Whisper model: its config.json says model_type={model_type!r}.",
            "Pass a Whisper checkpoint (model_type 'whisper').",
        )


def _load_transformers(source: str, *, local_only: bool, kind: str) -> LoadedWhisper:
    import torch
    from transformers import AutoTokenizer, WhisperForConditionalGeneration

    try:
        # Cache first: works offline and respects HF_HOME; download only when allowed.
        try:
            model = WhisperForConditionalGeneration.from_pretrained(source, local_files_only=True, dtype=torch.float32)
        except OSError:
            if local_only:
                raise
            model = WhisperForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    except OSError as err:
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ToolchainError(
            f"Could not load Whisper model {source!r}: it is not a local directory, and the Hugging Face "
            f"cache (HF_HOME={hf_home}) cannot provide it ({str(err).splitlines()[0]}).",
            f"Download it into the cache first, e.g. `huggingface-cli download {source}` on a machine with "
            "network access, or pass --model with a local transformers or CTranslate2 directory.",
        ) from None
    except ValueError as err:  # e.g. a config of another model type
        raise ToolchainError(f"{source!r} is not a loadable Whisper model: {err}", "Pass a Whisper checkpoint.") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    # transformers 5 builds an empty Whisper tokenizer for a directory without tokenizer files
    # (e.g. a random-init test model): treat that as "no tokenizer".
    if tokenizer is not None and "<|startoftranscript|>" not in tokenizer.get_vocab():
        tokenizer = None
    return LoadedWhisper(model.float().eval(), tokenizer, kind)


def check_matches_variant(model, spec: BuildSpec, source: str) -> None:
    """Refuse a checkpoint whose vocabulary or dimensions differ from the variant table."""
    variant, config = spec.variant, model.config
    if config.vocab_size != variant.vocab_size:
        alternatives = [v.name for v in VARIANTS.values() if v.vocab_size == config.vocab_size]
        raise ToolchainError(
            f"Checkpoint {source} has a vocabulary of {config.vocab_size} tokens; variant "
            f"{variant.name} has {variant.vocab_size}.",
            f"Use --variant {' or '.join(alternatives)}" if alternatives else "Use a matching checkpoint"
            " (English-only .en models have 51864 tokens, multilingual ones 51865).",
        )
    found = (config.d_model, config.encoder_layers, config.decoder_layers, config.encoder_attention_heads)
    expected = (variant.d_model, variant.encoder_layers, variant.decoder_layers, variant.attention_heads)
    if found != expected:
        raise ToolchainError(
            f"Checkpoint {source} has (d_model, encoder layers, decoder layers, heads) = {found}; "
            f"variant {variant.name} has {expected}.",
            "Choose the --variant that matches the checkpoint.",
        )
    if config.num_mel_bins != variant.n_mels:
        raise ToolchainError(f"Checkpoint {source} uses {config.num_mel_bins} mel bins; {variant.name} uses {variant.n_mels}.",
                             "Use an 80-mel Whisper checkpoint (tiny/base).")


# --- module building (injectable, so tests can prove a wrong rewrite fails parity) ----------------


def build_hailo_modules(model, spec: BuildSpec):
    """(HailoWhisperEncoder, HailoWhisperDecoder) for the spec's frames and seq_len."""
    from pipeline.export.whisper_hailo import HailoWhisperDecoder, HailoWhisperEncoder

    return (HailoWhisperEncoder.from_hf(model, spec.frames),
            HailoWhisperDecoder.from_hf(model, spec.seq_len, DECODER_VOCAB_SPLITS))


# --- ONNX ---------------------------------------------------------------------------------------


def _producers(graph, names: list[str]) -> list[str]:
    by_output = {out: node.name for node in graph.node for out in node.output}
    missing = [n for n in names if n not in by_output]
    if missing:
        raise ToolchainError(f"Exported graph has no node producing {missing}.", "This is a bug in pipeline.export.export.")
    return [by_output[n] for n in names]


def _io(values) -> list[dict]:
    return [{"name": v.name, "shape": [d.dim_value for d in v.type.tensor_type.shape.dim]} for v in values]


def graph_metadata(onnx_model, net_name: str, file_name: str) -> dict:
    """Names and shapes of one exported graph, in the export.json layout."""
    graph = onnx_model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = _io(v for v in graph.input if v.name not in initializers)
    outputs = _io(graph.output)
    return {
        "onnx": file_name,
        "net_name": net_name,
        "inputs": inputs,
        "outputs": outputs,
        # Parsing starts at the graph inputs (the decoder's start right after the host embedding)
        # and ends at the nodes producing the outputs (for the decoder: the split vocab matmuls).
        "start_node_names": [i["name"] for i in inputs],
        "end_node_names": _producers(graph, [o["name"] for o in outputs]),
        "net_input_shapes": {i["name"]: i["shape"] for i in inputs},
        "dfc_input_layers": {f"{net_name}/input_layer{n}": i["name"] for n, i in enumerate(inputs, 1)},
    }


def check_exported_graph(onnx_model, graph_meta: Mapping, model: str) -> dict:
    """Run the DFC graph rules between the graph's parse cut points; raise naming the nodes that break them."""
    from pipeline.export.graph_check import check_graph, require_conformance

    report = check_graph(onnx_model, graph_meta["start_node_names"], graph_meta["end_node_names"])
    report.path = graph_meta["onnx"]
    require_conformance(report, model)
    return {"ok": True, "op_histogram": report.op_histogram, "activation_ranks": report.activation_ranks,
            "opset": report.opset, "initializers": report.initializers}


# --- tokens -------------------------------------------------------------------------------------


def token_metadata(loaded: LoadedWhisper, spec: BuildSpec) -> dict:
    """Special token ids, the decoding prompt and the suppressed tokens (from the generation config)."""
    vocab = loaded.model.config.vocab_size
    token_to_id = loaded.tokenizer.get_vocab() if loaded.tokenizer is not None else None
    special = ct2.special_token_ids(vocab, token_to_id)
    if spec.variant.multilingual:
        english = (token_to_id or {}).get("<|en|>", special["start_of_transcript"] + 1)
        prompt = [special["start_of_transcript"], english, special["transcribe"], special["no_timestamps"]]
    else:
        prompt = [special["start_of_transcript"], special["no_timestamps"]]
    gen = loaded.model.generation_config
    return {
        "start_of_transcript": special["start_of_transcript"],
        "end_of_text": special["end_of_text"],
        "no_timestamps": special["no_timestamps"],
        "prompt": prompt,
        "suppress": sorted(int(t) for t in (getattr(gen, "suppress_tokens", None) or []) if t < vocab),
        "suppress_at_begin": sorted(int(t) for t in (getattr(gen, "begin_suppress_tokens", None) or []) if t < vocab),
    }


# --- the stage ----------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    """Versions of the libraries that made the export (recorded in export.json for the manifest)."""
    import importlib.metadata
    import platform

    versions = {"python": platform.python_version()}
    for lib in EXPORT_LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = "not installed"
    return versions


def file_names(spec: BuildSpec) -> dict[str, str]:
    """Artifact names; they carry variant, seconds and sequence length."""
    return {
        "encoder": f"{spec.encoder_net_name}.onnx",
        "decoder": f"{spec.decoder_net_name}.onnx",
        "token_embedding": TOKEN_EMBEDDING_FILE,
        "positional_embedding": f"positional_embedding_seq{spec.seq_len}.npy",
    }


def export_whisper(config: ExportConfig, *, parity_mel: Optional[np.ndarray] = None,
                   build_modules: Callable = build_hailo_modules,
                   log: Callable[[str], None] = lambda message: None) -> ExportResult:
    """Run the export stage; returns the export.json path and its content.

    `parity_mel` ([N, 80, frames] log-mel) is the greedy-decoding parity input (default: random).
    `build_modules(model, spec) -> (encoder, decoder)` is injectable so tests can show that a
    wrong rewrite is caught by the parity check.
    """
    import torch

    spec, out_dir = config.spec, Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / EXPORT_JSON
    marker.unlink(missing_ok=True)  # from here on, the directory does not look done until we finish
    names = file_names(spec)
    torch.manual_seed(config.seed)

    log(f"loading {config.model_source}")
    loaded = load_whisper(config.model_source, allow_download=config.allow_download)
    check_matches_variant(loaded.model, spec, config.model_source)
    if spec.encoder_positions > loaded.model.config.max_source_positions:
        raise ToolchainError(f"{spec.seconds_tag} needs {spec.encoder_positions} encoder positions; "
                             f"the checkpoint has {loaded.model.config.max_source_positions}.", "Use fewer seconds.")

    work = Path(tempfile.mkdtemp(prefix=".export-partial-", dir=out_dir))
    try:
        from pipeline.export.whisper_hailo import host_embedding

        log("building the Hailo encoder/decoder modules")
        encoder, decoder = build_modules(loaded.model, spec)
        reference = hf_reference_model(loaded.model, spec.encoder_positions)
        token_embedding, positional_embedding = host_embedding(loaded.model, spec.seq_len)
        d_model = loaded.model.config.d_model
        meta = {
            "format": EXPORT_FORMAT,
            "variant": spec.variant.name,
            "hf_id_or_path": config.model_source,
            "source_kind": loaded.source_kind,
            "seconds": spec.seconds,
            "seq_len": spec.seq_len,
            "frames": spec.frames,
            "encoder_positions": spec.encoder_positions,
            "d_model": d_model,
            "vocab_size": loaded.model.config.vocab_size,
            "opset": config.opset,
            "tokens": token_metadata(loaded, spec),
            "versions": library_versions(),
        }

        prompt = meta["tokens"]["prompt"]
        if spec.seq_len <= len(prompt):
            raise ToolchainError(
                f"Decoder sequence length {spec.seq_len} leaves no room to generate after the "
                f"{len(prompt)}-token prompt {prompt}.",
                f"Use --seq-len above {len(prompt)} (default for {spec.variant.name}: {spec.variant.default_seq_len}).",
            )

        # Cheap check first: a wrong rewrite fails here, before minutes of ONNX work.
        log("checking parity of the rewrite against transformers")
        inputs = ParityInputs.make(meta, token_embedding, positional_embedding, config.seed)
        figures, ours = measure_torch_parity(reference, encoder, decoder, inputs)
        check_parity(figures, config.tolerances)

        log(f"exporting {names['encoder']} (opset {config.opset})")
        encoder_onnx = export_onnx(encoder, (torch.zeros(1, 80, 1, spec.frames),), work / names["encoder"],
                                   [ENCODER_INPUT], [ENCODER_OUTPUT], config.opset)
        log(f"exporting {names['decoder']} (opset {config.opset})")
        decoder_onnx = export_onnx(
            decoder, (torch.zeros(1, spec.encoder_positions, d_model), torch.zeros(1, spec.seq_len, d_model)),
            work / names["decoder"], list(DECODER_INPUTS), [logits_name(i) for i in range(DECODER_VOCAB_SPLITS)],
            config.opset)
        meta["encoder"] = {**graph_metadata(encoder_onnx, spec.encoder_net_name, names["encoder"]), "calib_layout": "NHWC"}
        meta["decoder"] = graph_metadata(decoder_onnx, spec.decoder_net_name, names["decoder"])
        log("checking both graphs against the DFC graph rules")
        for model, onnx_model in (("encoder", encoder_onnx), ("decoder", decoder_onnx)):
            meta[model]["graph_check"] = check_exported_graph(onnx_model, meta[model], model)
        del encoder_onnx, decoder_onnx

        np.save(work / names["token_embedding"], token_embedding)
        np.save(work / names["positional_embedding"], positional_embedding)
        meta["host_assets"] = {"token_embedding": names["token_embedding"],
                               "positional_embedding": names["positional_embedding"],
                               "tokenizer_files": _save_tokenizer(loaded.tokenizer, work)}

        log("checking parity of the ONNX files (ONNX Runtime, greedy decoding vs transformers generate)")
        figures.update(measure_onnx_parity(reference, work, meta, inputs, ours, token_embedding,
                                           positional_embedding, parity_mel, config.tolerances.logits))
        check_parity(figures, config.tolerances)

        cached_names = cached_export.file_names(spec.decoder_net_name, spec.seconds_tag)
        meta["cached_decoder"] = cached_export.export_cached_decoder(loaded.model, cached_names, work,
                                                                     spec.encoder_positions, config.opset, log)
        log("checking parity of the cached decoder (ONNX Runtime, float and int8, vs transformers)")
        greedy_mel = inputs.mel if parity_mel is None else onnx_greedy.as_encoder_input(parity_mel, spec.frames)[:, :, 0, :]
        greedy_states = onnx_greedy.encode(onnx_greedy.load_sessions(work, meta)[0], meta, greedy_mel)
        figures.update(cached_export.measure_cached_parity(reference, work, meta, inputs.tokens, ours["hf_states"],
                                                           greedy_states, greedy_mel, config.tolerances.logits))
        check_parity(figures, config.tolerances)
        meta["parity"] = {**figures, "tolerances": asdict(config.tolerances)}
        log("parity: " + ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in figures.items() if k not in ("greedy_tokens", "cached_greedy_tokens")))

        written = [names["encoder"], names["decoder"], names["token_embedding"], names["positional_embedding"],
                   *meta["host_assets"]["tokenizer_files"],
                   *(name for precision in cached_export.PRECISIONS for name in cached_names[precision].values()),
                   cached_names["encoder_padding"]]
        meta["files"] = {name: sha256_file(work / name) for name in written}
        for name in written:
            os.replace(work / name, out_dir / name)
        write_json_atomic(marker, meta)  # last: the completion marker
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {marker}")
    return ExportResult(marker, meta)


def _save_tokenizer(tokenizer, work: Path) -> list[str]:
    """Tokenizer files written by transformers into `work`; [] when the model has no tokenizer."""
    if tokenizer is None:
        return []
    staging = work / "tokenizer"
    tokenizer.save_pretrained(str(staging))
    names = sorted(p.name for p in staging.iterdir() if p.is_file())
    for name in names:
        os.replace(staging / name, work / name)
    staging.rmdir()
    return names


# --- CLI ----------------------------------------------------------------------------------------


def make_config(variant: str, seconds: Optional[float], seq_len: Optional[int], model: Optional[str],
                out: Optional[str], offline: bool = False, arch: str = DEFAULT_ARCH) -> ExportConfig:
    """Validated ExportConfig from CLI-level choices (default out: build/<variant>-<arch>/export)."""
    spec = resolve_spec(variant, arch, seconds, seq_len)
    out_dir = Path(out) if out else Layout(Path("build") / spec.build_name).export_dir
    return ExportConfig(spec=spec, out_dir=out_dir, model=model, allow_download=not offline)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.export.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default=DEFAULT_VARIANT, help=f"one of {', '.join(VARIANTS)} (default tiny)")
    parser.add_argument("--seconds", type=float, default=None, help="encoder input length (default: per variant)")
    parser.add_argument("--seq-len", type=int, default=None, help="decoder sequence length (default: per variant)")
    parser.add_argument("--model", default=None,
                        help="Hugging Face id, transformers directory or CTranslate2 folder (default: the variant's HF id)")
    parser.add_argument("--out", default=None, help="output directory (default build/<variant>-<arch>/export)")
    parser.add_argument("--arch", default=DEFAULT_ARCH, choices=list(ARCHS),
                        help="only names the default output directory; the export is the same for every arch "
                        "(BuildSpec needs one)")
    parser.add_argument("--offline", action="store_true", help="never download; use the local Hugging Face cache only")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[export {time.monotonic() - started:6.1f}s] {message}", flush=True)

    def action():
        config = ExportConfig.from_args(args)
        result = export_whisper(config, log=log)
        print(f"export written to {result.export_json.parent} ({result.export_json.name} lists the files)")

    return run_cli(action)


if __name__ == "__main__":
    sys.exit(main())
