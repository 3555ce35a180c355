"""pipeline/host/transcriber.py: the same greedy tokens as onnx_greedy, from the export directory,
from the bundle, and from the DFC emulator on parsed HARs; with the cached decoder the tokens of
pipeline/export/cached_greedy.py, from the export and from a --decoder cpu bundle; clear errors
for what is missing.

Real export (random-init tiny Whisper, 1 s, seq_len 8, no tokenizer). The text path on real
tiny.en speech is checked in tests/test_ladder.py, on a real build's bundle.
"""

import json

import numpy as np
import pytest

from pipeline.errors import ToolchainError
from pipeline.export import cached_greedy, onnx_greedy
from pipeline.host import transcriber
from pipeline.host.bundle import make_bundle
from pipeline.tables import resolve_spec


@pytest.fixture(scope="module")
def mels(tiny_export_dir):
    frames = json.loads((tiny_export_dir / "export.json").read_text())["frames"]
    return np.random.default_rng(3).uniform(-1.0, 1.5, size=(3, frames, 80)).astype(np.float32)


@pytest.fixture(scope="module")
def expected_tokens(tiny_export_dir, mels):
    meta = json.loads((tiny_export_dir / "export.json").read_text())
    sessions = onnx_greedy.load_sessions(tiny_export_dir, meta)
    rows = onnx_greedy.greedy_decode(*sessions, meta, *onnx_greedy.load_host_assets(tiny_export_dir, meta),
                                     mels.transpose(0, 2, 1))
    return [onnx_greedy.generated_tokens(r, meta) for r in rows]


@pytest.fixture(scope="module")
def bundle_dir(tiny_export_dir, module_tmp):
    meta = json.loads((tiny_export_dir / "export.json").read_text())
    folder = module_tmp("bundle-src")
    hefs = {}
    for model in ("encoder", "decoder"):
        hefs[model] = folder / f"{meta[model]['net_name']}.hef"
        hefs[model].write_bytes(b"placeholder")
    out = folder / "bundle"
    make_bundle(out, spec=resolve_spec("tiny", "hailo8l", 1, 8), export=meta, export_dir=tiny_export_dir,
                hefs=hefs, dfc_version="3.31.0+testdouble", rehearsal=True)
    return out


@pytest.fixture(scope="module")
def cached_tokens(tiny_export_dir, mels):
    """The cached decoder's tokens for `mels`, as cached_greedy gives them with the transcriber's
    options (encoder states padded to 1500 positions with the export's silence states)."""
    meta = json.loads((tiny_export_dir / "export.json").read_text())
    encoder, _ = onnx_greedy.load_sessions(tiny_export_dir, meta)
    states = onnx_greedy.encode(encoder, meta, mels.transpose(0, 2, 1))
    padding = cached_greedy.load_encoder_padding(tiny_export_dir, meta)
    decoders = {p: cached_greedy.load_cached_decoder(tiny_export_dir, meta, precision=p) for p in ("float", "int8")}
    # One window at a time, as the transcriber decodes (a random model's near-ties can flip with the batch size).
    return {precision: [cached_greedy.transcribe_tokens(one[None], decoder, meta, encoder_padding=padding)[0]
                        for one in states] for precision, decoder in decoders.items()}


@pytest.fixture(scope="module")
def cpu_bundle_dir(tiny_export_dir, module_tmp):
    """A bundle built with --decoder cpu: the encoder HEF, the cached decoder ONNX, no host embedding."""
    meta = json.loads((tiny_export_dir / "export.json").read_text())
    folder = module_tmp("cpu-bundle-src")
    hef = folder / f"{meta['encoder']['net_name']}.hef"
    hef.write_bytes(b"placeholder")
    out = folder / "bundle"
    make_bundle(out, spec=resolve_spec("tiny", "hailo8l", 1, 8), export=meta, export_dir=tiny_export_dir,
                hefs={"encoder": hef}, dfc_version="3.31.0+testdouble", rehearsal=True, decoder="cpu")
    return out


def test_the_cached_decoder_gives_cached_greedys_tokens_from_the_export(tiny_export_dir, mels, cached_tokens):
    for precision in ("float", "int8"):
        model = transcriber.make_transcriber(tiny_export_dir, "onnx", decoder="cached", precision=precision)
        assert model.decoder_name == f"cached-{precision}"
        assert [model.tokens(mel) for mel in mels] == cached_tokens[precision]


def test_a_cpu_decoder_bundle_decodes_with_its_cached_decoder_by_default(cpu_bundle_dir, mels, cached_tokens):
    files = transcriber.read_model_files(cpu_bundle_dir)
    assert files.default_decoder == "cached" and files.token_embedding is None
    model = transcriber.make_transcriber(cpu_bundle_dir, "onnx")
    assert model.decoder_name == "cached-float"
    assert [model.tokens(mel) for mel in mels] == cached_tokens["float"]
    with pytest.raises(ToolchainError, match="no fixed-length decoder.*--decoder cpu.*Use --decoder cached"):
        transcriber.make_transcriber(cpu_bundle_dir, "onnx", decoder="fixed")


def test_a_decoder_hef_bundle_has_no_cached_decoder_and_says_so(bundle_dir):
    with pytest.raises(ToolchainError, match="has no cached .*decoder.*--decoder fixed"):
        transcriber.make_transcriber(bundle_dir, "onnx", decoder="cached")


def test_onnx_backend_on_the_export_gives_onnx_greedys_tokens(tiny_export_dir, mels, expected_tokens):
    model = transcriber.make_transcriber(tiny_export_dir, "onnx")
    assert [model.tokens(mel) for mel in mels] == expected_tokens


def test_the_bundle_alone_gives_the_same_tokens_as_onnx_greedy_on_the_export(bundle_dir, mels, expected_tokens):
    files = transcriber.read_model_files(bundle_dir)
    assert files.kind == "bundle"
    assert files.token_embedding.relative_to(bundle_dir).as_posix() == \
        "decoder_assets/tiny/decoder_tokenization/token_embedding_weight_tiny.npy"
    model = transcriber.make_transcriber(bundle_dir, "onnx")
    assert [model.tokens(mel) for mel in mels] == expected_tokens


@pytest.mark.slow
def test_har_backend_native_on_parsed_hars_gives_the_same_tokens(dfc_double, tiny_export_dir, mels,
                                                                 expected_tokens, cached_tokens, tmp_path):
    from pipeline.dfc.parse import ParseConfig, run_parse

    hars = {m: run_parse(ParseConfig(tiny_export_dir, m, "hailo8l", tmp_path / m))["har"] for m in ("encoder", "decoder")}
    model = transcriber.make_transcriber(tiny_export_dir, "har", hars=hars, context="native")
    assert [model.tokens(mel) for mel in mels] == expected_tokens
    # The cached decoder after an emulated encoder: only the encoder HAR is needed.
    model = transcriber.make_transcriber(tiny_export_dir, "har", decoder="cached", hars={"encoder": hars["encoder"]},
                                         context="native")
    assert [model.tokens(mel) for mel in mels] == cached_tokens["float"]


def test_hailort_backend_without_hailort_says_it_is_not_available(bundle_dir, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_hailo(name, *args, **kwargs):
        if name == "hailo_platform":
            raise ImportError("No module named 'hailo_platform'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_hailo)
    with pytest.raises(ToolchainError, match="hailort backend is not available.*hailo_platform.*--backend onnx"):
        transcriber.make_transcriber(bundle_dir, "hailort")


def test_missing_pieces_are_named(tmp_path, tiny_export_dir, mels):
    with pytest.raises(ToolchainError, match="neither a bundle .* nor an export directory"):
        transcriber.read_model_files(tmp_path)
    with pytest.raises(ToolchainError, match="Unknown backend 'tpu'"):
        transcriber.make_transcriber(tiny_export_dir, "tpu")
    with pytest.raises(ToolchainError, match="har backend needs the encoder HAR"):
        transcriber.make_transcriber(tiny_export_dir, "har")
    model = transcriber.make_transcriber(tiny_export_dir, "onnx")
    with pytest.raises(ToolchainError, match="has no tokenizer.json"):
        model.text([1, 2, 3])


def test_audio_longer_than_the_window_is_cut_into_windows(tiny_export_dir):
    model = transcriber.make_transcriber(tiny_export_dir, "onnx")
    windows = model.windows(np.zeros(int(2.5 * 16000), dtype=np.float32))  # 1 s window
    assert [w.shape for w in windows] == [(100, 80)] * 3
