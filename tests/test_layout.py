"""pipeline/layout.py: every build-directory path, once."""

from pathlib import Path

from pipeline.layout import REPO_ROOT, Layout, har_path


def test_the_build_directory_tree():
    lay = Layout(Path("/b"))
    assert lay.export_json == Path("/b/export/export.json")
    assert lay.encoder_calib == Path("/b/calib/encoder_calib.npy")
    assert lay.encoder_calib_manifest == Path("/b/calib/encoder_calib.manifest.json")
    assert lay.decoder_calib == Path("/b/calib/decoder_calib.npz")
    assert lay.download_dir == Path("/b/calib/download")
    assert lay.dfc_result("decoder", "optimize") == Path("/b/dfc/decoder/optimize.json")
    assert lay.hef("encoder", "tiny_enc") == Path("/b/dfc/encoder/tiny_enc.hef")
    assert lay.used_model_script("encoder", "tiny_enc") == Path("/b/dfc/encoder/tiny_enc.alls")
    assert lay.hf_cache == Path("/b/.cache/huggingface")
    assert (lay.logs, lay.bundle_dir, lay.manifest, lay.report) == (
        Path("/b/logs"), Path("/b/bundle"), Path("/b/manifest.json"), Path("/b/report.md"))


def test_each_model_reads_its_own_calibration_set():
    lay = Layout(Path("/b"))
    assert lay.calib_set("encoder") == lay.encoder_calib
    assert lay.calib_set("decoder") == lay.decoder_calib


def test_the_har_names_follow_hailo_whisper():
    assert [har_path(Path("/o"), "net", step).name for step in ("parse", "optimize", "compile")] == [
        "net.har", "net_optimized.har", "net_compiled.har"]
    assert Layout(Path("/b")).har("decoder", "net", "optimize") == Path("/b/dfc/decoder/net_optimized.har")


def test_a_layout_made_from_a_string_is_the_same_layout():
    assert Layout("/b") == Layout(Path("/b"))


def test_repo_root_is_this_checkout():
    assert (REPO_ROOT / "pipeline" / "layout.py").is_file() and (REPO_ROOT / "tasks.py").is_file()
