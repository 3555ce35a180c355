"""vendor/: finding the user's DFC wheel, and refusing bad input clearly without writing anything."""

from __future__ import annotations

import os

import pytest

from pipeline.errors import ToolchainError
from pipeline.files import sha256_file
from pipeline.tables import SERIES
from pipeline.host.vendor import find_dfc_wheel, list_dfc_wheels

DFC3, DFC5 = SERIES["dfc3"], SERIES["dfc5"]
WHEEL3 = "hailo_dataflow_compiler-3.31.0-py3-none-linux_x86_64.whl"
WHEEL5 = "hailo_dataflow_compiler-5.1.0-py3-none-linux_x86_64.whl"


@pytest.fixture
def vendor(tmp_path):
    path = tmp_path / "vendor"
    path.mkdir()
    return path


def snapshot(folder):
    return sorted((p.name, p.stat().st_size) for p in folder.parent.rglob("*"))


def test_finds_the_wheel_for_each_major_and_reads_its_version(vendor):
    (vendor / WHEEL3).write_bytes(b"three")
    (vendor / WHEEL5).write_bytes(b"five")
    (vendor / "README.txt").write_text("other files are ignored")
    three, five = find_dfc_wheel(DFC3, vendor), find_dfc_wheel(DFC5, vendor)
    assert (three.path.name, three.version, three.major, three.is_test_double) == (WHEEL3, "3.31.0", 3, False)
    assert (five.version, five.major) == ("5.1.0", 5)
    assert [w.version for w in list_dfc_wheels(vendor)] == ["3.31.0", "5.1.0"]


def test_test_double_wheel_is_recognised(vendor):
    (vendor / "hailo_dataflow_compiler-3.31.0+testdouble-py3-none-any.whl").write_bytes(b"x")
    wheel = find_dfc_wheel(DFC3, vendor)
    assert (wheel.version, wheel.major, wheel.is_test_double) == ("3.31.0+testdouble", 3, True)


def test_sha256_is_checked_when_expected(vendor):
    path = vendor / WHEEL3
    path.write_bytes(b"the real bytes")
    digest = sha256_file(path)
    assert find_dfc_wheel(DFC3, vendor, expected_sha256=digest.upper()).sha256() == digest
    before = snapshot(vendor)
    with pytest.raises(ToolchainError) as err:
        find_dfc_wheel(DFC3, vendor, expected_sha256="0" * 64)
    assert str(err.value) == (
        f"{path} has sha256 {digest}, expected {'0' * 64}. "
        "Download the wheel again from Hailo's Developer Zone or correct the expected hash."
    )
    assert snapshot(vendor) == before


@pytest.mark.parametrize(
    "name",
    [
        "hailo_dataflow_compiler-3.31-py3-none-linux_x86_64.whl",  # version without patch
        "hailo_dataflow_compiler-3.31.0-py3-none-win_amd64.whl",  # wrong platform
        "hailo_dataflow_compiler-3.31.0.whl",
        "hailo_dataflow_compiler-latest-py3-none-linux_x86_64.whl",
    ],
)
def test_malformed_wheel_name_is_refused(vendor, name):
    (vendor / name).write_bytes(b"x")
    before = snapshot(vendor)
    with pytest.raises(ToolchainError) as err:
        find_dfc_wheel(DFC3, vendor)
    assert str(err.value).startswith(f"{name!r} is not a DFC wheel name.")
    assert "do not rename the file" in err.value.fix
    assert snapshot(vendor) == before


def test_two_wheels_for_one_major_are_refused(vendor):
    second = "hailo_dataflow_compiler-3.32.0-py3-none-linux_x86_64.whl"
    (vendor / WHEEL3).write_bytes(b"a")
    (vendor / second).write_bytes(b"b")
    (vendor / WHEEL5).write_bytes(b"c")
    before = snapshot(vendor)
    with pytest.raises(ToolchainError) as err:
        find_dfc_wheel(DFC3, vendor)
    assert str(err.value) == (
        f"Several DFC 3.x wheels in {vendor}/: {WHEEL3}, {second}. "
        "Keep exactly one per DFC major version; move the others out."
    )
    assert find_dfc_wheel(DFC5, vendor).version == "5.1.0"  # the other major is unaffected
    assert snapshot(vendor) == before


def test_missing_wheel_names_the_download(vendor):
    (vendor / WHEEL5).write_bytes(b"c")
    with pytest.raises(ToolchainError) as err:
        find_dfc_wheel(DFC3, vendor)
    assert err.value.problem == f"No DFC 3.x wheel in {vendor}/ (the dfc3 image needs one)."
    assert "hailo_dataflow_compiler-3.31.0-py3-none-linux_x86_64.whl" in err.value.fix


def test_missing_vendor_dir_is_no_wheel_not_a_crash(tmp_path):
    assert list_dfc_wheels(tmp_path / "absent") == []
    with pytest.raises(ToolchainError, match="No DFC 5.x wheel"):
        find_dfc_wheel(DFC5, tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_vendor_path_that_is_a_file_is_refused(tmp_path):
    not_a_dir = tmp_path / "vendor"
    not_a_dir.write_text("oops")
    with pytest.raises(ToolchainError) as err:
        find_dfc_wheel(DFC3, not_a_dir)
    assert str(err.value).startswith(f"{not_a_dir} is not a readable directory.")
    assert "--vendor" in err.value.fix


def test_unreadable_vendor_dir_is_refused(vendor, monkeypatch):
    (vendor / WHEEL3).write_bytes(b"a")
    if os.geteuid() != 0:
        vendor.chmod(0)  # a real permission problem when not root
        request_cleanup = True
    else:
        # root reads everything, so ask the same question the code asks, with the answer a user gets
        real_access = os.access
        monkeypatch.setattr(
            "pipeline.host.vendor.os.access", lambda p, mode: False if str(p) == str(vendor) else real_access(p, mode)
        )
        request_cleanup = False
    try:
        with pytest.raises(ToolchainError) as err:
            find_dfc_wheel(DFC3, vendor)
    finally:
        if request_cleanup:
            vendor.chmod(0o755)
    assert err.value.problem == f"{vendor} is not a readable directory."
    assert f"chmod u+rx {vendor}" in err.value.fix
