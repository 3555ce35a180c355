"""pipeline.host.image_plan: the Dockerfile target and base an image build would use, without Docker."""

import pytest

from pipeline.errors import ToolchainError
from pipeline.host import image_plan
from pipeline.host.image_plan import plan_image
from pipeline.tables import IMAGES

BOGUS = "unix:///nonexistent/docker.sock"
TEST_DOUBLE = "hailo_dataflow_compiler-3.31.0+testdouble-py3-none-any.whl"


@pytest.mark.parametrize("version, target, tensorflow", [
    ("3.31.0", "dfc-cuda11", "2.12"), ("3.33.1", "dfc-cuda12", "2.18"), ("5.0.0", "dfc-cuda11", "2.12"),
    ("5.1.0", "dfc-cuda12", "2.18"), ("5.3.0", "dfc-cuda12", "2.19.1"),
])
def test_plan_picks_the_target_by_dfc_version_without_docker(tmp_path, monkeypatch, version, target, tensorflow):
    monkeypatch.setenv("DOCKER_HOST", BOGUS)  # a dry run needs no daemon
    plan = plan_image(None, dfc_version=version, lock_path=tmp_path / "images.lock")
    assert (plan.kind, plan.target, plan.release.tensorflow) == (f"dfc{version[0]}", target, tensorflow)
    assert plan.base.tag == IMAGES[target].base_image
    text = plan.describe()
    assert text.splitlines()[0].startswith(f"target      {target} (DFC {version}:")
    assert f"base image  {IMAGES[target].base_image}" in text


def test_plan_reads_the_wheel_and_says_where_the_digest_comes_from(tmp_path):
    (tmp_path / TEST_DOUBLE).write_bytes(b"w")
    plan = plan_image(None, vendor_dir=tmp_path, lock_path=tmp_path / "images.lock")  # the only wheel's series
    assert (plan.kind, plan.target, plan.dfc_version) == ("dfc3", "dfc-cuda11", "3.31.0+testdouble")
    assert plan.base.ref == f"{IMAGES['dfc-cuda11'].base_image}@{IMAGES['dfc-cuda11'].base_image_digest}"
    assert f"digest      {IMAGES['dfc-cuda11'].base_image_digest} (from pipeline/dfc_images.py)" in plan.describe()
    assert str(tmp_path / TEST_DOUBLE) in plan.describe()
    unpinned = plan_image("dfc5", dfc_version="5.1.0", lock_path=tmp_path / "images.lock")
    assert not unpinned.base.pinned and "not pinned: `invoke image` asks the registry" in unpinned.describe()
    export = plan_image("export", lock_path=tmp_path / "images.lock")
    assert export.base.ref == f"{image_plan.EXPORT_BASE_IMAGE}@{image_plan.EXPORT_BASE_DIGEST}"
    given = plan_image("dfc5", dfc_version="5.1.0", base_image="my/cuda:12@sha256:abc")
    assert given.base.ref == "my/cuda:12@sha256:abc" and "as given by --base-image" in given.describe()


def test_plan_refuses_what_it_cannot_place(tmp_path):
    with pytest.raises(ToolchainError, match="DFC 3.32.0: which TensorFlow/CUDA stack DFC 3.32 needs is unknown"):
        plan_image(None, dfc_version="3.32.0")
    with pytest.raises(ToolchainError, match="DFC 5.1.0 is not a 3.x version, which dfc3 needs"):
        plan_image("dfc3", dfc_version="5.1.0")
    with pytest.raises(ToolchainError, match="Unknown image target 'gpu'.*export, dfc3, dfc5"):
        plan_image("gpu")
    with pytest.raises(ToolchainError, match="No image named, and .* holds no DFC wheel") as err:
        plan_image(None, vendor_dir=tmp_path)
    assert "--target" in err.value.fix and "--dfc-version" in err.value.fix
