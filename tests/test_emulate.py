"""pipeline/dfc/emulate.py with the DFC test double: each row gives the tokens the host transcriber's
`har` backend gives in process on the same mel windows (native and quantized contexts, each half
emulated or float), the encoder states for a row the host decodes with its cached decoder, and
clear errors for windows of the wrong shape and a malformed row.

Real export (random-init tiny Whisper, 1 s, seq_len 8); HARs parsed and optimized (quick profile)
by the double once per module.
"""

import json
import sys

import numpy as np
import pytest

from pipeline.dfc import emulate
from pipeline.dfc.emulate import EmulateConfig, EmulatedRow, Half
from pipeline.errors import ToolchainError
from pipeline.host import transcriber
from tests.conftest import DFC_DOUBLE_DIR

pytestmark = pytest.mark.slow
ARCH = "hailo8l"
ENTRIES = 16  # the quick profile's calibset_size


def _forget_double():
    for module in [m for m in sys.modules if m == "hailo_sdk_client" or m.startswith("hailo_sdk_client.")]:
        del sys.modules[module]


@pytest.fixture(scope="module")
def double_on_path():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(DFC_DOUBLE_DIR))
        _forget_double()
        yield
    _forget_double()


@pytest.fixture(scope="module")
def hars(double_on_path, tiny_export_dir, module_tmp):
    """{"native": {model: parsed HAR}, "quantized": {model: optimized HAR}} of the tiny export."""
    from pipeline.dfc.optimize import OptimizeConfig, run_optimize
    from pipeline.dfc.parse import ParseConfig, run_parse

    meta = json.loads((tiny_export_dir / "export.json").read_text())
    folder = module_tmp("emulate-hars")
    rng = np.random.default_rng(0)
    calib = {"encoder": folder / "encoder_calib.npy", "decoder": folder / "decoder_calib.npz"}
    np.save(calib["encoder"], rng.uniform(-1.0, 1.5, size=(ENTRIES, 1, meta["frames"], 80)).astype(np.float32))
    net, width = meta["decoder"]["net_name"], meta["d_model"]
    np.savez(calib["decoder"], **{
        f"{net}/input_layer1": rng.standard_normal((ENTRIES, 1, meta["encoder_positions"], width), dtype=np.float32),
        f"{net}/input_layer2": rng.standard_normal((ENTRIES, 1, meta["seq_len"], width), dtype=np.float32)})
    found = {"native": {}, "quantized": {}}
    for model in ("encoder", "decoder"):
        out = folder / model
        found["native"][model] = run_parse(ParseConfig(tiny_export_dir, model, ARCH, out))["har"]
        found["quantized"][model] = run_optimize(OptimizeConfig(
            har=found["native"][model], model=model, export_dir=tiny_export_dir, calib=calib[model], arch=ARCH,
            out_dir=out, profile="quick"))["har"]
    return found


@pytest.fixture(scope="module")
def mel_file(tiny_export_dir, module_tmp):
    frames = json.loads((tiny_export_dir / "export.json").read_text())["frames"]
    path = module_tmp("emulate-mel") / "mel.npy"
    np.save(path, np.random.default_rng(3).uniform(-1.0, 1.5, size=(3, frames, 80)).astype(np.float32))
    return path


def _in_process_tokens(export_dir, mels, encoder_half: Half, decoder_half: Half):
    """The host transcriber's tokens: its `har` backend for emulated halves, its onnx backend for float ones."""
    files = transcriber.read_model_files(export_dir)
    onnx_encoder, onnx_decoder = transcriber.onnx_backend(files)
    dec_io = files.io["decoder"]
    encoder = (emulate.har_encoder(encoder_half.har, encoder_half.context) if encoder_half.context else onnx_encoder)
    decoder = (emulate.har_decoder(decoder_half.har, decoder_half.context, dec_io["layers"], dec_io["inputs"])
               if decoder_half.context else onnx_decoder)
    model = transcriber.Transcriber(files, encoder, transcriber.fixed_decoding(files, decoder))
    return [model.tokens(mel) for mel in mels]


@pytest.mark.parametrize("context", ["native", "quantized"])
def test_every_row_gives_the_in_process_transcribers_tokens(context, hars, tiny_export_dir, mel_file, tmp_path):
    emulated = {m: Half(context, hars[context][m]) for m in ("encoder", "decoder")}
    rows = (EmulatedRow("both", emulated["encoder"], emulated["decoder"]),
            EmulatedRow("encoder-only", emulated["encoder"], Half()),
            EmulatedRow("decoder-only", Half(), emulated["decoder"]))
    result = emulate.run_emulate(EmulateConfig(tiny_export_dir, mel_file, rows, tmp_path))

    assert result == json.loads((tmp_path / "emulate.json").read_text())
    assert result["windows"] == 3 and "testdouble" in result["dfc_version"]
    mels = np.load(mel_file)
    for row in rows:
        assert result["rows"][row.name]["tokens"] == _in_process_tokens(tiny_export_dir, mels, row.encoder,
                                                                        row.decoder), row.name
    # The transcriber's har backend (both halves emulated) is literally the "both" row.
    model = transcriber.make_transcriber(tiny_export_dir, "har", hars=hars[context], context=context)
    assert result["rows"]["both"]["tokens"] == [model.tokens(mel) for mel in mels]


def test_a_row_the_host_decodes_returns_the_emulated_encoder_states(hars, tiny_export_dir, mel_file, tmp_path):
    half = Half("quantized", hars["quantized"]["encoder"])
    result = emulate.run_emulate(EmulateConfig(tiny_export_dir, mel_file, (EmulatedRow("q", half, None),), tmp_path))

    assert result["rows"]["q"]["states"] == "q-states.npy"
    states = np.load(tmp_path / "q-states.npy")
    encoder = emulate.har_encoder(half.har, "quantized")
    mels = np.load(mel_file)
    np.testing.assert_array_equal(states, np.stack([encoder(mel) for mel in mels]))
    # The host's cached decoder on those states is the transcriber's har backend with the cached decoder.
    model = transcriber.make_transcriber(tiny_export_dir, "har", decoder="cached", hars={"encoder": half.har},
                                         context="quantized")
    assert [model.token_decoder(s) for s in states] == [model.tokens(mel) for mel in mels]


def test_the_command_line_runs_the_stage(hars, tiny_export_dir, mel_file, tmp_path, capsys):
    config = EmulateConfig(tiny_export_dir, mel_file,
                           (EmulatedRow("native", Half("native", hars["native"]["encoder"]), Half()),), tmp_path)
    capsys.readouterr()  # the fixtures' DFC console
    assert emulate.main(config.to_argv()) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[out.rindex("\n{\n") + 1:] if not out.startswith("{\n") else out)  # after the emulator's console
    assert printed["rows"]["native"]["tokens"] == json.loads((tmp_path / "emulate.json").read_text())["rows"]["native"]["tokens"]


def test_windows_of_another_length_are_refused_with_the_shape_needed(hars, tiny_export_dir, tmp_path):
    frames = json.loads((tiny_export_dir / "export.json").read_text())["frames"]
    wrong = tmp_path / "mel.npy"
    np.save(wrong, np.zeros((2, frames + 4, 80), dtype=np.float32))
    row = EmulatedRow("native", Half("native", hars["native"]["encoder"]), Half())
    with pytest.raises(ToolchainError, match=rf"shape \(2, {frames + 4}, 80\); the export needs \[windows, {frames}, 80\]"):
        emulate.run_emulate(EmulateConfig(tiny_export_dir, wrong, (row,), tmp_path / "out"))
    assert not (tmp_path / "out" / "emulate.json").exists()


@pytest.mark.parametrize("text", ["sdk:/x.har", "quantized", "quantized:"])
def test_a_malformed_half_says_what_a_half_is(text):
    with pytest.raises(ToolchainError, match="onnx or <context>:<har> with context one of native, quantized"):
        Half.from_arg(text)
