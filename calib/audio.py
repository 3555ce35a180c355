"""Audio sources: find audio files under a folder and decode them to 16 kHz mono float32.

Anything libsndfile reads works (WAV in any bit depth, FLAC, OGG/Vorbis, MP3, AIFF, ...);
LibriSpeech's `speaker/chapter/*.flac` layout is just a folder tree. Files that cannot be used
(unreadable, corrupt, zero-length, silent) are not errors: callers record them as `Skip`s with a
reason, and only fail when nothing usable is left.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile
import soxr

from pipeline.errors import ToolchainError
from pipeline.tables import SAMPLE_RATE

# Extensions libsndfile decodes; matched case-insensitively. Other files in the tree (text
# transcripts, hidden files) are ignored without being counted as skips.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
     ".au", ".snd", ".caf", ".w64", ".rf64", ".sd2", ".voc", ".htk", ".nist", ".sph", ".mat"}
)

# A window whose peak stays below this (about -80 dBFS, under 16-bit dither) carries no signal.
SILENCE_PEAK = 1e-4

# 16 kHz samples decoded before and after a resampled span (the resampler's filter reach).
_RESAMPLE_MARGIN = 512


@dataclass(frozen=True)
class Skip:
    """A source file (or part of one) that was left out, and why."""

    path: str  # relative to the audio root
    reason: str

    def as_json(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of one readable file (no samples decoded)."""

    path: str  # relative to the audio root, POSIX separators
    sample_rate: int
    frames: int  # at the file's own rate
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate

    @property
    def samples_16k(self) -> int:
        """Length after resampling to 16 kHz."""
        return math.ceil(self.frames * SAMPLE_RATE / self.sample_rate)


def find_audio_files(root: str | os.PathLike) -> list[str]:
    """Audio files under `root` (recursive), as sorted POSIX paths relative to `root`.

    Sorted by relative path so every machine sees the same order whatever the file system.
    """
    root = Path(root)
    if not root.is_dir():
        raise ToolchainError(
            f"Audio folder {str(root)!r} does not exist or is not a folder.",
            "Pass --audio with a folder of speech recordings (wav/flac/ogg, any layout), or run "
            "`python -m calib download --dest DIR` to fetch LibriSpeech dev-clean.",
        )
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def file_list_sha256(paths: list[str]) -> str:
    """Hash of the (sorted, relative) file list, so a manifest shows whether the sources changed."""
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def probe(root: str | os.PathLike, rel_path: str) -> AudioInfo | Skip:
    """Read one file's header and its first sample. Unreadable or empty files come back as a
    `Skip`, also a file whose header promises samples that are not there (a truncated download)."""
    try:
        info = soundfile.info(str(Path(root, rel_path)))
    except Exception as err:  # libsndfile raises several types for bad headers
        return Skip(rel_path, f"unreadable: {_one_line(err)}")
    if info.frames <= 0 or info.samplerate <= 0:
        return Skip(rel_path, "zero-length: no audio samples")
    try:
        with soundfile.SoundFile(str(Path(root, rel_path))) as f:
            first = f.read(1, dtype="float32")
    except Exception as err:
        return Skip(rel_path, f"no audio after the header: {_one_line(err)}")
    if len(first) == 0:
        return Skip(rel_path, "no audio after the header")
    return AudioInfo(rel_path, int(info.samplerate), int(info.frames), int(info.channels))


def read_span(
    root: str | os.PathLike,
    info: AudioInfo,
    start_16k: int,
    length_16k: int,
) -> np.ndarray:
    """Decode `length_16k` samples at 16 kHz starting at 16 kHz sample `start_16k`.

    Only that span is read from disk (seek + read at the file's own rate), mixed to mono and
    resampled with soxr (high quality) when the file is not 16 kHz. Returns [n] float32, n <=
    length_16k (shorter at the end of the file). Raises on corrupt data.
    """
    rate = info.sample_rate
    if rate == SAMPLE_RATE:
        first_16k = start_16k
    else:
        # Start a little early so the resampler's edge falls outside the span, on a 16 kHz sample
        # that is also a whole source frame (22.05 kHz: every 320th), so the span lines up exactly
        # with a whole-file decode.
        step = SAMPLE_RATE // math.gcd(rate, SAMPLE_RATE)
        first_16k = max(0, (start_16k - _RESAMPLE_MARGIN) // step * step)
    first = first_16k * rate // SAMPLE_RATE
    end = min(info.frames, math.ceil((start_16k + length_16k + _RESAMPLE_MARGIN) * rate / SAMPLE_RATE))
    with soundfile.SoundFile(str(Path(root, info.path))) as f:
        if first:
            f.seek(first)
        data = f.read(max(0, end - first), dtype="float32", always_2d=True)  # [frames, channels]
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    mono = mono[start_16k - first_16k :]
    return np.ascontiguousarray(mono[:length_16k], dtype=np.float32)


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """A whole file as 16 kHz mono float32 [samples] (for tests and small tools)."""
    path = Path(path)
    info = probe(path.parent, path.name)
    if isinstance(info, Skip):
        raise ToolchainError(f"{str(path)!r} is not usable audio ({info.reason}).", "Pass a readable audio file.")
    return read_span(path.parent, info, 0, info.samples_16k)


def is_silent(audio: np.ndarray) -> bool:
    """True when a span carries no signal (empty, or peak below about -80 dBFS)."""
    return audio.size == 0 or float(np.max(np.abs(audio))) < SILENCE_PEAK


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def resolve_workers(workers: Optional[int]) -> int:
    """Worker processes to use: `workers`, or every CPU this process may run on."""
    if workers is not None:
        if workers < 1:
            raise ToolchainError(f"--workers {workers} is not a positive number.", "Use 1 or more.")
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
