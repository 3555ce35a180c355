"""pipeline.host.watchdog: per-stage limits from the seed log, silence and deadline detection."""

import threading
import time

import pytest

from pipeline.host import watchdog
from pipeline.host.watchdog import StallWatchdog, default_stall_limit


def test_limits_per_stage_kind_cover_the_seed_log_silences():
    # the mapper announces "time per context: 59m 59s": compile must tolerate an hour of silence
    assert default_stall_limit("encoder-compile") == watchdog.COMPILE_STALL_LIMIT_S > 59 * 60 + 59
    # QAT ran 13m 27s in the seed log
    assert default_stall_limit("decoder-optimize") == watchdog.OPTIMIZE_STALL_LIMIT_S > 13.5 * 60
    assert default_stall_limit("encoder-parse") == watchdog.PARSE_STALL_LIMIT_S
    assert default_stall_limit("export") == watchdog.EXPORT_STALL_LIMIT_S
    assert default_stall_limit("dfc-cuda11-gpu-hang-probe") == watchdog.DEFAULT_STALL_LIMIT_S


def _fired_counter():
    calls = []
    return calls, lambda: calls.append(time.monotonic())


def test_silence_longer_than_the_limit_fires_once():
    calls, on_stall = _fired_counter()
    with StallWatchdog(0.3, on_stall) as dog:
        time.sleep(1.0)
    assert dog.stalled and not dog.timed_out
    assert len(calls) == 1


def test_output_keeps_the_stage_alive():
    calls, on_stall = _fired_counter()
    with StallWatchdog(0.5, on_stall) as dog:
        for _ in range(12):
            time.sleep(0.1)
            dog.feed()
    assert not dog.fired and calls == []


def test_deadline_fires_even_while_output_flows():
    calls, on_stall = _fired_counter()
    with StallWatchdog(5.0, on_stall, deadline_s=0.5) as dog:
        for _ in range(15):
            time.sleep(0.1)
            dog.feed()
    assert dog.timed_out and not dog.stalled and len(calls) == 1


def test_on_stall_runs_off_the_callers_thread():
    seen = []
    with StallWatchdog(0.2, lambda: seen.append(threading.current_thread().name)):
        time.sleep(0.8)
    assert seen == ["stall-watchdog"]


def test_limit_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        StallWatchdog(0, lambda: None)


def test_growth_of_the_progress_source_counts_as_output():
    size = [0]
    grown = []

    def progress():
        size[0] += 100  # grows on every measurement
        return size[0]

    with StallWatchdog(1.5, lambda: None, progress=progress, on_growth=lambda: grown.append(1)) as dog:
        time.sleep(3.5)
    assert not dog.fired and dog.grew and grown == [1]  # on_growth once


def test_a_progress_source_that_stays_put_does_not_keep_a_silent_stage_alive():
    with StallWatchdog(0.5, lambda: None, progress=lambda: 4096) as dog:
        time.sleep(1.5)
    assert dog.stalled and not dog.grew


def test_directory_size_counts_files_below_and_missing_is_zero(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "m.bin").write_bytes(b"x" * 10)
    (tmp_path / "n.bin").write_bytes(b"y" * 5)
    assert watchdog.directory_size(tmp_path) == 15
    assert watchdog.directory_size(tmp_path / "missing") == 0
