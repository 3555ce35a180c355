"""pipeline/dfc/timeline.py: the DFC log parser, on the real seed log and on edge cases."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.dfc import timeline

SEED_LOG = Path(__file__).parent / "fixtures" / "seed-dfc-conversion-log.txt"


@pytest.fixture(scope="module")
def seed():
    return timeline.parse_log_file(SEED_LOG)


def _event(result, name):
    matches = [e for e in result["events"] if e["name"] == name]
    assert matches, f"no event {name!r} in {[e['name'] for e in result['events']]}"
    return matches[0]


def test_seed_log_snr_per_output_layer(seed):
    assert seed["summary"]["snr_db"] == {"whisper_tiny_encoder_10s_hailo_final/output_layer1": 9.179}


def test_seed_log_context_partition_is_the_applied_one(seed):
    # The search finds 7, then 8, then 9 contexts; "Applying selected partition to 9 contexts" wins.
    assert seed["summary"]["contexts"] == 9
    assert seed["summary"]["compile_flow"] == "multi-context"
    assert seed["summary"]["partitioner"] == {"iterations": 362, "duration_s": 1258.302}
    assert _event(seed, "Partitioner")["duration_s"] == 1258.302


def test_seed_log_algorithm_durations(seed):
    durations = seed["summary"]["algorithm_durations_s"]
    assert durations["Statistics Collector"] == 599.14
    assert durations["LayerNorm Decomposition"] == 284.9
    assert durations["Mixed Precision"] == 0.72
    assert durations["Quantization-Aware Fine-Tuning"] == 807.26
    assert durations["Layer Noise Analysis"] == 329.3
    assert seed["summary"]["optimization_s"] == pytest.approx(sum(durations.values()))
    stats = _event(seed, "Statistics Collector")
    assert stats["kind"] == "algorithm" and stats["details"]["status"] == "done"
    assert stats["details"]["calibration_entries"] == 1024
    assert stats["details"]["progress"]["Calibration"] == {"done": 1024, "total": 1024, "elapsed_s": 595.0}


def test_seed_log_finetune_epoch_and_user_interrupt(seed):
    qat = _event(seed, "Quantization-Aware Fine-Tuning")
    details = qat["details"]
    assert details["finetune_entries"] == 3340
    assert (details["epoch"], details["epochs"]) == (1, 6)
    assert (details["steps_done"], details["steps_per_epoch"]) == (24, 417)
    assert details["epoch_eta_s"] == 2 * 3600 + 18 * 60 + 40
    assert details["warnings"] == ["Training cut by the user, proceed at your own peril"]
    assert seed["summary"]["warnings"] == ["Training cut by the user, proceed at your own peril"]
    assert seed["summary"]["finetune_entries"] == 3340 and seed["summary"]["calibration_entries"] == 1024


def test_seed_log_parse_compile_and_device(seed):
    translation = _event(seed, "Translation")
    assert translation["duration_s"] == 1.0 and translation["details"]["status"] == "done"
    assert seed["summary"]["device"] == "cpu"
    skipped = [e["name"] for e in seed["events"] if e["details"].get("status") == "skipped"]
    assert skipped == ["MatmulDecompose", "Finetune encoding", "Bias Correction", "Adaround"]
    options = [e["duration_s"] for e in seed["events"] if e["name"] == "Build optimization options"]
    assert options == [11.862, 751.782]
    assert seed["summary"]["utilization"]["whisper_tiny_encoder_10s_hailo_final_context_0"] == {
        "control": 57.8, "compute": 27.7, "memory": 39.1}
    assert len(seed["summary"]["utilization"]) == 9
    assert [Path(p).name for p in seed["summary"]["saved_hars"]] == [
        "whisper_tiny_encoder_10s_hailo_final.har", "whisper_tiny_encoder_10s_hailo_final_optimized.har"]
    # Model Optimization says "is done" without a time; the compile flow never reports done.
    assert _event(seed, "Model Optimization")["details"]["status"] == "done"
    assert _event(seed, "Hailo allocation and compilation flow")["details"]["status"] == "unfinished"


@pytest.mark.parametrize("text, seconds", [("00:09:59.14", 599.14), ("04:36", 276.0), ("2:18:40", 8320.0),
                                           ("00:00:00.00", 0.0)])
def test_clock_to_seconds(text, seconds):
    assert timeline.clock_to_seconds(text) == seconds


@pytest.mark.parametrize("text, seconds", [("20m 58s 302ms", 1258.302), ("11s 862ms", 11.862),
                                           ("59m 59s", 3599.0), ("1h 2m", 3720.0), ("0s 5ms", 0.005)])
def test_units_to_seconds(text, seconds):
    assert timeline.units_to_seconds(text) == seconds


def test_units_to_seconds_rejects_text_without_duration():
    with pytest.raises(ValueError, match="no duration"):
        timeline.units_to_seconds("soon")


def test_colour_codes_and_carriage_return_progress_are_understood():
    log = ("\x1b[32m[info]\x1b[0m Starting Statistics Collector\n"
           "Calibration:  50%|#####     | 8/16 [00:01<00:01, 8.0entries/s]\r"
           "Calibration: 100%|##########| 16/16 [00:02<00:00, 8.0entries/s]\n"
           "\x1b[32m[info]\x1b[0m Model Optimization Algorithm Statistics Collector is done "
           "(completion time is 00:00:02.50)\n"
           "[error] Something broke\n")
    result = timeline.parse_log(log)
    stats = result["events"][0]
    assert stats["duration_s"] == 2.5
    assert stats["details"]["progress"]["Calibration"]["done"] == 16  # the last redraw wins
    assert result["summary"]["errors"] == ["Something broke"]


def test_a_log_cut_short_shows_where_it_stopped():
    result = timeline.parse_log("[info] Starting Model Optimization\n[info] Starting Statistics Collector\n")
    assert [(e["name"], e["details"]["status"]) for e in result["events"]] == [
        ("Model Optimization", "unfinished"), ("Statistics Collector", "unfinished")]


def test_unknown_lines_are_ignored():
    result = timeline.parse_log("hello\n[info] nothing to see\n\n   \n")
    assert result["events"] == [] and result["summary"]["snr_db"] == {}


def test_cli_prints_the_timeline_as_json():
    done = subprocess.run([sys.executable, "-m", "pipeline.dfc.timeline", str(SEED_LOG)],
                          capture_output=True, text=True, check=True)
    printed = json.loads(done.stdout)
    assert printed["summary"]["snr_db"] == {"whisper_tiny_encoder_10s_hailo_final/output_layer1": 9.179}
    assert printed["summary"]["contexts"] == 9


def test_cli_summary_only_and_missing_file(tmp_path, capsys):
    assert timeline.main([str(SEED_LOG), "--summary-only"]) == 0
    assert json.loads(capsys.readouterr().out)["algorithm_durations_s"]["Statistics Collector"] == 599.14
    assert timeline.main([str(tmp_path / "nope.log")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_capture_console_tees_python_native_and_child_output(tmp_path, capfd):
    log = tmp_path / "captured.log"
    with timeline.capture_console(log):
        print("[info] from python", flush=True)
        os.write(2, b"from native stderr\n")
        subprocess.run([sys.executable, "-c", "print('from a child process')"], check=True)
    captured = log.read_text()
    for text in ("[info] from python", "from native stderr", "from a child process"):
        assert text in captured
    console = capfd.readouterr()
    assert "[info] from python" in console.out and "from native stderr" in console.err
    print("after capture")  # descriptors are restored
    assert "after capture" not in log.read_text()


def test_saved_hars_name_the_final_file_not_the_temporary_one():
    summary = timeline.parse_log("Saved HAR to: /b/dfc/encoder/.net_optimized.partial-4242.har\n")["summary"]
    assert summary["saved_hars"] == ["/b/dfc/encoder/net_optimized.har"]
