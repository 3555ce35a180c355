"""Evaluation speech: utterances with reference transcripts for the accuracy ladder.

Two layouts are read:
  LibriSpeech  `<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`, one `UTTERANCE-ID TEXT` per
               line, the audio beside it as `UTTERANCE-ID.flac` (or any extension libsndfile reads)
  TSV          `transcripts.tsv` at the top: `relative/audio/path<TAB>text` per line (an optional
               first line `path<TAB>text` is a header)

`--eval-download` fetches LibriSpeech test-clean (2620 utterances, 346 MB) with the calibration
stage's resumable, checksummed downloader (calib/librispeech.py).

Utterances that cannot be used are kept as `Skip`s with a reason: transcript naming a missing
file, unreadable audio, empty transcript, longer than the window (unless `long="chunk"`, where
the transcriber cuts them at the window and joins the texts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from calib.audio import AUDIO_EXTENSIONS, AudioInfo, Skip, probe
from pipeline.errors import ToolchainError

TSV_NAME = "transcripts.tsv"
LONG_POLICIES = ("skip", "chunk")

# openslr.org resource 12; sha256 as in torchaudio's LibriSpeech checksum table (the same table
# gives the dev-clean sum pinned in calib/librispeech.py).
TEST_CLEAN_URL = "https://www.openslr.org/resources/12/test-clean.tar.gz"
TEST_CLEAN_SHA256 = "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23"
TEST_CLEAN_DIR = "LibriSpeech/test-clean"


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: AudioInfo  # path relative to `EvalSet.root`
    text: str
    chunks: int = 1  # windows the transcriber cuts it into


@dataclass(frozen=True)
class EvalSet:
    root: Path
    layout: str  # "librispeech" | "tsv"
    utterances: tuple[Utterance, ...]
    skipped: tuple[Skip, ...] = field(default=())
    long_policy: str = "skip"

    def skip_counts(self) -> dict[str, int]:
        """{reason kind: count}, the kind being the reason up to its first colon."""
        counts: dict[str, int] = {}
        for skip in self.skipped:
            kind = skip.reason.split(":")[0]
            counts[kind] = counts.get(kind, 0) + 1
        return counts


def _librispeech_entries(root: Path) -> list[tuple[str, Optional[str], str]]:
    """(id, audio path relative to root or None when missing, text) from every *.trans.txt."""
    entries = []
    for trans in sorted(root.rglob("*.trans.txt")):
        audio_by_stem = {p.stem: p for p in trans.parent.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS}
        for line in trans.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            audio = audio_by_stem.get(utt_id)
            entries.append((utt_id, audio.relative_to(root).as_posix() if audio else None, text.strip()))
    return entries


def _tsv_entries(root: Path) -> list[tuple[str, Optional[str], str]]:
    entries = []
    lines = (root / TSV_NAME).read_text(errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip() or (number == 1 and line.lower().startswith("path\t")):
            continue
        path, tab, text = line.partition("\t")
        if not tab:
            raise ToolchainError(f"{root / TSV_NAME} line {number} has no tab: {line[:80]!r}.",
                                 "Write one `relative/audio/path<TAB>transcript` per line.")
        path = path.strip()
        entries.append((path, path if (root / path).is_file() else None, text.strip()))
    return entries


def load_eval_set(root: str | os.PathLike, *, seconds: float, long: str = "skip",
                  limit: Optional[int] = None) -> EvalSet:
    """The usable utterances under `root` (sorted by id), the rest as skips with their reason.

    `seconds` is the build's window; `long` says what happens to longer utterances ("skip" or
    "chunk"); `limit` keeps the first N usable ones.
    """
    root = Path(root)
    if long not in LONG_POLICIES:
        raise ToolchainError(f"--long {long!r} is not known.", f"Use one of: {', '.join(LONG_POLICIES)}.")
    if not root.is_dir():
        raise ToolchainError(f"Evaluation folder {root} does not exist.",
                             "Pass --eval with a LibriSpeech-style folder or one with transcripts.tsv, "
                             "or use --eval-download.")
    if (root / TSV_NAME).is_file():
        layout, entries = "tsv", _tsv_entries(root)
    else:
        layout, entries = "librispeech", _librispeech_entries(root)
    if not entries:
        raise ToolchainError(
            f"Evaluation folder {root} has no transcripts: no {TSV_NAME} and no *.trans.txt below it.",
            f"Add {TSV_NAME} (`relative/audio/path<TAB>transcript` per line) or use LibriSpeech's layout.")
    used, skipped = [], []
    for utt_id, path, text in sorted(entries):
        reason = None
        if path is None:
            reason = "missing audio: the transcript names a file that is not there"
        elif not text:
            reason = "empty transcript"
        if reason:
            skipped.append(Skip(path or utt_id, reason))
            continue
        info = probe(root, path)
        if isinstance(info, Skip):
            skipped.append(info)
            continue
        chunks = max(1, -(-info.samples_16k // int(round(seconds * 16000))))
        if chunks > 1 and long == "skip":
            skipped.append(Skip(path, f"longer than the window: {info.seconds:.1f} s > {seconds:g} s"))
            continue
        used.append(Utterance(utt_id, info, text, chunks))
    if limit is not None:
        used = used[:limit]
    if not used:
        reasons = "; ".join(f"{k}: {v}" for k, v in EvalSet(root, layout, (), tuple(skipped)).skip_counts().items())
        raise ToolchainError(f"No usable utterance in {root} ({reasons}).",
                             "Fix the transcripts or audio listed, or pass --long chunk for long utterances.")
    return EvalSet(root, layout, tuple(used), tuple(skipped), long)


def download_test_clean(dest: str | os.PathLike, *, progress: bool = True) -> Path:
    """LibriSpeech test-clean under `dest` (resumable, checksummed, extracted once)."""
    from calib.librispeech import DownloadSpec, download_librispeech

    return download_librispeech(dest, DownloadSpec(TEST_CLEAN_URL, TEST_CLEAN_SHA256, TEST_CLEAN_DIR),
                                progress=progress)
