"""pipeline/host/preflight.py: every blocker at once, before any long work."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from pipeline.dfc.model_scripts import resolve_model_script
from pipeline.errors import ToolchainError
from pipeline.host.build_options import BuildOptions
from pipeline.host.preflight import preflight
from pipeline.layout import Layout

DFC_DOUBLE = Path(__file__).resolve().parent / "dfc_double"


def test_preflight_reports_every_blocker_at_once_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    no_audio = BuildOptions(cpu=True, no_docker=True, out=tmp_path / "out", vendor_dir=tmp_path / "vendor")
    with pytest.raises(ToolchainError, match="calibration audio: none given") as err:
        preflight(no_audio, no_audio.spec, Layout(no_audio.build_dir))
    assert "--calib DIR" in str(err.value) and "--calib-download" in str(err.value)
    options = BuildOptions(
        model=str(tmp_path / "no-such-model"),
        calib_dir=tmp_path / "no-such-audio",
        model_script=tmp_path / "missing.alls",
        calib_size=3,
        cpu=True,
        no_docker=True,
        out=tmp_path / "out",
        vendor_dir=tmp_path / "vendor",
    )
    with pytest.raises(ToolchainError) as err:
        preflight(options, options.spec, Layout(options.build_dir))
    text = str(err.value)
    assert "blocker(s)" in text
    for needle in ("no-such-model is not a folder", "no-such-audio is not a folder",
                   "missing.alls does not exist"):
        assert needle in text, needle
    if importlib.util.find_spec("hailo_sdk_client") is None:  # the doctor's check, natively
        assert "hailo_sdk_client is not installed" in text
    assert not (tmp_path / "out").exists()


def test_preflight_refuses_a_calib_size_below_the_scripts_needs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(DFC_DOUBLE))
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "a.wav").write_bytes(b"RIFF")
    options = BuildOptions(calib_dir=audio, calib_size=3, profile="quick", cpu=True, no_docker=True,
                           out=tmp_path / "out", vendor_dir=tmp_path / "vendor")
    needed = resolve_model_script("tiny", "hailo8l", "encoder", "quick").needs.entries
    with pytest.raises(ToolchainError, match=f"--calib-size 3 is below the {needed} entries"):
        preflight(options, options.spec, Layout(options.build_dir))


def test_an_unreachable_download_stops_the_build_before_the_export_naming_calib_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(DFC_DOUBLE))

    def offline(url):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    options = BuildOptions(calib_download=True, cpu=True, no_docker=True, out=tmp_path / "out",
                           vendor_dir=tmp_path / "vendor", download_probe=offline)
    with pytest.raises(ToolchainError) as err:
        preflight(options, options.spec, Layout(options.build_dir))
    text = str(err.value)
    assert "openslr.org" in text and "cannot be reached" in text
    assert "--calib DIR" in text and "make hef CALIB=DIR" in text
    assert not (tmp_path / "out").exists()


def test_each_blocker_is_listed_once(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(DFC_DOUBLE))
    scripts = tmp_path / "scripts"
    scripts.mkdir()  # neither encoder.alls nor decoder.alls: the same problem for both models
    options = BuildOptions(calib_dir=tmp_path / "none", model_script=scripts, cpu=True, no_docker=True,
                           out=tmp_path / "out", vendor_dir=tmp_path / "vendor")
    with pytest.raises(ToolchainError) as err:
        preflight(options, options.spec, Layout(options.build_dir))
    lines = [line for line in str(err.value).splitlines() if line.startswith("  - ")]
    assert len(lines) == len(set(lines))
