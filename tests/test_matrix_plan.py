"""The matrix plan: cells from the tables, each cell's stage graph, the GPU gate over Ray accelerator types."""

import pytest

from pipeline.errors import ToolchainError
from pipeline.host.matrix_plan import (Cell, NodeInfo, accelerator_verdict, cell_stages, dfc_image_for, make_cells,
                                       needs_gpu, plan_gpus, stage_upstream)
from pipeline.host.stage_cache import STAGE_ORDER
from pipeline.tables import IMAGES

CUDA11, CUDA12 = IMAGES["dfc-cuda11"], IMAGES["dfc-cuda12"]


def _node(name: str, kind=None, gpus=0.0) -> NodeInfo:
    return NodeInfo(node_id=f"id-{name}", address=f"10.0.0.{len(name)}", cpus=4.0, gpus=gpus, accelerator_type=kind)


def test_cells_are_every_variant_for_every_arch_in_order():
    assert make_cells("tiny, base", "hailo8l,hailo10h") == (
        Cell("tiny", "hailo8l"), Cell("tiny", "hailo10h"), Cell("base", "hailo8l"), Cell("base", "hailo10h"))
    assert Cell("tiny.en", "hailo8").name == "tiny.en-hailo8"


@pytest.mark.parametrize("variants, archs, message", [
    ("tiny,small", "hailo8l", "Unknown variant 'small'"),
    ("tiny", "hailo9", "Unknown arch 'hailo9'"),
    ("tiny,tiny", "hailo8l", "A variant is named twice"),
    ("", "hailo8l", "No variant given"),
])
def test_unknown_or_repeated_names_fail_with_the_choices(variants, archs, message):
    with pytest.raises(ToolchainError, match=message) as err:
        make_cells(variants, archs)
    assert "tiny" in err.value.fix or "hailo8l" in err.value.fix or "once" in err.value.fix


def test_a_full_cell_runs_every_stage_of_a_build():
    assert cell_stages() == STAGE_ORDER
    assert stage_upstream("decoder-optimize", STAGE_ORDER) == ("decoder-parse", "decoder-calib")


def test_one_model_runs_its_chain_and_the_calibration_it_needs_but_no_bundle():
    assert cell_stages(("decoder",)) == ("export", "encoder-calib", "decoder-calib", "decoder-parse",
                                         "decoder-optimize", "decoder-compile")
    assert cell_stages(("encoder",)) == ("export", "encoder-calib", "encoder-parse", "encoder-optimize",
                                         "encoder-compile")
    with pytest.raises(ToolchainError, match="Unknown model"):
        cell_stages(("joiner",))


def test_only_optimize_asks_for_a_gpu():
    assert [s for s in STAGE_ORDER if needs_gpu(s)] == ["encoder-optimize", "decoder-optimize"]


def test_without_a_wheel_the_gate_judges_for_the_series_oldest_release(tmp_path):
    assert dfc_image_for("hailo8l", tmp_path) is CUDA11  # DFC 3.31
    assert dfc_image_for("hailo10h", tmp_path) is CUDA11  # DFC 5.0


def test_the_gate_judges_ray_accelerator_types_like_cards():
    assert accelerator_verdict("A100", CUDA11).supported
    assert accelerator_verdict("T4", CUDA12).supported
    l4 = accelerator_verdict("L4", CUDA11)
    assert not l4.supported and l4.basis.value == "field report" and "hung endlessly on an L4" in l4.reason
    h100 = accelerator_verdict("H100", CUDA11)
    assert h100.supported and h100.basis.value == "JIT"  # only PTX in TF 2.12: compiled once
    assert accelerator_verdict("H100", CUDA12).basis.value == "native"
    assert not accelerator_verdict("B200", CUDA11).supported
    odd = accelerator_verdict("Quantum-X1", CUDA11)
    assert not odd.supported and "not in our table" in odd.reason


def test_optimize_may_land_only_on_the_supported_types_present():
    nodes = [_node("cpu"), _node("a100", "A100", 8), _node("t4", "T4", 1), _node("l4", "L4", 1)]
    placement = plan_gpus("hailo8l", nodes, CUDA11)
    assert placement.allowed_types == ("A100", "T4")
    assert placement.label_selector == {"ray.io/accelerator-type": "in(A100,T4)"}
    assert len(placement.refused) == 1 and "NVIDIA L4" in placement.refused[0]


def test_a_cluster_without_a_supported_card_is_refused_with_the_gates_reason():
    placement = plan_gpus("hailo8l", [_node("cpu"), _node("l4", "L4", 4), _node("b200", "B200", 8)], CUDA11)
    assert placement.allowed_types == ()
    err = placement.refusal()
    assert "No supported GPU in the cluster for hailo8l (the dfc-cuda11 image, TensorFlow 2.12" in err.problem
    assert "hung endlessly on an L4" in err.problem and "B200" in err.problem
    assert "--cpu" in err.fix
    assert "has no GPU node" in plan_gpus("hailo10h", [_node("cpu")], CUDA12).refusal().problem
