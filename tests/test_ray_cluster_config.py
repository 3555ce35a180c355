"""docker/ray-cluster.yaml: valid for Ray's cluster launcher, and consistent with the GPU gate."""

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
jsonschema = pytest.importorskip("jsonschema")
yaml = pytest.importorskip("yaml")  # a Ray dependency

from pipeline.host.matrix_plan import ACCELERATOR_LABEL, ACCELERATOR_RESOURCE_PREFIX, accelerator_verdict  # noqa: E402
from pipeline.tables import IMAGES  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "docker" / "ray-cluster.yaml"
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_the_example_cluster_config_follows_rays_schema(config):
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))


def test_rays_schema_catches_a_broken_config(config):
    broken = {**config, "available_node_types": {**config["available_node_types"],
                                                 "a100": {"resources": {"GPU": 1}}}}  # no node_config
    with pytest.raises(jsonschema.ValidationError, match="node_config"):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))


def test_gpu_nodes_carry_a_card_the_gate_supports_in_every_dfc_image(config):
    gpu_types = {name: t for name, t in config["available_node_types"].items() if t["resources"].get("GPU")}
    assert gpu_types, "the example rents GPU nodes"
    for name, node_type in gpu_types.items():
        card = node_type["labels"][ACCELERATOR_LABEL]
        assert node_type["resources"][f"{ACCELERATOR_RESOURCE_PREFIX}{card}"] == 1, name
        for image in IMAGES.values():
            verdict = accelerator_verdict(card, image)
            assert verdict.supported and verdict.basis.value == "native", (name, card, image.name)


def test_cpu_nodes_exist_and_the_head_runs_no_stage(config):
    types = config["available_node_types"]
    assert any(t["resources"].get("CPU", 0) > 0 and not t["resources"].get("GPU") for t in types.values())
    assert types[config["head_node_type"]]["resources"]["CPU"] == 0
    assert any("/mnt/matrix" in command for command in config["initialization_commands"])
