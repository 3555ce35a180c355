"""calib/decoder_set.py with a real export (shared tiny_export_dir: random-init tiny, 1 s, seq_len 8) and ONNX Runtime."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import calib.decoder_set as decoder_set
from calib.decoder_set import DecoderSetConfig, build_decoder_set
from calib.encoder_set import EncoderSetConfig, build_encoder_set
from pipeline.export import onnx_greedy
from pipeline.errors import ToolchainError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export_dir(tiny_export_dir):
    """The shared real export: random-init tiny, 1 s input (100 frames, 50 positions), seq_len 8."""
    return tiny_export_dir


@pytest.fixture(scope="module")
def encoder_set(speech_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "encoder_calib.npy"
    build_encoder_set(EncoderSetConfig(speech_dir, out, seconds=1.0, size=6, workers=1, progress=False))
    return out


def _config(encoder_set, export_dir, out, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("workers", 2)
    return DecoderSetConfig(encoder_set=encoder_set, export_dir=export_dir, out=out, **kwargs)


def test_pairs_are_encoder_states_and_embedded_greedy_tokens_keyed_by_dfc_layer(encoder_set, export_dir, tmp_path):
    meta = json.loads((export_dir / "export.json").read_text())
    out = tmp_path / "decoder_calib.npz"
    result = build_decoder_set(_config(encoder_set, export_dir, out))

    net = meta["decoder"]["net_name"]
    assert net == "whisper_tiny_decoder_1s_seq8"
    data = np.load(out)
    assert sorted(data.files) == [f"{net}/input_layer1", f"{net}/input_layer2"]
    states, embedded = data[f"{net}/input_layer1"], data[f"{net}/input_layer2"]
    assert states.shape == (6, 1, 50, 384) and embedded.shape == (6, 1, 8, 384)
    assert states.dtype == embedded.dtype == np.float32
    assert result.count == 6 and result.shapes == {f"{net}/input_layer1": [6, 1, 50, 384],
                                                    f"{net}/input_layer2": [6, 1, 8, 384]}

    # Recompute entry by entry with the ONNX graphs: same states, same greedy tokens, host embedding.
    mels = np.load(encoder_set)
    encoder, decoder = onnx_greedy.load_sessions(export_dir, meta)
    token_embedding, positional_embedding = onnx_greedy.load_host_assets(export_dir, meta)
    for i in range(len(mels)):
        nchw = mels[i : i + 1].transpose(0, 3, 1, 2)  # NHWC [1, 1, 100, 80] -> the ONNX's [1, 80, 1, 100]
        ref_states = encoder.run(None, {"input_features": nchw})[0]
        np.testing.assert_allclose(states[i, 0], ref_states[0], atol=1e-5)
        tokens = onnx_greedy.greedy_decode(encoder, decoder, meta, token_embedding, positional_embedding,
                                           mels[i : i + 1])[0]
        assert list(tokens[:4]) == meta["tokens"]["prompt"]
        np.testing.assert_allclose(embedded[i, 0], token_embedding[tokens] + positional_embedding, atol=1e-6)

    manifest = json.loads((tmp_path / "decoder_calib.manifest.json").read_text())
    assert manifest["count"] == 6 and manifest["decoder_net_name"] == net and manifest["seq_len"] == 8
    assert manifest["prompt"] == meta["tokens"]["prompt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder_calib.manifest.json", "decoder_calib.npz"]


def test_same_bytes_whatever_the_worker_count_and_size_takes_the_first_entries(encoder_set, export_dir, tmp_path):
    one, two, first3 = tmp_path / "one.npz", tmp_path / "two.npz", tmp_path / "first3.npz"
    build_decoder_set(_config(encoder_set, export_dir, one, workers=1))
    build_decoder_set(_config(encoder_set, export_dir, two, workers=2))
    build_decoder_set(_config(encoder_set, export_dir, first3, size=3))
    a, b, c = np.load(one), np.load(two), np.load(first3)
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(c[key], a[key][:3])


def test_cached_and_fixed_token_decoders_write_the_same_bytes(encoder_set, export_dir, tmp_path):
    fixed, cached = tmp_path / "fixed.npz", tmp_path / "cached.npz"
    build_decoder_set(_config(encoder_set, export_dir, fixed, token_decoder="fixed"))
    result = build_decoder_set(_config(encoder_set, export_dir, cached, token_decoder="cached", chunk=4))
    assert fixed.read_bytes() == cached.read_bytes()
    fixed_manifest = json.loads((tmp_path / "fixed.manifest.json").read_text())
    assert result.manifest["tokens_sha256"] == fixed_manifest["tokens_sha256"]
    assert (result.manifest["token_decoder"], fixed_manifest["token_decoder"]) == ("cached", "fixed")


def test_an_export_without_a_cached_decoder_says_to_rerun_the_export(encoder_set, export_dir, tmp_path):
    old = tmp_path / "old-export"
    shutil.copytree(export_dir, old)
    meta = json.loads((old / "export.json").read_text())
    del meta["cached_decoder"]
    (old / "export.json").write_text(json.dumps(meta))
    with pytest.raises(ToolchainError, match=r"has no cached \(KV-cache\) decoder: it was made by an older version.*"
                                             r"Run the export stage again"):
        build_decoder_set(_config(encoder_set, old, tmp_path / "d.npz"))
    assert not (tmp_path / "d.npz").exists()
    build_decoder_set(_config(encoder_set, old, tmp_path / "d.npz", token_decoder="fixed"))  # the old path still works


@pytest.mark.parametrize("token_decoder", ["cached", "fixed"])
def test_a_failure_mid_write_leaves_no_output_and_no_partial(encoder_set, export_dir, tmp_path, monkeypatch,
                                                             token_decoder):
    target = (decoder_set.cached_greedy, "transcribe_tokens") if token_decoder == "cached" else \
        (decoder_set.onnx_greedy, "greedy_decode")
    real, calls = getattr(*target), []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("onnxruntime failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(*target, failing)
    with pytest.raises(RuntimeError, match="onnxruntime failed"):
        build_decoder_set(_config(encoder_set, export_dir, tmp_path / "d.npz", workers=1, chunk=2,
                                  token_decoder=token_decoder))
    assert list(tmp_path.iterdir()) == []


def test_an_encoder_set_of_another_length_is_refused(speech_dir, export_dir, tmp_path):
    wrong = tmp_path / "enc2s.npy"
    build_encoder_set(EncoderSetConfig(speech_dir, wrong, seconds=2.0, size=2, workers=1, progress=False))
    with pytest.raises(ToolchainError, match=r"has shape \[2, 1, 200, 80\] \(float32\); the export expects "
                                             r"\[N, 1, 100, 80\] float32 \(1 s\)\. Rebuild it with .*--seconds 1"):
        build_decoder_set(_config(wrong, export_dir, tmp_path / "d.npz"))
    assert not (tmp_path / "d.npz").exists()


def test_missing_inputs_are_clear_errors(encoder_set, export_dir, tmp_path):
    with pytest.raises(ToolchainError, match=r"No finished export in .*export.json is missing.*Run the export stage"):
        build_decoder_set(_config(encoder_set, tmp_path, tmp_path / "d.npz"))
    with pytest.raises(ToolchainError, match=r"Encoder calibration set .*nope.npy' does not exist\. Build it first"):
        build_decoder_set(_config(tmp_path / "nope.npy", export_dir, tmp_path / "d.npz"))


def test_cli(encoder_set, export_dir, tmp_path):
    out = tmp_path / "d.npz"
    done = subprocess.run([sys.executable, "-m", "calib", "decoder", "--encoder-set", str(encoder_set),
                           "--export-dir", str(export_dir), "--out", str(out), "--size", "2", "--no-progress"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "whisper_tiny_decoder_1s_seq8/input_layer1 [2, 1, 50, 384]" in done.stdout
    assert np.load(out)["whisper_tiny_decoder_1s_seq8/input_layer2"].shape == (2, 1, 8, 384)
