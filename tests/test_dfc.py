"""pipeline/dfc/client.py and the parse/optimize/compile stages, run against the DFC test double.

The export is real (random-init tiny Whisper, 1 s input, seq_len 8, via pipeline.export.export); the
DFC is tests/dfc_double, which checks node names, calibration layout and model-script commands.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.dfc import client as dfc
from pipeline.dfc.compile import CompileConfig, compile_build, run_compile
from pipeline.dfc.inputs import load_network_export
from pipeline.errors import ToolchainError
from pipeline.files import sha256_file
from pipeline.dfc.model_scripts import resolve_model_script
from pipeline.dfc.optimize import OptimizeConfig, optimize_build, run_optimize
from pipeline.dfc.parse import ParseConfig, run_parse

ARCH = "hailo8l"
ENTRIES = 16  # the quick profile's calibset_size
REPO = Path(__file__).resolve().parent.parent
HEF_MAGIC = b"DFC-TEST-DOUBLE-HEF-PLACEHOLDER NOT DEPLOYABLE"


@pytest.fixture(scope="module")
def meta(tiny_export_dir):
    return json.loads((tiny_export_dir / "export.json").read_text())


@pytest.fixture(scope="module")
def calib(meta, tmp_path_factory):
    """Calibration files shaped like the calibration stage makes them (NHWC, float32)."""
    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    frames, positions, seq, width = meta["frames"], meta["encoder_positions"], meta["seq_len"], meta["d_model"]
    encoder = folder / "encoder_calib.npy"
    np.save(encoder, rng.standard_normal((ENTRIES, 1, frames, 80), dtype=np.float32))
    net = meta["decoder"]["net_name"]
    decoder = folder / "decoder_calib.npz"
    np.savez(decoder, **{f"{net}/input_layer1": rng.standard_normal((ENTRIES, 1, positions, width), dtype=np.float32),
                         f"{net}/input_layer2": rng.standard_normal((ENTRIES, 1, seq, width), dtype=np.float32)})
    return {"encoder": encoder, "decoder": decoder}


def _no_partial_files(folder: Path):
    return [p.name for p in folder.iterdir() if ".partial" in p.name] == []


def _parse(export_dir, model, out, arch=ARCH):
    return run_parse(ParseConfig(export_dir, model, arch, out))


def _optimize(export_dir, model, out, calib_path, har=None, **kwargs):
    net = json.loads((Path(export_dir) / "export.json").read_text())[model]["net_name"]
    kwargs.setdefault("profile", "quick")
    return run_optimize(OptimizeConfig(har=har or out / f"{net}.har", model=model, export_dir=export_dir,
                                       calib=calib_path, arch=ARCH, out_dir=out, **kwargs))


@pytest.mark.slow
def test_encoder_parse_optimize_compile(dfc_double, tiny_export_dir, meta, calib, tmp_path):
    net = meta["encoder"]["net_name"]
    out = tmp_path / "dfc" / "encoder"
    parsed = _parse(tiny_export_dir, "encoder", out)
    assert parsed["input_layers"] == {f"{net}/input_layer1": [-1, 1, meta["frames"], 80]}
    assert parsed["output_layers"] == [f"{net}/output_layer1"]
    assert parsed["dfc_version"] == "3.31.0+testdouble" and parsed["dfc_is_test_double"]
    assert parsed["har_sha256"] == sha256_file(out / f"{net}.har")
    assert json.loads((out / "parse.json").read_text()) == parsed
    translation = [e for e in parsed["timeline"] if e["name"] == "Translation"]
    assert translation and translation[0]["details"]["status"] == "done"

    optimized = _optimize(tiny_export_dir, "encoder", out, calib["encoder"], noise_analysis=True)
    assert optimized["calib_entries"] == ENTRIES and optimized["profile"] == "quick"
    assert list(optimized["snr_db"]) == [f"{net}/output_layer1"]
    assert isinstance(optimized["snr_db"][f"{net}/output_layer1"], float)
    generated = resolve_model_script("tiny", ARCH, "encoder", "quick", noise_analysis=True).text
    written = (out / f"{net}.alls").read_text()
    # hailo-whisper's conv4 (block 0 attention output) is our conv6: q, k, v stay three convs here
    assert "quantization_param(conv4, precision_mode=a16_w16)" in generated
    assert "quantization_param(conv6, precision_mode=a16_w16)  # encoder block 0: self-attention output " \
           "projection (hailo-whisper conv4)" in written
    assert optimized["model_script_sha256"] == sha256_file(out / f"{net}.alls")
    assert {"reference": "conv4", "role": "encoder block 0: self-attention output projection",
            "layers": ["conv6"]} in optimized["layer_roles"]
    layers = json.loads((out / f"{net}.layers.json").read_text())
    assert f"{net}/conv6" in layers["har_layers"] and layers["roles"] == optimized["layer_roles"]
    assert (out / "optimize-work").is_dir()  # optimize(work_dir=...) inside the output folder
    stats = [e for e in optimized["timeline"] if e["name"] == "Statistics Collector"][0]
    assert stats["details"]["calibration_entries"] == ENTRIES and stats["duration_s"] is not None

    compiled = run_compile(CompileConfig(out / f"{net}_optimized.har", ARCH, out, model_script=out / f"{net}.alls"))
    hef = out / f"{net}.hef"
    assert compiled["hef"] == str(hef) and compiled["hef_sha256"] == sha256_file(hef)
    assert hef.read_bytes().startswith(HEF_MAGIC)
    # the double keeps no script in the HAR: these compile-time commands reached compile() only
    # because compile loaded the script again
    header = json.loads(hef.read_bytes().split(b"\n", 1)[1])
    assert header["compile_commands"] == ["performance_param(optimize_for_batch=1)"]
    assert compiled["model_script_sha256"] == sha256_file(out / f"{net}.alls")
    assert isinstance(compiled["contexts"], int) and compiled["contexts"] >= 1
    assert (out / f"{net}_compiled.har").is_file() and (out / "compile.json").is_file()
    assert _no_partial_files(out)


@pytest.mark.slow
def test_decoder_parse_optimize_compile(dfc_double, tiny_export_dir, meta, calib, tmp_path):
    net = meta["decoder"]["net_name"]
    out = tmp_path / "decoder"
    parsed = _parse(tiny_export_dir, "decoder", out)
    width = meta["d_model"]
    assert parsed["input_layers"] == {f"{net}/input_layer1": [-1, 1, meta["encoder_positions"], width],
                                      f"{net}/input_layer2": [-1, 1, meta["seq_len"], width]}
    assert parsed["output_layers"] == [f"{net}/output_layer{i}" for i in range(1, 5)]
    optimized = _optimize(tiny_export_dir, "decoder", out, calib["decoder"], noise_analysis=True)
    assert sorted(optimized["snr_db"]) == parsed["output_layers"]
    compiled = run_compile(CompileConfig(out / f"{net}_optimized.har", ARCH, out))
    assert Path(compiled["hef"]).read_bytes().startswith(HEF_MAGIC)


@pytest.mark.slow
def test_each_step_resumes_from_the_previous_har_in_a_new_process(dfc_double, tiny_export_dir, meta, calib,
                                                                  tmp_path):
    net = meta["encoder"]["net_name"]
    out = tmp_path / "out"
    _parse(tiny_export_dir, "encoder", out)
    env = {**os.environ}  # PYTHONPATH points at the double (fixture)
    optimize = subprocess.run(
        [sys.executable, "-m", "pipeline.dfc.optimize", "--har", str(out / f"{net}.har"), "--model", "encoder",
         "--export-dir", str(tiny_export_dir), "--calib", str(calib["encoder"]), "--arch", ARCH,
         "--profile", "quick", "--out-dir", str(out)], capture_output=True, text=True, cwd=REPO, env=env)
    assert optimize.returncode == 0, optimize.stderr
    assert "Starting Statistics Collector" in optimize.stdout  # the DFC's output reaches the console
    assert json.loads((out / "optimize.json").read_text())["har"] == str(out / f"{net}_optimized.har")
    compile_ = subprocess.run(
        [sys.executable, "-m", "pipeline.dfc.compile", "--har", str(out / f"{net}_optimized.har"), "--arch", ARCH,
         "--out-dir", str(out)], capture_output=True, text=True, cwd=REPO, env=env)
    assert compile_.returncode == 0, compile_.stderr
    assert (out / f"{net}.hef").read_bytes().startswith(HEF_MAGIC)
    # a second optimize from the same parsed HAR works again (the parsed HAR is never modified)
    before = sha256_file(out / f"{net}.har")
    _optimize(tiny_export_dir, "encoder", out, calib["encoder"])
    assert sha256_file(out / f"{net}.har") == before


@pytest.mark.slow
def test_a_step_given_the_wrong_har_says_which_one_it_needs(dfc_double, tiny_export_dir, meta, calib, tmp_path):
    net = meta["encoder"]["net_name"]
    _parse(tiny_export_dir, "encoder", tmp_path)
    with pytest.raises(ToolchainError, match="not an optimized \\(quantized\\) model"):
        run_compile(CompileConfig(tmp_path / f"{net}.har", ARCH, tmp_path))
    _optimize(tiny_export_dir, "encoder", tmp_path, calib["encoder"])
    with pytest.raises(ToolchainError, match="in state quantized_model, not a parsed model"):
        _optimize(tiny_export_dir, "encoder", tmp_path / "again", calib["encoder"],
                  har=tmp_path / f"{net}_optimized.har")
    with pytest.raises(ToolchainError, match="Run parse first"):
        _optimize(tiny_export_dir, "encoder", tmp_path, calib["encoder"], har=tmp_path / "missing.har")


@pytest.mark.slow
def test_invoke_level_optimize_parses_when_needed_and_compile_needs_optimize(dfc_double, tiny_export_dir, calib,
                                                                             tmp_path):
    build = tmp_path / "build"
    shutil.copytree(tiny_export_dir, build / "export")
    (build / "calib").mkdir()
    shutil.copy(calib["encoder"], build / "calib" / "encoder_calib.npy")
    with pytest.raises(ToolchainError, match="the encoder is not optimized"):
        compile_build(build, ARCH, ("encoder",))
    results = optimize_build(build, ARCH, ("encoder",), profile="quick")
    assert (build / "dfc" / "encoder" / "parse.json").is_file()
    assert Path(results["encoder"]["har"]).is_file()
    assert compile_build(build, ARCH, ("encoder",))["encoder"]["hef_bytes"] > 0


# --- versions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, version", [("hailo8", "3.31.0"), ("hailo8l", "3.33.1+testdouble"),
                                           ("hailo10h", "5.0.0"), ("hailo10h", "5.1.0+testdouble")])
def test_version_check_accepts_matching_majors(arch, version):
    assert dfc.check_dfc_version(arch, version) == version


@pytest.mark.parametrize("arch, version, problem, wheel", [
    ("hailo8l", "5.1.0", "hailo8l needs the Dataflow Compiler 3.x, but DFC 5.1.0 is installed",
     "hailo_dataflow_compiler-3.31.0-py3-none-linux_x86_64.whl"),
    ("hailo10h", "3.31.0", "hailo10h needs the Dataflow Compiler 5.x, but DFC 3.31.0 is installed",
     "hailo_dataflow_compiler-5.0.0-py3-none-linux_x86_64.whl"),
    ("hailo8", "3.27.0", "DFC 3.27.0 is older than 3.31.0", "hailo_dataflow_compiler-3.31.0"),
])
def test_version_check_refuses_and_names_the_wheel(arch, version, problem, wheel):
    with pytest.raises(ToolchainError) as err:
        dfc.check_dfc_version(arch, version)
    assert problem in str(err.value) and wheel in str(err.value)


def test_version_that_is_not_a_number():
    with pytest.raises(ToolchainError, match="'banana' is not a version number"):
        dfc.check_dfc_version("hailo8", "banana")


@pytest.mark.slow
def test_version_mismatch_is_refused_before_parsing(dfc_double, tiny_export_dir, tmp_path):
    dfc_double("5.1.0+testdouble")
    with pytest.raises(ToolchainError, match="hailo8l needs the Dataflow Compiler 3.x, but DFC 5.1.0"):
        _parse(tiny_export_dir, "encoder", tmp_path)
    assert list(tmp_path.iterdir()) == [] or not any(p.suffix in (".har", ".json") for p in tmp_path.iterdir())
    # the same double as a 5.x DFC parses for hailo10h
    assert _parse(tiny_export_dir, "encoder", tmp_path, arch="hailo10h")["dfc_version"] == "5.1.0+testdouble"


def test_dfc_not_importable_says_how_to_supply_the_wheel(monkeypatch, tiny_export_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", None)  # import fails like a missing package
    with pytest.raises(ToolchainError) as err:
        _parse(tiny_export_dir, "encoder", tmp_path)
    message = str(err.value)
    assert "hailo_sdk_client) is not importable" in message
    assert "put it in vendor/" in message and "pip install" in message and "--no-docker" in message
    assert "hailo_dataflow_compiler-3.31.0-py3-none-linux_x86_64.whl" in message


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_too_small_calibration_set_is_refused_before_the_dfc_runs(dfc_double, tiny_export_dir, meta, calib,
                                                                   tmp_path):
    net = meta["encoder"]["net_name"]
    _parse(tiny_export_dir, "encoder", tmp_path)
    with pytest.raises(ToolchainError) as err:
        _optimize(tiny_export_dir, "encoder", tmp_path, calib["encoder"], profile="full")
    assert (f"has {ENTRIES} entries, but the model script needs 3340 (calibset_size=1024, "
            "fine-tune dataset_size=3340)") in str(err.value)
    assert "--profile quick" in str(err.value)
    assert not (tmp_path / f"{net}_optimized.har").exists() and not (tmp_path / "optimize.json").exists()
    assert not (tmp_path / f"{net}.alls").exists()


@pytest.mark.slow
def test_unknown_model_script_command_is_rejected_by_the_dfc(dfc_double, tiny_export_dir, calib, tmp_path):
    _parse(tiny_export_dir, "encoder", tmp_path)
    script = tmp_path / "mine.alls"
    script.write_text("model_optimization_config(calibration, calibset_size=8)\nmake_it_fast(policy=enabled)\n")
    with pytest.raises(ToolchainError) as err:
        _optimize(tiny_export_dir, "encoder", tmp_path, calib["encoder"], model_script=script)
    assert "The DFC failed during load_model_script" in str(err.value)
    assert "unknown model script command 'make_it_fast'" in str(err.value)
    assert not (tmp_path / "optimize.json").exists()


@pytest.mark.slow
def test_malformed_model_script_is_refused_before_the_dfc(dfc_double, tiny_export_dir, calib, tmp_path):
    script = tmp_path / "bad.alls"
    script.write_text("model_optimization_flavor(optimization_level=0\n")
    with pytest.raises(ToolchainError, match="bad.alls line 1 never closes its parenthesis"):
        _optimize(tiny_export_dir, "encoder", tmp_path, calib["encoder"], model_script=script)


@pytest.fixture
def export_copy(tiny_export_dir, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(tiny_export_dir, copy)
    return copy


def _edit_export(export_dir, change):
    path = export_dir / "export.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))
    return meta


def test_missing_onnx(dfc_double, export_copy, tmp_path):
    onnx_name = json.loads((export_copy / "export.json").read_text())["encoder"]["onnx"]
    (export_copy / onnx_name).unlink()
    with pytest.raises(ToolchainError, match=f"The encoder ONNX .*{onnx_name} does not exist"):
        _parse(export_copy, "encoder", tmp_path / "out")


def test_corrupt_onnx_is_caught_by_its_hash(dfc_double, export_copy, tmp_path):
    onnx_name = json.loads((export_copy / "export.json").read_text())["encoder"]["onnx"]
    (export_copy / onnx_name).write_bytes(b"not a model")
    with pytest.raises(ToolchainError, match="is corrupt or changed since export"):
        _parse(export_copy, "encoder", tmp_path / "out")


@pytest.mark.slow
def test_corrupt_onnx_without_a_hash_is_rejected_by_the_dfc(dfc_double, export_copy, tmp_path):
    meta = _edit_export(export_copy, lambda m: m["files"].clear())
    (export_copy / meta["encoder"]["onnx"]).write_bytes(b"not a model")
    with pytest.raises(ToolchainError, match="The DFC failed during parsing .*Failed to load ONNX model"):
        _parse(export_copy, "encoder", tmp_path / "out")
    assert not (tmp_path / "out" / "parse.json").exists()


@pytest.mark.slow
def test_start_node_not_in_the_graph_is_rejected(dfc_double, export_copy, tmp_path):
    def change(meta):
        meta["encoder"]["start_node_names"] = ["no_such_node"]
        meta["encoder"]["net_input_shapes"] = {"no_such_node": [1, 80, 1, meta["frames"]]}
    _edit_export(export_copy, change)
    with pytest.raises(ToolchainError, match="Unable to find start node 'no_such_node'"):
        _parse(export_copy, "encoder", tmp_path / "out")


@pytest.mark.parametrize("problem", ["missing file", "missing key", "bad json", "old format"])
def test_broken_export_json(export_copy, tmp_path, problem):
    path = export_copy / "export.json"
    if problem == "missing file":
        path.unlink()
        match = "export.json does not exist"
    elif problem == "missing key":
        _edit_export(export_copy, lambda m: m["encoder"].pop("end_node_names"))
        match = "lacks 'end_node_names' for the encoder"
    elif problem == "bad json":
        path.write_text("{")
        match = "is not valid JSON"
    else:
        _edit_export(export_copy, lambda m: m.update(format=0))
        match = "is not an export.json of format 1"
    with pytest.raises(ToolchainError, match=match):
        load_network_export(export_copy, "encoder")


@pytest.mark.slow
def test_wrong_calibration_files(dfc_double, tiny_export_dir, meta, calib, tmp_path):
    _parse(tiny_export_dir, "encoder", tmp_path)
    frames = meta["frames"]

    def attempt(path):
        with pytest.raises(ToolchainError) as err:
            _optimize(tiny_export_dir, "encoder", tmp_path, path)
        return str(err.value)

    assert "needs a .npy file" in attempt(calib["decoder"])
    assert "does not exist" in attempt(tmp_path / "nope.npy")
    nchw = tmp_path / "nchw.npy"
    np.save(nchw, np.zeros((ENTRIES, 80, 1, frames), np.float32))
    message = attempt(nchw)
    assert f"has shape [{ENTRIES}, 80, 1, {frames}]; the DFC expects [N, 1, {frames}, 80] (NHWC)" in message
    assert "It looks transposed" in message
    ints = tmp_path / "ints.npy"
    np.save(ints, np.zeros((ENTRIES, 1, frames, 80), np.int16))
    assert "is int16, not float" in attempt(ints)
    text = tmp_path / "text.npy"
    text.write_text("hello")
    assert "is not a readable numpy .npy file" in attempt(text)


@pytest.mark.slow
def test_decoder_calibration_with_wrong_keys(dfc_double, tiny_export_dir, meta, tmp_path):
    _parse(tiny_export_dir, "decoder", tmp_path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, encoder_states=np.zeros((ENTRIES, 1, meta["encoder_positions"], meta["d_model"]), np.float32),
             decoder_embeddings=np.zeros((ENTRIES, 1, meta["seq_len"], meta["d_model"]), np.float32))
    with pytest.raises(ToolchainError, match="has keys \\['decoder_embeddings', 'encoder_states'\\], but the "
                                             "decoder's input layers are"):
        _optimize(tiny_export_dir, "decoder", tmp_path, bad)


# --- interruption: no .hef that looks complete -------------------------------------------------


@pytest.fixture
def optimized_encoder(dfc_double, tiny_export_dir, meta, calib, tmp_path):
    out = tmp_path / "enc"
    _parse(tiny_export_dir, "encoder", out)
    _optimize(tiny_export_dir, "encoder", out, calib["encoder"])
    net = meta["encoder"]["net_name"]
    return out, net


@pytest.mark.slow
def test_failed_compile_leaves_no_hef_not_even_an_old_one(optimized_encoder, monkeypatch):
    out, net = optimized_encoder
    run_compile(CompileConfig(out / f"{net}_optimized.har", ARCH, out))
    assert (out / f"{net}.hef").is_file()
    monkeypatch.setenv("HAILO_DOUBLE_FAIL_AT", "compile")
    with pytest.raises(ToolchainError, match="The DFC failed during compilation .*simulated DFC failure at compile"):
        run_compile(CompileConfig(out / f"{net}_optimized.har", ARCH, out))
    assert not (out / f"{net}.hef").exists() and not (out / "compile.json").exists()
    assert _no_partial_files(out)


@pytest.mark.slow
def test_killed_compile_leaves_no_hef(optimized_encoder):
    out, net = optimized_encoder
    env = {**os.environ, "HAILO_DOUBLE_HANG_AT": "compile"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.dfc.compile", "--har", str(out / f"{net}_optimized.har"), "--arch", ARCH,
         "--out-dir", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 60
        seen = b""
        while b"hanging at compile" not in seen and time.monotonic() < deadline:
            seen += process.stdout.readline()
        assert b"Starting Hailo allocation and compilation flow" in seen
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert not (out / f"{net}.hef").exists() and not (out / "compile.json").exists()
    assert (out / "compile-dfc.log").read_text().count("hanging at compile") == 1  # the log shows where


@pytest.mark.slow
def test_failed_har_save_leaves_no_har(dfc_double, tiny_export_dir, meta, monkeypatch, tmp_path):
    monkeypatch.setenv("HAILO_DOUBLE_FAIL_AT", "save_har")
    with pytest.raises(ToolchainError, match="The DFC failed during saving .*simulated DFC failure at save_har"):
        _parse(tiny_export_dir, "encoder", tmp_path)
    assert not (tmp_path / f"{meta['encoder']['net_name']}.har").exists() and _no_partial_files(tmp_path)


# --- CLI --------------------------------------------------------------------------------------


def test_cli_error_exits_2_with_the_message(dfc_double, tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline.dfc.compile", "--har", str(tmp_path / "x.har"),
                           "--arch", ARCH, "--out-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "x.har does not exist" in done.stderr


@pytest.mark.parametrize("module, words", [("parse", "export.json"), ("optimize", "calibration set"),
                                           ("compile", "atomically")])
def test_cli_help_explains(module, words):
    done = subprocess.run([sys.executable, "-m", f"pipeline.{module}", "--help"], capture_output=True, text=True,
                          cwd=REPO, check=True)
    assert words in " ".join(done.stdout.split()) and "--out-dir" in done.stdout and "--log" in done.stdout


@pytest.mark.slow
def test_log_option_reads_the_timeline_from_a_given_log(dfc_double, tiny_export_dir, tmp_path):
    log = tmp_path / "launcher.log"
    shutil.copy(Path(__file__).parent / "fixtures" / "seed-dfc-conversion-log.txt", log)
    result = run_parse(ParseConfig(tiny_export_dir, "encoder", ARCH, tmp_path / "out", log=log))
    assert result["log"] == str(log) and result["summary"]["contexts"] == 9
    assert not (tmp_path / "out" / "parse-dfc.log").exists()


@pytest.mark.slow
def test_failed_optimize_leaves_no_optimized_har_from_an_earlier_run(optimized_encoder, tiny_export_dir, calib,
                                                                     monkeypatch):
    out, net = optimized_encoder
    assert (out / f"{net}_optimized.har").is_file()
    monkeypatch.setenv("HAILO_DOUBLE_FAIL_AT", "optimize")
    with pytest.raises(ToolchainError, match="The DFC failed during optimization .*simulated DFC failure"):
        _optimize(tiny_export_dir, "encoder", out, calib["encoder"])
    assert not (out / f"{net}_optimized.har").exists() and not (out / "optimize.json").exists()
    assert (out / f"{net}.har").is_file()  # the input is kept: optimize can be resumed from it


@pytest.mark.slow
def test_a_model_script_naming_unknown_layers_stops_before_optimize(dfc_double, tiny_export_dir, meta, calib,
                                                                   tmp_path):
    net = meta["encoder"]["net_name"]
    _parse(tiny_export_dir, "encoder", tmp_path)
    script = tmp_path / "mine.alls"
    script.write_text("model_optimization_config(calibration, calibset_size=8)\n"
                      "quantization_param(conv77, precision_mode=a16_w16)\n")
    with pytest.raises(ToolchainError, match=r"names layers the parsed HAR does not have: line 2: 'conv77' "
                                             r"\(nearest: conv7"):
        _optimize(tiny_export_dir, "encoder", tmp_path, calib["encoder"], model_script=script)
    # nothing that looks done, and the optimizer never started (no stats in a log, no work dir)
    assert not (tmp_path / "optimize.json").exists() and not (tmp_path / f"{net}_optimized.har").exists()
    assert not (tmp_path / f"{net}.alls").exists() and not (tmp_path / "optimize-work").exists()
    assert "Starting Model Optimization" not in (tmp_path / "optimize-dfc.log").read_text()


@pytest.mark.slow
def test_a_har_of_another_network_is_refused_before_optimize(dfc_double, tiny_export_dir, meta, calib, tmp_path):
    dnet = meta["decoder"]["net_name"]
    _parse(tiny_export_dir, "decoder", tmp_path)
    with pytest.raises(ToolchainError, match=f"holds the network '{dnet}', but export.json's encoder is"):
        run_optimize(OptimizeConfig(har=tmp_path / f"{dnet}.har", model="encoder", export_dir=tiny_export_dir,
                                    calib=calib["encoder"], arch=ARCH, out_dir=tmp_path, profile="quick"))
    assert not (tmp_path / "optimize.json").exists()


def test_compile_refuses_a_missing_model_script_before_the_dfc(dfc_double, tmp_path):
    har = tmp_path / "net_optimized.har"
    har.write_bytes(b"x")
    with pytest.raises(ToolchainError, match="Model script .*missing.alls does not exist"):
        run_compile(CompileConfig(har, ARCH, tmp_path, model_script=tmp_path / "missing.alls"))
    assert not (tmp_path / "compile.json").exists()
