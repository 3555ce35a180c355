"""Manifest and report: versions, SNR warnings, rehearsal banner, report contents."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pipeline.host.manifest import dfc_version_of, is_rehearsal
from pipeline.host.manifest import (
    LOW_SNR_DB,
    NOT_DEPLOYABLE,
    git_commit,
    library_versions,
    quality_warnings,
    render_report,
)

REPO = Path(__file__).resolve().parent.parent


def _results(snr_encoder, version="3.31.0"):
    return {
        "encoder": {"parse": {"dfc_version": version}, "optimize": {"dfc_version": version, "snr_db": snr_encoder},
                    "compile": {"dfc_version": version}},
        "decoder": {"parse": {}, "optimize": {"dfc_version": version, "snr_db": {}}, "compile": {}},
    }


def test_low_snr_is_warned_with_the_threshold_named():
    warnings = quality_warnings({}, _results({"whisper/output_layer1": 9.179, "whisper/output_layer2": 25.0}))
    low = [w for w in warnings if "dB" in w]
    assert len(low) == 1
    assert "output_layer1" in low[0] and "9.18 dB" in low[0] and f"below {LOW_SNR_DB:g} dB" in low[0]
    # The decoder ran optimize without noise analysis: that is said too.
    assert any(w.startswith("decoder: no SNR measured") for w in warnings)


def test_dfc_version_and_rehearsal_come_from_the_stage_results():
    assert dfc_version_of(_results({})) == "3.31.0"
    assert dfc_version_of({}, None, "3.30.0") == "3.30.0"
    assert not is_rehearsal(_results({}), False)
    assert is_rehearsal(_results({}, version="3.31.0+testdouble"), False)
    assert is_rehearsal(_results({}), True)  # the wheel in vendor/ is the double
    assert is_rehearsal({}, False, "3.31.0+testdouble")


def test_library_versions_prefer_what_export_recorded():
    recorded = library_versions({"versions": {"torch": "2.13.0", "transformers": "5.0.0"}}, native=False)
    assert recorded["torch"] == "2.13.0" and recorded["_source"]["torch"] == "export.json"
    assert recorded["onnx"] is None and recorded["_source"]["onnx"] == "not recorded by the export stage"
    native = library_versions({}, native=True)
    import importlib.metadata

    assert native["onnx"] == importlib.metadata.version("onnx")
    assert native["_source"]["onnx"] == "native environment"


def test_git_commit_is_this_checkout():
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert git_commit(REPO)["commit"] == (done.stdout.strip() if done.returncode == 0 else None)
    assert git_commit(Path("/"))["commit"] is None


def _manifest(deployable: bool):
    return {
        "deployable": deployable,
        "not_deployable_reason": None if deployable else NOT_DEPLOYABLE,
        "created_at": "2026-11-24T22:00:00+00:00",
        "build": {"variant": "tiny", "arch": "hailo8l", "seconds": 2.0, "seq_len": 8, "frames": 200,
                  "encoder_net": "enc_net", "decoder_net": "dec_net", "profile": "quick", "model_script": None,
                  "mode": "native", "cpu": True, "build_dir": "/b"},
        "versions": {"repo": {"commit": "abc123", "dirty": True}, "dfc": "3.31.0", "dfc_test_double": not deployable},
        "stages": {"export": {"finished_at": "2026-11-24T22:00:00+00:00", "duration_s": 12.5},
                   "encoder-optimize": {"finished_at": "2026-11-24T22:10:00+00:00", "duration_s": 3725.0},
                   "bundle": None},
        "parity": {"encoder_torch_vs_onnx": 1.5e-06, "tolerances": {"encoder_states": 1e-4, "logits": 1e-3}},
        "dfc": {"encoder": {"snr_db": {"enc_net/output_layer1": 9.179}}, "decoder": {"snr_db": {}}},
        "warnings": ["encoder output enc_net/output_layer1: SNR 9.18 dB is below 10 dB"],
        "hefs": {"encoder": {"bundle_path": "bundle/enc_net.hef", "size_bytes": 10, "sha256": "f" * 64}},
    }


def test_report_lists_stages_parity_snr_warnings_and_files():
    report = render_report(_manifest(deployable=True))
    assert "NOT DEPLOYABLE" not in report
    assert "| export | 2026-11-24T22:00:00+00:00 | 12.5 s |" in report
    assert "| encoder-optimize | 2026-11-24T22:10:00+00:00 | 1 h 02 min |" in report
    assert "| bundle | - | - |" in report
    assert "| encoder_torch_vs_onnx | 1.5e-06 |" in report
    assert "Tolerances the export enforced: encoder_states ≤ 0.0001, logits ≤ 0.001." in report
    assert "| encoder | enc_net/output_layer1 | 9.18 ⚠ |" in report
    assert "- encoder output enc_net/output_layer1: SNR 9.18 dB is below 10 dB" in report
    assert "`bundle/enc_net.hef`" in report and "f" * 64 in report
    assert "abc123 (with local changes)" in report


def test_rehearsal_report_says_not_deployable_first():
    report = render_report(_manifest(deployable=False))
    assert report.splitlines()[2] == f"> **{NOT_DEPLOYABLE}**"
    assert "(TEST DOUBLE)" in report
