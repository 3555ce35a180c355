"""pipeline/host/eval_speech.py: the two transcript layouts, skips with reasons, bad folders."""

import shutil

import numpy as np
import pytest
import soundfile

from pipeline.errors import ToolchainError
from pipeline.host import eval_speech


def _wav(path, seconds, rate=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, subtype="PCM_16")


def test_librispeech_layout_pairs_each_line_with_its_flac(tmp_path):
    chapter = tmp_path / "1089" / "134686"
    for utt, seconds in (("1089-134686-0000", 2.0), ("1089-134686-0001", 3.5)):
        _wav(chapter / f"{utt}.flac", seconds)
    (chapter / "1089-134686.trans.txt").write_text(
        "1089-134686-0000 HE HOPED THERE WOULD BE STEW\n1089-134686-0001 STUFF IT INTO YOU\n")
    found = eval_speech.load_eval_set(tmp_path, seconds=10)
    assert found.layout == "librispeech"
    assert [(u.id, u.audio.path, u.text) for u in found.utterances] == [
        ("1089-134686-0000", "1089/134686/1089-134686-0000.flac", "HE HOPED THERE WOULD BE STEW"),
        ("1089-134686-0001", "1089/134686/1089-134686-0001.flac", "STUFF IT INTO YOU")]
    assert found.skipped == ()


def test_tsv_layout_and_every_kind_of_bad_entry_is_skipped_with_its_reason(tmp_path):
    _wav(tmp_path / "good.wav", 2.0)
    _wav(tmp_path / "sub" / "long.wav", 12.5)
    _wav(tmp_path / "silent_text.wav", 1.0)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really a wave file")
    (tmp_path / "transcripts.tsv").write_text(
        "path\ttext\n"  # optional header
        "good.wav\tHello there.\n"
        "sub/long.wav\tA long one.\n"
        "silent_text.wav\t   \n"
        "broken.wav\tCannot be read.\n"
        "gone.wav\tThe file is missing.\n")
    found = eval_speech.load_eval_set(tmp_path, seconds=10)
    assert found.layout == "tsv" and [u.id for u in found.utterances] == ["good.wav"]
    reasons = {s.path: s.reason for s in found.skipped}
    assert reasons["sub/long.wav"] == "longer than the window: 12.5 s > 10 s"
    assert reasons["silent_text.wav"] == "empty transcript"
    assert reasons["broken.wav"].startswith("unreadable:")
    assert reasons["gone.wav"].startswith("missing audio")
    assert found.skip_counts() == {"longer than the window": 1, "empty transcript": 1, "unreadable": 1,
                                   "missing audio": 1}


def test_long_utterances_are_kept_and_counted_in_windows_with_chunk(tmp_path):
    _wav(tmp_path / "long.wav", 25.0)
    (tmp_path / "transcripts.tsv").write_text("long.wav\tLong.\n")
    with pytest.raises(ToolchainError, match="longer than the window: 1.*--long chunk"):
        eval_speech.load_eval_set(tmp_path, seconds=10)
    found = eval_speech.load_eval_set(tmp_path, seconds=10, long="chunk")
    assert [u.chunks for u in found.utterances] == [3] and found.long_policy == "chunk"


def test_folder_without_transcripts_says_what_to_add(tmp_path):
    _wav(tmp_path / "a.wav", 1.0)
    with pytest.raises(ToolchainError, match="has no transcripts: no transcripts.tsv and no \\*.trans.txt"):
        eval_speech.load_eval_set(tmp_path, seconds=10)


def test_missing_folder_bad_tsv_line_and_unknown_long_policy(tmp_path):
    with pytest.raises(ToolchainError, match="does not exist"):
        eval_speech.load_eval_set(tmp_path / "nope", seconds=10)
    (tmp_path / "transcripts.tsv").write_text("a.wav no tab here\n")
    with pytest.raises(ToolchainError, match="line 1 has no tab"):
        eval_speech.load_eval_set(tmp_path, seconds=10)
    with pytest.raises(ToolchainError, match="--long 'split' is not known"):
        eval_speech.load_eval_set(tmp_path, seconds=10, long="split")


def test_limit_keeps_the_first_usable_utterances(tmp_path, eval_speech_dir):
    folder = tmp_path / "speech"
    shutil.copytree(eval_speech_dir, folder)
    found = eval_speech.load_eval_set(folder, seconds=10, limit=3)
    assert [u.id for u in found.utterances] == ["utt0.wav", "utt1.wav", "utt2.wav"]


def test_download_uses_the_pinned_test_clean_archive(monkeypatch, tmp_path):
    import calib.librispeech as librispeech

    seen = {}
    monkeypatch.setattr(librispeech, "download_librispeech",
                        lambda dest, spec, progress=True: seen.update(dest=dest, spec=spec) or tmp_path)
    assert eval_speech.download_test_clean(tmp_path) == tmp_path
    spec = seen["spec"]
    assert spec.url.endswith("/resources/12/test-clean.tar.gz")
    assert spec.sha256 == "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23"
    assert spec.extracts_to == "LibriSpeech/test-clean"
