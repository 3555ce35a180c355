"""calib/encoder_set.py: windows, layout, determinism, manifest, bad input, never a half-written set."""

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

import calib.encoder_set as encoder_set
from calib.audio import load_audio
from calib.encoder_set import EncoderSetConfig, build_encoder_set, manifest_path_for
from calib.mel import log_mel
from pipeline.errors import ToolchainError


def _config(audio_dir, out, **kwargs):
    kwargs.setdefault("seconds", 2.0)
    kwargs.setdefault("size", 1000)
    kwargs.setdefault("workers", 1)
    kwargs.setdefault("progress", False)
    return EncoderSetConfig(audio_dir=audio_dir, out=out, **kwargs)


def _expected_windows(speech_dir, seconds=2.0):
    """All non-silent windows of the speech files, as the set should contain them (any order)."""
    win = int(seconds * 16000)
    windows = []
    for path in sorted(speech_dir.glob("*.wav")):
        audio = load_audio(path)
        for start in range(0, len(audio), win):
            chunk = np.zeros(win, dtype=np.float32)
            part = audio[start : start + win]
            chunk[: len(part)] = part
            if np.abs(chunk).max() >= 1e-4:
                windows.append(chunk)
    return windows


def _only_outputs(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_every_window_becomes_one_nhwc_entry_with_the_whisper_mel(speech_dir, tmp_path):
    out = tmp_path / "enc.npy"
    result = build_encoder_set(_config(speech_dir, out))
    data = np.load(out)
    expected = _expected_windows(speech_dir)
    assert data.dtype == np.float32
    assert data.shape == (len(expected), 1, 200, 80) == result.shape
    # Each entry is the Whisper mel of one (zero-padded) window; match them up regardless of order.
    mels = log_mel(np.stack(expected))
    for entry in data[:, 0]:
        assert min(np.abs(entry - m).max() for m in mels) < 1e-5
    # The last window of a file is padded: some entry ends in the constant floor of silence.
    assert any(np.all(entry[-20:] == entry[-1, 0]) for entry in data[:, 0])


def test_same_inputs_give_the_same_bytes_and_the_seed_changes_only_the_order(speech_dir, tmp_path):
    a, b, c = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.npy"
    build_encoder_set(_config(speech_dir, a, seed=7))
    build_encoder_set(_config(speech_dir, b, seed=7, workers=2))  # worker count does not matter
    build_encoder_set(_config(speech_dir, c, seed=8))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    sort = lambda x: x[np.lexsort(x.reshape(len(x), -1).T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(sort(np.load(a)), sort(np.load(c)))


def test_size_takes_a_seeded_subset_and_the_manifest_describes_the_set(speech_dir, tmp_path):
    out = tmp_path / "calib" / "encoder_calib.npy"
    result = build_encoder_set(_config(speech_dir, out, size=5, seed=3))
    data = np.load(out)
    manifest = json.loads(manifest_path_for(out).read_text())
    assert manifest_path_for(out).name == "encoder_calib.manifest.json"
    assert manifest == result.manifest
    assert data.shape == (5, 1, 200, 80)
    assert manifest["shape"] == [5, 1, 200, 80] and manifest["count"] == 5
    assert manifest["requested_size"] == 5 and manifest["seed"] == 3 and manifest["seconds"] == 2.0
    assert manifest["layout"] == "NHWC" and manifest["dtype"] == "float32"
    assert manifest["source_files"] == 4 and manifest["skipped"] == []
    assert len(manifest["source_list_sha256"]) == 64
    assert manifest["windows_available"] == sum(math.ceil(len(load_audio(p)) / 32000) for p in speech_dir.glob("*.wav"))
    assert manifest["min"] == pytest.approx(float(data.min()))
    assert manifest["max"] == pytest.approx(float(data.max()))
    assert manifest["mean"] == pytest.approx(float(data.mean(dtype=np.float64)), abs=1e-6)
    assert _only_outputs(out.parent) == ["encoder_calib.manifest.json", "encoder_calib.npy"]


@pytest.fixture
def messy_dir(speech_dir, tmp_path):
    """The speech plus every kind of bad or unusual input, in a LibriSpeech-like tree."""
    folder = tmp_path / "messy"
    good = folder / "84" / "121123"
    good.mkdir(parents=True)
    for wav in sorted(speech_dir.glob("*.wav")):
        shutil.copy(wav, good / wav.name)
    subprocess.run(["sox", str(speech_dir / "utt1.wav"), "-r", "22050", "-c", "2", "-b", "24",
                    str(good / "utt1_stereo.flac")], check=True)
    (good / "84-121123.trans.txt").write_text("not audio\n")
    (folder / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage" * 10)
    (folder / "empty.flac").write_bytes(b"")
    soundfile.write(folder / "zero_length.wav", np.zeros(0, dtype=np.int16), 16000)
    soundfile.write(folder / "silent.wav", np.zeros(3 * 16000, dtype=np.int16), 16000)
    # A valid header followed by truncated, undecodable FLAC frames.
    flac = (good / "utt3.wav").with_suffix(".flac")
    subprocess.run(["sox", str(good / "utt3.wav"), str(folder / "truncated.flac")], check=True)
    raw = (folder / "truncated.flac").read_bytes()
    (folder / "truncated.flac").write_bytes(raw[:8192] + bytes(len(raw) - 8192))
    assert not flac.exists()
    return folder


def test_bad_files_are_counted_skips_with_reasons(messy_dir, tmp_path):
    out = tmp_path / "enc.npy"
    result = build_encoder_set(_config(messy_dir, out, workers=2))  # skips travel back from worker processes
    reasons = {s["path"]: s["reason"] for s in result.manifest["skipped"]}
    assert reasons["corrupt.wav"].startswith("unreadable: ")
    assert reasons["empty.flac"].startswith("unreadable: ")
    assert reasons["zero_length.wav"] == "zero-length: no audio samples"
    assert reasons["silent.wav"].startswith("silent: ")
    assert reasons["truncated.flac"].startswith(("corrupt: ", "silent: "))  # zeroed FLAC frames: error or silence
    assert set(reasons) == {"corrupt.wav", "empty.flac", "zero_length.wav", "silent.wav", "truncated.flac"}
    # The good files (including the 22.05 kHz stereo 24-bit FLAC) all made it.
    expected = len(_expected_windows(messy_dir / "84" / "121123")) + len(
        _expected_windows_from(load_audio(messy_dir / "84" / "121123" / "utt1_stereo.flac")))
    assert result.count == expected
    assert np.load(out).shape[0] == expected
    assert result.manifest["source_files"] == 10


def _expected_windows_from(audio, win=32000):
    return [audio[s : s + win] for s in range(0, len(audio), win) if np.abs(audio[s : s + win]).max() >= 1e-4]


def test_a_folder_without_audio_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ToolchainError, match=r"No audio files under .*calib download"):
        build_encoder_set(_config(tmp_path, tmp_path / "out" / "enc.npy"))
    assert _only_outputs(tmp_path / "out") == []


def test_only_unusable_files_fail_with_the_reasons(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "silent.wav", np.zeros(16000, dtype=np.int16), 16000)
    (audio / "broken.ogg").write_bytes(b"OggS broken")
    out_dir = tmp_path / "out"
    with pytest.raises(ToolchainError, match=r"Only 0 usable 2-second .*skipped: 1 silent, 1 unreadable"):
        build_encoder_set(_config(audio, out_dir / "enc.npy"))
    assert _only_outputs(out_dir) == []


@pytest.mark.parametrize("extra", [1, 100])  # +1: found out after decoding (silent windows); +100: from headers
def test_fewer_usable_entries_than_min_entries_fails_and_writes_nothing(speech_dir, tmp_path, extra):
    available = len(_expected_windows(speech_dir))
    need = available + extra
    out_dir = tmp_path / "out"
    with pytest.raises(ToolchainError, match=rf"Only \d+ usable 2-second .* at least {need} are needed\. "
                                              r"Add more speech audio") as err:
        build_encoder_set(_config(speech_dir, out_dir / "enc.npy", size=need + 10, min_entries=need))
    if extra == 1:
        assert f"Only {available} usable" in str(err.value)
    assert _only_outputs(out_dir) == []


def test_less_audio_than_size_stops_at_what_is_there(speech_dir, tmp_path):
    available = len(_expected_windows(speech_dir))
    result = build_encoder_set(_config(speech_dir, tmp_path / "enc.npy", size=500, min_entries=available))
    assert result.count == available and result.manifest["requested_size"] == 500
    assert np.load(tmp_path / "enc.npy").shape[0] == available  # no repeated windows
    assert _only_outputs(tmp_path) == ["enc.manifest.json", "enc.npy"]


def test_a_failure_mid_write_leaves_no_output_and_no_partial(speech_dir, tmp_path, monkeypatch):
    out = tmp_path / "enc.npy"
    out.write_bytes(b"previous run")  # an older set stays as it was
    real_task, calls = encoder_set._mel_task, []

    def failing_task(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_task(*args)

    monkeypatch.setattr(encoder_set, "_mel_task", failing_task)
    with pytest.raises(OSError, match="No space left"):
        build_encoder_set(_config(speech_dir, out, windows_per_task=1))
    assert len(calls) == 3
    assert _only_outputs(tmp_path) == ["enc.npy"] and out.read_bytes() == b"previous run"


def test_a_disk_too_small_is_a_clear_error(speech_dir, tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(encoder_set.os, "posix_fallocate", no_space)
    with pytest.raises(ToolchainError, match=r"Cannot reserve .* GB .*No space left on device\. Free disk space"):
        build_encoder_set(_config(speech_dir, tmp_path / "enc.npy"))
    assert _only_outputs(tmp_path) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"seconds": 2.005}, "does not give a whole number of mel frames"),
    ({"size": 0}, "--size 0 is not a positive"),
    ({"size": 5, "min_entries": 6}, "--min-entries 6 is larger than --size 5"),
])
def test_bad_arguments_are_refused(speech_dir, tmp_path, kwargs, message):
    with pytest.raises(ToolchainError, match=message):
        build_encoder_set(_config(speech_dir, tmp_path / "enc.npy", **kwargs))


def test_cli_writes_the_set_and_reports_errors(speech_dir, tmp_path):
    out = tmp_path / "enc.npy"
    done = subprocess.run([sys.executable, "-m", "calib", "encoder", "--audio", str(speech_dir), "--seconds", "2",
                           "--size", "6", "--seed", "1", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "[6, 1, 200, 80]" in done.stdout and np.load(out).shape == (6, 1, 200, 80)
    assert json.loads(manifest_path_for(out).read_text())["seed"] == 1

    failed = subprocess.run([sys.executable, "-m", "calib", "encoder", "--audio", str(speech_dir), "--seconds", "2",
                             "--size", "6", "--min-entries", "6", "--out", str(tmp_path / "x.npy"), "--size", "500",
                             "--min-entries", "400", "--no-progress"], capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: Only ") and "Traceback" not in failed.stderr
