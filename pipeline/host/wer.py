"""Word and character error rates for the accuracy ladder: Whisper's English text normalizer,
jiwer's alignments, corpus rates with bootstrap confidence intervals (per utterance resampling).

Corpus WER = sum of word errors / sum of reference words over the utterances (not a mean of
per-utterance rates). The 95% interval resamples utterances with replacement; a paired difference
between two rows resamples the same utterances for both, so it is much narrower than the two
intervals side by side.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from pipeline.errors import ToolchainError

BOOTSTRAP_SAMPLES = 1000
CONFIDENCE = 0.95


@functools.lru_cache(maxsize=1)
def _normalizer():
    try:
        # openai/whisper's EnglishTextNormalizer with its spelling table (english.json), as the
        # whisper-normalizer package ships it; transformers' copy needs the table from a hub repo.
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError as err:
        raise ToolchainError(f"Whisper's English text normalizer is not installed ({err}).",
                             "pip install -e '.[eval]' (whisper-normalizer, jiwer).") from None
    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    """Whisper's English normalization: lower case, spelling unified, numbers as digits, no punctuation."""
    return " ".join(_normalizer()(text).split())


@dataclass(frozen=True)
class Counts:
    """Per-utterance error and reference-length counts (words or characters)."""

    errors: np.ndarray  # [utterances] int
    lengths: np.ndarray  # [utterances] int

    @property
    def rate(self) -> float:
        return float(self.errors.sum() / max(self.lengths.sum(), 1))


def _jiwer():
    try:
        import jiwer
    except ImportError as err:
        raise ToolchainError(f"jiwer is not installed ({err}).", "pip install -e '.[eval]'.") from None
    return jiwer


def error_counts(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[Counts, Counts]:
    """(word counts, character counts) of normalized references vs normalized hypotheses."""
    jiwer = _jiwer()
    words, chars = [], []
    for ref, hyp in zip(references, hypotheses):
        w = jiwer.process_words(ref, hyp)
        c = jiwer.process_characters(ref, hyp)
        words.append((w.substitutions + w.deletions + w.insertions, len(ref.split())))
        chars.append((c.substitutions + c.deletions + c.insertions, len(ref)))
    as_counts = lambda pairs: Counts(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]))
    return as_counts(words), as_counts(chars)


def resample_indices(count: int, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> np.ndarray:
    """[samples, count] utterance indices drawn with replacement (shared by every row: paired)."""
    return np.random.default_rng(seed).integers(0, count, size=(samples, count))


def _rates(counts: Counts, indices: np.ndarray) -> np.ndarray:
    return counts.errors[indices].sum(axis=1) / np.maximum(counts.lengths[indices].sum(axis=1), 1)


def interval(counts: Counts, indices: np.ndarray, baseline: Optional[Counts] = None) -> tuple[float, float]:
    """95% percentile interval of the corpus rate, or of (rate - baseline rate) when paired."""
    values = _rates(counts, indices)
    if baseline is not None:
        values = values - _rates(baseline, indices)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
