"""The DFC test double itself: it must fail like the real DFC when called carelessly, say it is not
deployable everywhere, and install as a wheel like the real one."""

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.host.vendor import build_test_double_wheel
from pipeline.errors import ToolchainError
from pipeline.tables import parse_dfc_wheel_name

DOUBLE_DIR = Path(__file__).parent / "dfc_double"


@pytest.fixture(scope="module")
def meta(tiny_export_dir):
    return json.loads((tiny_export_dir / "export.json").read_text())


@pytest.fixture
def client(dfc_double):
    import hailo_sdk_client

    return hailo_sdk_client


def _parse(client, export_dir, meta, model="encoder", arch="hailo8l", **overrides):
    entry = meta[model]
    runner = client.ClientRunner(hw_arch=arch)
    args = dict(start_node_names=entry["start_node_names"], end_node_names=entry["end_node_names"],
                net_input_shapes=entry["net_input_shapes"])
    args.update(overrides)
    runner.translate_onnx_model(str(export_dir / entry["onnx"]), entry["net_name"], **args)
    return runner


def _encoder_calib(meta, n=16):
    return np.zeros((n, 1, meta["frames"], 80), np.float32) + 0.5


def test_reports_a_test_double_version(client, dfc_double):
    assert client.__version__ == "3.31.0+testdouble" and client.IS_TEST_DOUBLE
    dfc_double("5.1.0+testdouble")
    import hailo_sdk_client

    assert hailo_sdk_client.__version__ == "5.1.0+testdouble"


def test_arch_must_suit_the_dfc_major(client, dfc_double):
    with pytest.raises(Exception, match="does not support hw_arch='hailo10h'"):
        client.ClientRunner(hw_arch="hailo10h")
    dfc_double("5.1.0+testdouble")
    import hailo_sdk_client

    with pytest.raises(Exception, match="does not support hw_arch='hailo8l'"):
        hailo_sdk_client.ClientRunner(hw_arch="hailo8l")


@pytest.mark.slow
def test_parse_maps_nchw_onnx_inputs_to_nhwc_layers(client, tiny_export_dir, meta):
    runner = _parse(client, tiny_export_dir, meta)
    net = meta["encoder"]["net_name"]
    hn = runner.get_hn()
    assert hn["layers"][f"{net}/input_layer1"]["input_shapes"] == [[-1, 1, meta["frames"], 80]]
    assert runner.state == client.States.HAILO_MODEL and runner.model_name == net
    decoder = _parse(client, tiny_export_dir, meta, "decoder")
    shapes = {k: v["input_shapes"] for k, v in decoder.get_hn()["layers"].items() if v["type"] == "input_layer"}
    dnet = meta["decoder"]["net_name"]
    assert shapes == {f"{dnet}/input_layer1": [[-1, 1, meta["encoder_positions"], meta["d_model"]]],
                      f"{dnet}/input_layer2": [[-1, 1, meta["seq_len"], meta["d_model"]]]}


@pytest.mark.slow
@pytest.mark.parametrize("overrides, problem", [
    ({"start_node_names": ["nope"]}, "Unable to find start node 'nope'"),
    ({"end_node_names": ["/Nope"]}, "Unable to find end node '/Nope'"),
    ({"net_input_shapes": {"input_features": [1, 80, 1, 7]}}, "but the ONNX input is"),
    ({"net_input_shapes": {"other": [1]}}, "which is not a start node"),
])
def test_parse_rejects_careless_node_names_and_shapes(client, tiny_export_dir, meta, overrides, problem):
    with pytest.raises(Exception, match=problem):
        _parse(client, tiny_export_dir, meta, **overrides)


@pytest.mark.slow
def test_parse_rejects_a_cut_that_leaves_an_input_dangling(client, tiny_export_dir, meta):
    entry = meta["decoder"]
    with pytest.raises(Exception, match="also depends on graph input 'decoder_embeddings'"):
        _parse(client, tiny_export_dir, meta, "decoder", start_node_names=["encoder_states"],
               net_input_shapes={"encoder_states": entry["net_input_shapes"]["encoder_states"]})


def test_parse_rejects_a_file_that_is_not_onnx(client, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(Exception, match="Failed to load ONNX model"):
        client.ClientRunner(hw_arch="hailo8").translate_onnx_model(str(bad), "net")


@pytest.mark.slow
def test_optimize_rejects_wrong_calibration(client, tiny_export_dir, meta):
    runner = _parse(client, tiny_export_dir, meta)
    runner.load_model_script("model_optimization_config(calibration, calibset_size=4)")
    frames = meta["frames"]
    with pytest.raises(Exception, match=f"expected \\[N, 1, {frames}, 80\\] \\(NHWC\\)"):
        runner.optimize(np.zeros((8, 80, 1, frames), np.float32))  # NCHW
    with pytest.raises(Exception, match="are not the input layers"):
        runner.optimize({"input_features": _encoder_calib(meta)})
    with pytest.raises(Exception, match="calibset_size=4 but the dataset has 2 entries"):
        runner.optimize(_encoder_calib(meta, 2))
    with pytest.raises(Exception, match="finite floats"):
        runner.optimize(np.full((8, 1, frames, 80), np.nan, np.float32))
    decoder = _parse(client, tiny_export_dir, meta, "decoder")
    with pytest.raises(Exception, match="pass a dict keyed by input layer name"):
        decoder.optimize(_encoder_calib(meta))


@pytest.mark.slow
def test_compile_before_optimize_is_refused(client, tiny_export_dir, meta):
    runner = _parse(client, tiny_export_dir, meta)
    with pytest.raises(Exception, match="compile\\(\\) needs an optimized \\(quantized\\) model; state is "
                                        "hailo_model. Call optimize\\(\\) first"):
        runner.compile()


@pytest.mark.parametrize("line, problem", [
    ("make_it_fast(policy=enabled)", "unknown model script command 'make_it_fast'"),
    ("model_optimization_flavor(optimisation_level=2)", "has no argument 'optimisation_level'"),
    ("model_optimization_flavor(optimization_level=9)", "optimization_level='9' is not valid"),
    ("quantization_param(conv1, precision_mode=a12_w12)", "precision_mode='a12_w12' is not valid"),
    ("post_quantization_optimization(finetuning, policy=enabled)", "does not know 'finetuning'"),
    ("performance_param(compiler_optimization_level=maximum)", "is not valid"),
    ("model_optimization_flavor optimization_level=2", "cannot parse"),
])
def test_model_script_commands_are_checked(client, tmp_path, line, problem):
    from hailo_sdk_client import model_script

    with pytest.raises(model_script.ModelScriptError, match=problem):
        model_script.parse("model_optimization_flavor(optimization_level=0)\n" + line)


def test_every_generated_script_is_accepted_by_the_double(client):
    import itertools

    from hailo_sdk_client import model_script

    from pipeline.dfc.model_scripts import MODELS, PROFILES, generated_script
    from pipeline.tables import ARCHS, VARIANTS

    for variant, arch, model, profile in itertools.product(VARIANTS, ARCHS, MODELS, PROFILES):
        assert model_script.parse(generated_script(variant, arch, model, profile))


@pytest.mark.slow
def test_outputs_say_not_deployable_and_reload(client, tiny_export_dir, meta, tmp_path):
    runner = _parse(client, tiny_export_dir, meta)
    runner.load_model_script("model_optimization_config(calibration, calibset_size=4)\n"
                             "model_optimization_config(checker_cfg, policy=enabled)")
    runner.optimize(_encoder_calib(meta, 4))
    har = tmp_path / "net_optimized.har"
    runner.save_har(str(har))
    with tarfile.open(har) as tar:
        assert "NOT DEPLOYABLE" in tar.extractfile("NOT_DEPLOYABLE.txt").read().decode()
    resumed = client.ClientRunner(hw_arch="hailo8l", har=str(har))
    # like the Model Zoo assumes of the DFC, the script is not in the HAR: compile must load it again
    assert resumed.state == client.States.QUANTIZED_MODEL and resumed.model_script == ""
    assert "model_script" not in json.loads(tarfile.open(har).extractfile("double_state.json").read())
    hef = resumed.compile()
    assert hef.startswith(b"DFC-TEST-DOUBLE-HEF-PLACEHOLDER NOT DEPLOYABLE")
    assert json.loads(hef.split(b"\n", 1)[1])["hw_arch"] == "hailo8l"
    with pytest.raises(Exception, match="was made for hailo8l, not hailo8"):
        client.ClientRunner(hw_arch="hailo8", har=str(har))


def test_a_har_from_elsewhere_is_rejected(client, tmp_path):
    not_har = tmp_path / "x.har"
    not_har.write_text("hello")
    with pytest.raises(Exception, match="is not a HAR this DFC can read"):
        client.ClientRunner(har=str(not_har))


def test_fail_and_hang_switches(client, monkeypatch, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    monkeypatch.setenv("HAILO_DOUBLE_FAIL_AT", "parse")
    with pytest.raises(Exception, match="simulated DFC failure at parse"):
        client.ClientRunner(hw_arch="hailo8").translate_onnx_model(str(model), "net")
    monkeypatch.delenv("HAILO_DOUBLE_FAIL_AT")
    code = ("import hailo_sdk_client as c; c.ClientRunner(hw_arch='hailo8').translate_onnx_model('m.onnx', 'n')")
    env_hang = {"HAILO_DOUBLE_HANG_AT": "parse"}
    import os

    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=3, capture_output=True,
                       env={**os.environ, **env_hang})


@pytest.mark.slow
@pytest.mark.parametrize("version", ["3.31.0+testdouble", "5.1.0+testdouble"])
def test_builds_an_installable_wheel(tmp_path, version):
    wheel = build_test_double_wheel(DOUBLE_DIR, tmp_path / "vendor", version)
    assert parse_dfc_wheel_name(wheel.name) == version
    assert wheel.name == f"hailo_dataflow_compiler-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        assert "hailo_sdk_client/runner.py" in zf.namelist()
        assert not any(n.startswith("tests/") or "pipeline/" in n for n in zf.namelist())
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True)
    probe = ("import json, hailo_sdk_client; from pipeline.dfc.client import installed_dfc_version; "
             "print(json.dumps([hailo_sdk_client.__version__, installed_dfc_version()]))")
    import os

    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{Path.cwd()}"},
                          cwd=Path(__file__).parent.parent)
    assert json.loads(done.stdout) == [version, version]


def test_wheel_version_must_say_testdouble(tmp_path):
    with pytest.raises(ToolchainError, match="lacks the \\+testdouble label"):
        build_test_double_wheel(DOUBLE_DIR, tmp_path, "3.31.0")


# --- parser and naming (hailo_sdk_client/naming.py) ----------------------------------------------


def _small_onnx(path, fold_to_rank2=False, gemm=False):
    import onnx
    import onnxslim
    import torch

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x):  # [1, 5, 8]
            if fold_to_rank2:
                return (x.reshape(5, 8) @ self.proj.weight.T).reshape(1, 5, 8)
            return self.proj(x) + x

    torch.onnx.export(Linear(), (torch.zeros(1, 5, 8),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    kwargs = {} if gemm else {"skip_fusion_patterns": ["FusionGemm"]}
    onnx.save(onnxslim.slim(onnx.load(str(path)), **kwargs), str(path))
    return path


def test_a_gemm_is_rejected_naming_the_node(client, tmp_path):
    import onnx

    path = _small_onnx(tmp_path / "gemm.onnx", gemm=True)
    gemm = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Gemm"][0]
    with pytest.raises(Exception, match=f"UnsupportedOperationError in op {gemm}: Gemm") as err:
        client.ClientRunner(hw_arch="hailo8l").translate_onnx_model(str(path), "net")
    assert type(err.value).__name__ == "ParsingWithRecommendationException"


def test_a_rank_2_activation_is_rejected(client, tmp_path):
    path = _small_onnx(tmp_path / "rank2.onnx", fold_to_rank2=True)
    with pytest.raises(Exception, match="has rank 2; the parser needs 3-D or 4-D tensors"):
        client.ClientRunner(hw_arch="hailo8l").translate_onnx_model(str(path), "net")


def test_layers_are_numbered_per_type_with_their_onnx_nodes(client, tmp_path):
    path = _small_onnx(tmp_path / "ok.onnx")
    runner = client.ClientRunner()  # no arguments, as public tutorials create it
    assert runner.hw_arch == "hailo8"
    runner.translate_onnx_model(str(path), "tiny-whisper-encoder-10s.v1")  # '-' and '.' as hailo-whisper's stems
    layers = runner.get_hn()["layers"]
    net = "tiny-whisper-encoder-10s.v1"
    assert list(layers) == [f"{net}/input_layer1", f"{net}/conv1", f"{net}/ew_add1", f"{net}/output_layer1"]
    conv = layers[f"{net}/conv1"]
    assert conv["type"] == "conv" and conv["original_names"][0].endswith("MatMul")
    assert any(n.endswith("Add") for n in conv["original_names"][1:])  # the bias add joins the conv
    assert layers[f"{net}/input_layer1"]["original_names"] == ["x"]


def test_our_encoder_layers_follow_the_dfc_naming(client, tiny_export_dir, meta):
    layers = _parse(client, tiny_export_dir, meta).get_hn()["layers"]
    net = meta["encoder"]["net_name"]
    by_type = {}
    for name, layer in layers.items():
        by_type.setdefault(layer["type"], []).append(name.split("/")[-1])
    assert by_type["conv"] == [f"conv{n}" for n in range(1, 2 + 6 * 4 + 1)]  # 2 stem + q,k,v,out,fc1,fc2 x 4
    assert by_type["reduce_sum_softmax"] == [f"reduce_sum_softmax{n}" for n in range(1, 5)]
    assert len(by_type["matmul"]) == 8  # scores and weighted values per block
    assert len(by_type["normalization"]) == 9 + 8  # layer norms + q/k scaling
    assert layers[f"{net}/conv6"]["original_names"][0] == "/blocks.0/attn/out/MatMul"
    assert layers[f"{net}/ew_add1"]["original_names"] == ["/Add_2"]  # the positional embedding add
    assert "Gemm" not in json.dumps(layers)


def test_model_zoo_command_forms_are_accepted(client):
    from hailo_sdk_client import model_script

    commands = model_script.parse(
        "model_optimization_config(globals, multiproc_policy=disabled)\n"
        "allocator_param(disable_row_per_cut=True)\n"
        "compilation_param(conv3, resources_allocation_strategy=manual_scs_selection)\n"
        "model_optimization_config(calibration, batch_size=1,\n"
        "                          calibset_size=32)  # wrapped over two lines\n"
        "performance_param(compiler_optimization_level=max)\n")
    assert [c[0] for c in commands] == ["model_optimization_config", "allocator_param", "compilation_param",
                                        "model_optimization_config", "performance_param"]
    assert commands[3][2] == {"batch_size": "1", "calibset_size": "32"} and commands[3][3] == 4
    with pytest.raises(model_script.ModelScriptError, match="never closes"):
        model_script.parse("model_optimization_config(calibration,\n")
