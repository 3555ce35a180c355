"""Deployment bundle: files copied intact, config.json values, README, rehearsal banner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.host.bundle import NOT_DEPLOYABLE_BANNER, bundle_files, make_bundle
from pipeline.files import sha256_file
from pipeline.tables import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE, resolve_spec


def _export(spec):
    d = 384
    return {
        "variant": spec.variant.name, "d_model": d, "vocab_size": 51865,
        "encoder": {"net_name": spec.encoder_net_name, "onnx": "enc.onnx",
                    "inputs": [{"name": "input_features", "shape": [1, 80, 1, spec.frames]}],
                    "outputs": [{"name": "encoder_states", "shape": [1, spec.encoder_positions, d]}],
                    "dfc_input_layers": {f"{spec.encoder_net_name}/input_layer1": "input_features"}},
        "decoder": {"net_name": spec.decoder_net_name, "onnx": "dec.onnx",
                    "inputs": [{"name": "encoder_states", "shape": [1, spec.encoder_positions, d]},
                               {"name": "decoder_embeddings", "shape": [1, spec.seq_len, d]}],
                    "outputs": [{"name": f"logits_{i}", "shape": [1, spec.seq_len, 12967]} for i in range(4)],
                    "dfc_input_layers": {f"{spec.decoder_net_name}/input_layer1": "encoder_states",
                                         f"{spec.decoder_net_name}/input_layer2": "decoder_embeddings"}},
        "host_assets": {"token_embedding": "token_embedding.npy",
                        "positional_embedding": f"positional_embedding_seq{spec.seq_len}.npy",
                        "tokenizer_files": ["tokenizer.json", "vocab.json"]},
        "tokens": {"end_of_text": 50257, "prompt": [50258, 50259, 50359, 50363]},
    }


def _inputs(tmp_path, spec):
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    export = _export(spec)
    np.save(export_dir / "token_embedding.npy", np.arange(12, dtype=np.float32).reshape(4, 3))
    np.save(export_dir / export["host_assets"]["positional_embedding"], np.ones((spec.seq_len, 3), np.float32))
    (export_dir / "tokenizer.json").write_text('{"model": "bpe"}')
    (export_dir / "vocab.json").write_text('{"a": 0}')
    (export_dir / "enc.onnx").write_bytes(b"encoder onnx")
    (export_dir / "dec.onnx").write_bytes(b"decoder onnx")
    hefs = {}
    for model in ("encoder", "decoder"):
        hefs[model] = tmp_path / f"{export[model]['net_name']}.hef"
        hefs[model].write_bytes(f"HEF {model}".encode())
    return export, export_dir, hefs


def test_bundle_holds_every_file_intact_and_a_config(tmp_path):
    spec = resolve_spec("tiny", "hailo8l", 2, 8)
    export, export_dir, hefs = _inputs(tmp_path, spec)
    out = tmp_path / "bundle"
    written = make_bundle(out, spec=spec, export=export, export_dir=export_dir, hefs=hefs,
                          dfc_version="3.31.0", rehearsal=False)
    assert written == bundle_files(out, export)
    assert sorted(p for p in out.rglob("*") if p.is_file()) == sorted(written)
    for model, hef in hefs.items():
        assert sha256_file(out / hef.name) == sha256_file(hef)
    # Host arrays where Hailo's speech-recognition app loads them from.
    tokenization = out / "decoder_assets" / "tiny" / "decoder_tokenization"
    copies = {tokenization / "token_embedding_weight_tiny.npy": "token_embedding.npy",
              tokenization / "onnx_add_input_tiny.npy": "positional_embedding_seq8.npy",
              out / "tokenizer.json": "tokenizer.json", out / "vocab.json": "vocab.json",
              out / "onnx" / "enc.onnx": "enc.onnx", out / "onnx" / "dec.onnx": "dec.onnx"}
    for copy, name in copies.items():
        assert sha256_file(copy) == sha256_file(export_dir / name)
    config = json.loads((out / "config.json").read_text())
    assert config["deployable"] is True and config["not_deployable_reason"] is None
    assert (config["variant"], config["arch"], config["input_seconds"], config["seq_len"]) == ("tiny", "hailo8l", 2.0, 8)
    assert config["dfc_version"] == "3.31.0"
    expected_mel = {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop_length": HOP_LENGTH, "n_mels": N_MELS,
                    "frames": 200}
    assert {k: config["mel"][k] for k in expected_mel} == expected_mel
    assert config["encoder"]["hef"] == f"{spec.encoder_net_name}.hef"
    assert [o["name"] for o in config["decoder"]["onnx_outputs"]] == ["logits_0", "logits_1", "logits_2", "logits_3"]
    assert config["decoder"]["hef_input_layers"][f"{spec.decoder_net_name}/input_layer2"] == "decoder_embeddings"
    assert config["tokens"]["prompt"] == [50258, 50259, 50359, 50363]
    readme = (out / "README.md").read_text()
    for needle in ("VDevice", "create_infer_model", "configure()", "create_bindings", "host",
                   "onnx_add_input_tiny.npy", f"{spec.decoder_net_name}.hef", "concatenate"):
        assert needle in readme, needle
    assert "NOT DEPLOYABLE" not in readme


def test_rehearsal_bundle_says_not_deployable(tmp_path):
    spec = resolve_spec("tiny", "hailo8l", 2, 8)
    export, export_dir, hefs = _inputs(tmp_path, spec)
    out = tmp_path / "bundle"
    make_bundle(out, spec=spec, export=export, export_dir=export_dir, hefs=hefs,
                dfc_version="3.31.0+testdouble", rehearsal=True)
    config = json.loads((out / "config.json").read_text())
    assert config["deployable"] is False
    assert config["not_deployable_reason"] == NOT_DEPLOYABLE_BANNER
    assert "NOT DEPLOYABLE" in (out / "README.md").read_text().splitlines()[2]
    # Nothing half-written is left behind by the atomic copies.
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_rebuilt_bundle_replaces_the_old_one_whole(tmp_path):
    old_spec, new_spec = resolve_spec("tiny", "hailo8l", 2, 8), resolve_spec("tiny", "hailo8l", 1, 8)
    out = tmp_path / "bundle"
    (tmp_path / "old").mkdir()
    export, export_dir, hefs = _inputs(tmp_path / "old", old_spec)
    make_bundle(out, spec=old_spec, export=export, export_dir=export_dir, hefs=hefs, dfc_version="3.31.0",
                rehearsal=False)
    (tmp_path / "new").mkdir()
    export, export_dir, hefs = _inputs(tmp_path / "new", new_spec)
    written = make_bundle(out, spec=new_spec, export=export, export_dir=export_dir, hefs=hefs,
                          dfc_version="3.31.0", rehearsal=False)
    # Only the 1 s pair: no HEF of the 2 s build beside a config of the 1 s one.
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == sorted(
        Path(p).relative_to(out) for p in written)
    assert sorted(p.name for p in out.glob("*.hef")) == sorted(h.name for h in hefs.values())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no staging folder is left"


def test_a_bundle_that_fails_halfway_leaves_the_old_one_untouched(tmp_path):
    spec = resolve_spec("tiny", "hailo8l", 2, 8)
    export, export_dir, hefs = _inputs(tmp_path, spec)
    out = tmp_path / "bundle"
    make_bundle(out, spec=spec, export=export, export_dir=export_dir, hefs=hefs, dfc_version="3.31.0",
                rehearsal=False)
    before = {p.relative_to(out): sha256_file(p) for p in out.rglob("*") if p.is_file()}
    (export_dir / "vocab.json").unlink()
    hefs["encoder"].write_bytes(b"a new HEF")
    try:
        make_bundle(out, spec=spec, export=export, export_dir=export_dir, hefs=hefs, dfc_version="3.31.0",
                    rehearsal=False)
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("a missing host asset must fail the bundle")
    assert {p.relative_to(out): sha256_file(p) for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
