"""pipeline.dfc_images: the DFC release -> image table and what it refuses."""

import pytest

from pipeline.dfc_images import DFC_RELEASES, IMAGES, dfc_major_minor, dfc_release, image_for_dfc
from pipeline.errors import ToolchainError


@pytest.mark.parametrize("version, image, tensorflow, python, cuda", [
    ("3.31.0", "dfc-cuda11", "2.12", "3.8-3.10", "11.8"),
    ("3.31.0+testdouble", "dfc-cuda11", "2.12", "3.8-3.10", "11.8"),
    ("3.25.0", "dfc-cuda11", "2.12", "3.8-3.10", "11.8"),
    ("3.33.1", "dfc-cuda12", "2.18", "3.10-3.12", "12.5.1"),
    ("5.0.0", "dfc-cuda11", "2.12", "3.8-3.10", "11.8"),
    ("5.1.0", "dfc-cuda12", "2.18", "3.10-3.12", "12.5.1"),
    ("5.2.0", "dfc-cuda12", "2.18", "3.10-3.12", "12.5.1"),
    ("5.3.0", "dfc-cuda12", "2.19.1", "3.10-3.12", "12.5.1"),
    ("5.4.0", "dfc-cuda12", "2.19.1", "3.10-3.12", "12.5.1"),
])
def test_each_dfc_release_maps_to_its_cuda_stack(version, image, tensorflow, python, cuda):
    release = dfc_release(version)
    assert (release.image, release.tensorflow, release.python) == (image, tensorflow, python)
    assert image_for_dfc(version).cuda == cuda
    assert image_for_dfc(version).python in ("3.10",)  # Ubuntu 22.04's Python fits both ranges


def test_the_cuda11_image_has_cudnn8_and_the_cuda12_image_cudnn9():
    assert (IMAGES["dfc-cuda11"].cudnn, IMAGES["dfc-cuda12"].cudnn) == ("8.9", "9")
    assert IMAGES["dfc-cuda11"].base_image == "nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04"
    assert IMAGES["dfc-cuda12"].base_image == "nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04"
    assert all(i.lazy_module_loading for i in IMAGES.values())  # CUDA >= 11.7 in both


def test_3_32_is_refused_as_unknown_with_what_to_do():
    with pytest.raises(ToolchainError) as err:
        image_for_dfc("3.32.0")
    assert err.value.problem == ("DFC 3.32.0: which TensorFlow/CUDA stack DFC 3.32 needs is unknown (no Hailo "
                                 "page we could find states it), so no image can be chosen.")
    assert "3.25-3.31, 3.33, 5.0, 5.1-5.2, 5.3-5.4" in err.value.fix and "DFC_RELEASES" in err.value.fix


@pytest.mark.parametrize("version", ["3.24.0", "3.34.0", "4.0.0", "5.5.0", "6.0.0"])
def test_versions_outside_the_table_are_refused(version):
    with pytest.raises(ToolchainError, match=rf"DFC {version} is not in the DFC release -> image table"):
        image_for_dfc(version)


def test_versions_must_look_like_versions():
    assert dfc_major_minor(" 3.33.1 ") == (3, 33)
    with pytest.raises(ToolchainError, match="'latest' is not a version number"):
        dfc_release("latest")


def test_rows_do_not_overlap_and_unknown_rows_say_so():
    rows = sorted(DFC_RELEASES, key=lambda r: r.first)
    assert all(a.last < b.first for a, b in zip(rows, rows[1:]))
    (unknown,) = [r for r in rows if r.image == "unknown"]
    assert (unknown.versions, unknown.tensorflow) == ("3.32", "unknown")


def test_jit_ceiling_derives_from_the_measured_warm_up():
    jit = IMAGES["dfc-cuda11"].gpu_code.jit
    assert (jit.compiled_mb, jit.cpu_minutes, jit.measured_wall_s) == (251, 12, 800)
    assert jit.ceiling_s == 30 * 60  # 2 x 800 s, rounded up to 5 minutes
    assert IMAGES["dfc-cuda12"].gpu_code.jit is None  # every listed card runs TF 2.18 natively
