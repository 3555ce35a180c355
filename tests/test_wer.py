"""pipeline/host/wer.py: Whisper normalization, corpus rates, bootstrap and paired intervals."""

import numpy as np

from pipeline.host import wer


def test_normalizer_is_whispers_english_one_with_its_spelling_table():
    assert wer.normalize("Mr. Smith's colour, twenty-five!") == "mister smith is color 25"  # Whisper expands 's
    assert wer.normalize("  Hello,   WORLD. ") == "hello world"


def test_corpus_rate_sums_errors_over_words_not_a_mean_of_rates():
    words, chars = wer.error_counts(["a b c d", "e f"], ["a b c d", "e x"])
    assert words.errors.tolist() == [0, 1] and words.lengths.tolist() == [4, 2]
    assert words.rate == 1 / 6  # a mean of per-utterance rates would say 0.25
    assert chars.errors.tolist() == [0, 1] and chars.lengths.tolist() == [7, 3]


def test_interval_brackets_the_rate_and_the_paired_difference_of_a_row_to_itself_is_zero():
    rng = np.random.default_rng(1)
    counts = wer.Counts(rng.integers(0, 4, 50), rng.integers(5, 15, 50))
    indices = wer.resample_indices(50)
    low, high = wer.interval(counts, indices)
    assert low < counts.rate < high
    assert wer.interval(counts, indices, baseline=counts) == (0.0, 0.0)
    worse = wer.Counts(counts.errors + 1, counts.lengths)
    d_low, d_high = wer.interval(worse, indices, baseline=counts)
    assert 0 < d_low <= worse.rate - counts.rate <= d_high
    # Paired: narrower than the two rows' own intervals would suggest.
    assert d_high - d_low < (high - low)
