"""The DFC test double's emulator (tests/dfc_double/hailo_sdk_client/emulator.py) through
pipeline.dfc.client.Emulator: SDK_NATIVE is the exported ONNX in float, SDK_QUANTIZED is a real
fake quantization whose error shrinks with the bit widths the model script gives.

Real export (random-init tiny Whisper, 1 s, seq_len 8); calibration data drawn from the float
network's own input range.
"""

import json

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.dfc import client as dfc
from pipeline.dfc.optimize import OptimizeConfig, run_optimize
from pipeline.dfc.parse import ParseConfig, run_parse
from pipeline.errors import ToolchainError

ARCH = "hailo8l"
ENTRIES = 16
ALL_16_BIT = "quantization_param({*}, precision_mode=a16_w16)\n"


@pytest.fixture(scope="module")
def encoder_case(tiny_export_dir, tmp_path_factory):
    meta = json.loads((tiny_export_dir / "export.json").read_text())
    rng = np.random.default_rng(0)
    calib = tmp_path_factory.mktemp("emulator-calib") / "encoder_calib.npy"
    np.save(calib, rng.uniform(-1.0, 1.5, size=(ENTRIES, 1, meta["frames"], 80)).astype(np.float32))
    sample = rng.uniform(-1.0, 1.5, size=(2, 1, meta["frames"], 80)).astype(np.float32)
    return meta, calib, sample


def _optimized(dfc_double, tiny_export_dir, calib, out, extra_script=""):
    net = json.loads((tiny_export_dir / "export.json").read_text())["encoder"]["net_name"]
    run_parse(ParseConfig(tiny_export_dir, "encoder", ARCH, out))
    script = None
    if extra_script:
        from pipeline.dfc.model_scripts import resolve_model_script

        script = out / "custom.alls"
        script.write_text(resolve_model_script("tiny", ARCH, "encoder", "quick").text + extra_script)
    result = run_optimize(OptimizeConfig(har=out / f"{net}.har", model="encoder", export_dir=tiny_export_dir,
                                         calib=calib, arch=ARCH, out_dir=out, profile="quick",
                                         model_script=script, noise_analysis=True))
    return out / f"{net}.har", out / f"{net}_optimized.har", result


def _onnx_states(tiny_export_dir, meta, sample_nhwc):
    session = ort.InferenceSession(str(tiny_export_dir / meta["encoder"]["onnx"]), providers=["CPUExecutionProvider"])
    nchw = sample_nhwc.transpose(0, 3, 1, 2)
    return np.stack([session.run(None, {"input_features": x[None]})[0][0] for x in nchw])


@pytest.mark.slow
def test_native_is_the_float_onnx_and_quantized_adds_noise_that_16_bit_shrinks(
        dfc_double, tiny_export_dir, encoder_case, tmp_path):
    meta, calib, sample = encoder_case
    parsed, optimized8, result8 = _optimized(dfc_double, tiny_export_dir, calib, tmp_path / "a8")
    _, optimized16, result16 = _optimized(dfc_double, tiny_export_dir, calib, tmp_path / "a16", ALL_16_BIT)
    expected = _onnx_states(tiny_export_dir, meta, sample)  # [2, positions, d]

    native = dfc.Emulator(parsed, "native").run(sample)
    assert native.shape == (2, 1, meta["encoder_positions"], meta["d_model"])  # NHWC, as the DFC returns it
    np.testing.assert_allclose(native[:, 0], expected, rtol=0, atol=1e-5)

    errors = {}
    for bits, har in (("a8", optimized8), ("a16", optimized16)):
        quantized = dfc.Emulator(har, "quantized").run(sample)[:, 0]
        errors[bits] = float(np.sqrt(np.mean((quantized - expected) ** 2)) / np.sqrt(np.mean(expected ** 2)))
    assert errors["a8"] > 1e-3  # a real change, not a copy of the float network
    assert errors["a16"] < errors["a8"] / 10  # 16 bits: 256 times finer steps
    # The layer noise analysis measures the same thing: SNR of quantized vs float outputs.
    (snr8,), (snr16,) = result8["snr_db"].values(), result16["snr_db"].values()
    assert snr16 > snr8 + 20


@pytest.mark.slow
def test_quantized_context_needs_an_optimized_har_and_infer_checks_its_input(
        dfc_double, tiny_export_dir, encoder_case, tmp_path):
    meta, calib, sample = encoder_case
    run_parse(ParseConfig(tiny_export_dir, "encoder", ARCH, tmp_path))
    parsed = tmp_path / f"{meta['encoder']['net_name']}.har"
    with pytest.raises(ToolchainError, match="SDK_QUANTIZED needs an optimized model"):
        dfc.Emulator(parsed, "quantized")
    emulator = dfc.Emulator(parsed, "native")
    with pytest.raises(ToolchainError, match=r"expected \[N, 1, 100, 80\] \(NHWC\)"):
        emulator.run(sample.transpose(0, 3, 1, 2))  # NCHW by mistake
    with pytest.raises(ToolchainError, match="Unknown emulation context 'fast'"):
        dfc.Emulator(parsed, "fast")
    with pytest.raises(ToolchainError, match="does not exist"):
        dfc.Emulator(tmp_path / "missing.har", "native")
