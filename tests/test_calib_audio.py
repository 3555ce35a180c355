"""calib/audio.py: discovery, header probing and decoding of real (generated) speech in many formats."""

import subprocess

import numpy as np
import pytest
import soundfile

from calib.audio import AudioInfo, Skip, find_audio_files, is_silent, load_audio, probe, read_span
from pipeline.errors import ToolchainError


def _sox(src, dst, *args):
    subprocess.run(["sox", str(src), *args, str(dst)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def formats_dir(speech_dir, tmp_path_factory):
    """utt0 as: 16 kHz reference, 22.05 kHz stereo, 8-bit, 24-bit, FLAC, OGG."""
    folder = tmp_path_factory.mktemp("formats")
    src = speech_dir / "utt0.wav"
    _sox(src, folder / "ref16k.wav")
    _sox(src, folder / "stereo22k.wav", "-r", "22050", "-c", "2")
    _sox(src, folder / "u8.wav", "-b", "8", "-e", "unsigned-integer")
    _sox(src, folder / "s24.wav", "-b", "24")
    _sox(src, folder / "lossless.flac")
    _sox(src, folder / "vorbis.ogg")
    return folder


def _aligned_correlation(a, b):
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def test_find_audio_files_is_recursive_sorted_and_ignores_non_audio(tmp_path):
    for rel in ["b/2/z.flac", "a/1.WAV", "a/10/x.ogg", "c.txt", "a/.hidden.wav", ".git/q.wav", "b/2/84-121.trans.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert find_audio_files(tmp_path) == ["a/1.WAV", "a/10/x.ogg", "b/2/z.flac"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ToolchainError, match="does not exist or is not a folder.*calib download"):
        find_audio_files(tmp_path / "nope")


def test_probe_reads_headers_and_skips_bad_files(formats_dir, tmp_path):
    info = probe(formats_dir, "stereo22k.wav")
    assert isinstance(info, AudioInfo)
    assert (info.sample_rate, info.channels) == (22050, 2)
    assert info.samples_16k == int(np.ceil(info.frames * 16000 / 22050))

    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    (tmp_path / "empty.flac").write_bytes(b"")
    soundfile.write(tmp_path / "zero.wav", np.zeros((0,), dtype=np.float32), 16000)
    for name, reason in [("garbage.wav", "unreadable: "), ("empty.flac", "unreadable: "), ("zero.wav", "zero-length")]:
        skip = probe(tmp_path, name)
        assert isinstance(skip, Skip) and skip.path == name and skip.reason.startswith(reason), skip


@pytest.mark.parametrize("name", ["stereo22k.wav", "u8.wav", "s24.wav", "lossless.flac", "vorbis.ogg"])
def test_every_format_decodes_to_16k_mono_float32_matching_the_reference(formats_dir, name):
    reference = load_audio(formats_dir / "ref16k.wav")
    audio = load_audio(formats_dir / name)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - len(reference)) <= 1
    assert np.abs(audio).max() <= 1.0
    # Same speech after resampling / requantising / lossy coding.
    assert _aligned_correlation(audio, reference) > (0.9 if name == "vorbis.ogg" else 0.97), name


@pytest.mark.parametrize("name", ["ref16k.wav", "stereo22k.wav", "lossless.flac"])
def test_read_span_seeks_to_the_same_samples_as_a_full_decode(formats_dir, name):
    info = probe(formats_dir, name)
    full = read_span(formats_dir, info, 0, info.samples_16k)
    span = read_span(formats_dir, info, 16000, 8000)
    assert span.shape == (8000,)
    tolerance = 0 if info.sample_rate == 16000 else 1e-3  # resampler edges differ by a hair
    assert np.abs(span - full[16000:24000]).max() <= tolerance
    tail = read_span(formats_dir, info, info.samples_16k - 100, 16000)
    assert 99 <= len(tail) <= 101  # the end of the file: shorter, never padded here


def test_is_silent():
    assert is_silent(np.zeros(10, dtype=np.float32))
    assert is_silent(np.full(10, 5e-5, dtype=np.float32))
    assert is_silent(np.zeros(0, dtype=np.float32))
    assert not is_silent(np.array([0, 0.01], dtype=np.float32))


def test_a_flac_whose_header_promises_samples_that_are_missing_is_skipped(formats_dir, tmp_path):
    data = (formats_dir / "lossless.flac").read_bytes()
    first_frame = data.find(b"\xff\xf8", 4)  # FLAC frame sync after the metadata blocks
    (tmp_path / "header_only.flac").write_bytes(data[:first_frame])
    assert soundfile.info(str(tmp_path / "header_only.flac")).frames > 0, "the header alone looks usable"
    skip = probe(tmp_path, "header_only.flac")
    assert isinstance(skip, Skip) and skip.reason.startswith("no audio after the header")
    assert isinstance(probe(formats_dir, "lossless.flac"), AudioInfo)
