"""pipeline/export/cached_greedy.py: the cached decoder ONNX pair (cross + step) driven greedily, against
transformers' generate (real tiny.en, generated speech) and against the fixed-length Hailo decoder ONNX."""

import json
import re

import numpy as np
import pytest

from pipeline.errors import ToolchainError
from pipeline.export import cached_greedy, onnx_greedy
from pipeline.export.cached_export import teacher_forced_logits
from pipeline.export.meta import read_export_json


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z ]", "", text.lower().replace("-", " ")).split()


@pytest.fixture(scope="module")
def tiny(tiny_export_dir):
    """The shared random-init tiny export (1 s, seq_len 8): graphs, metadata and the fixed-decoder sessions."""
    meta = read_export_json(tiny_export_dir)
    return tiny_export_dir, meta, onnx_greedy.load_sessions(tiny_export_dir, meta)


def _mels(meta, count, seed=0):
    return np.random.default_rng(seed).uniform(-1.0, 1.5, size=(count, 80, meta["frames"])).astype(np.float32)


def test_step_logits_equal_the_fixed_decoder_logits(tiny):
    out, meta, (encoder, fixed) = tiny
    states = onnx_greedy.encode(encoder, meta, _mels(meta, 1))
    embedding = onnx_greedy.load_host_assets(out, meta)
    row = np.random.default_rng(1).integers(0, meta["vocab_size"], size=meta["seq_len"])
    row[: len(meta["tokens"]["prompt"])] = meta["tokens"]["prompt"]
    cached = teacher_forced_logits(cached_greedy.load_cached_decoder(out, meta), states, row[None])[0]
    for last in range(meta["seq_len"]):
        expected = onnx_greedy.next_token_logits(fixed, meta, *embedding, states[0], row, last)
        np.testing.assert_allclose(cached[last], expected, atol=1e-3)


def test_a_batch_gives_the_tokens_of_each_row_alone_and_rows_match_the_fixed_decoder(tiny):
    out, meta, (encoder, fixed) = tiny
    mels = _mels(meta, 5, seed=2)
    states = onnx_greedy.encode(encoder, meta, mels)
    decoder = cached_greedy.load_cached_decoder(out, meta)
    budget = cached_greedy.DecodeOptions(max_new_tokens=meta["seq_len"] - len(meta["tokens"]["prompt"]),
                                         pad_encoder=False)
    batch = cached_greedy.transcribe_tokens(states, decoder, meta, options=budget)
    alone = [cached_greedy.transcribe_tokens(s[None], decoder, meta, options=budget)[0] for s in states]
    assert batch == alone
    rows = onnx_greedy.greedy_decode(encoder, fixed, meta, *onnx_greedy.load_host_assets(out, meta), mels)
    np.testing.assert_array_equal(cached_greedy.as_fixed_rows(batch, meta, meta["seq_len"]), rows)


def test_rows_that_end_early_leave_the_batch_and_keep_their_tokens(tiny, monkeypatch):
    """A row that says end-of-text stops there; the others go on (the batch shrinks under them)."""
    out, meta, (encoder, _) = tiny
    states = onnx_greedy.encode(encoder, meta, _mels(meta, 4, seed=3))
    decoder = cached_greedy.load_cached_decoder(out, meta)
    end = meta["tokens"]["end_of_text"]
    real_step, calls = cached_greedy.step, []

    def step(decoder, tokens, caches):
        logits, caches = real_step(decoder, tokens, caches)
        calls.append(len(tokens))
        if len(calls) == len(meta["tokens"]["prompt"]) + 1:  # after the first generated token: rows 0-2 end
            logits[:3, end] = np.inf
        return logits, caches

    monkeypatch.setattr(cached_greedy, "step", step)
    tokens = cached_greedy.transcribe_tokens(states, decoder, meta, options=cached_greedy.DecodeOptions(
        max_new_tokens=6, pad_encoder=False))
    assert [len(t) for t in tokens] == [1, 1, 1, 6]
    assert calls[-1] == 1  # the batch shrank to the one live row


def test_dropping_finished_rows_keeps_each_live_row_whole_and_moves_only_the_finished():
    rows = np.arange(5)
    caches = {"cross": np.arange(5 * 3, dtype=np.float32).reshape(5, 3).copy(), "self": np.arange(5.0)[:, None] * 10}
    before = {name: value.copy() for name, value in caches.items()}
    alive = np.array([False, True, False, True, True])
    kept_rows, kept_caches = cached_greedy.drop_finished_rows(alive, rows, caches)
    assert sorted(kept_rows.tolist()) == [1, 3, 4]
    for name, value in kept_caches.items():
        assert value.shape[0] == 3 and value.flags.c_contiguous  # ONNX Runtime takes it without a copy
        for position, row in enumerate(kept_rows):
            np.testing.assert_array_equal(value[position], before[name][row])
    assert kept_rows.tolist()[1] == 1  # a live row already in front stays where it is


def test_padding_fills_whisper_positions_and_refuses_a_wrong_size():
    states = np.ones((2, 500, 4), np.float32)
    padding = np.arange(4000, dtype=np.float32).reshape(1000, 4)
    padded = cached_greedy.pad_encoder_states(states, padding)
    assert padded.shape == (2, 1500, 4)
    np.testing.assert_array_equal(padded[1, 500:], padding)
    with pytest.raises(ValueError, match="499 positions \\+ 1000 padding rows != 1500"):
        cached_greedy.pad_encoder_states(states[:, 1:], padding)


def test_a_budget_beyond_the_decoder_positions_is_refused(tiny):
    out, meta, _ = tiny
    decoder = cached_greedy.load_cached_decoder(out, meta)
    with pytest.raises(ValueError, match="max_new_tokens 449 is outside 1..444"):
        cached_greedy.transcribe_tokens(np.zeros((1, 50, 384), np.float32), decoder, meta,
                                        options=cached_greedy.DecodeOptions(max_new_tokens=449))


def test_an_export_without_the_cached_decoder_says_to_rerun_the_export(tiny, tmp_path):
    out, meta, _ = tiny
    old = {k: v for k, v in meta.items() if k != "cached_decoder"}
    with pytest.raises(ToolchainError, match=r"has no cached \(KV-cache\) decoder.*older version.*Run the export stage"):
        cached_greedy.load_cached_decoder(out, old)


# --- real tiny.en ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_cached_tokens_equal_transformers_generate_on_real_speech(tiny_en_export_dir, tiny_en_speech):
    import torch

    from pipeline.export.export import load_whisper
    from pipeline.export.parity import hf_generated_tokens, hf_generation_config
    from pipeline.export.reference import hf_reference_model

    meta = read_export_json(tiny_en_export_dir)
    _, mel = tiny_en_speech
    # The export's own check over the same speech (96 tokens, float), and both precisions' logits.
    parity = meta["parity"]
    assert parity["cached_greedy_token_mismatches"] == 0 and "cached_greedy_near_ties" not in parity
    assert parity["cached_decoder_vs_hf"] <= 1e-3
    # Independently: the files on disk, batched, against transformers' generate on our encoder's window.
    loaded = load_whisper(meta["hf_id_or_path"], allow_download=False)
    reference = hf_reference_model(loaded.model, meta["encoder_positions"])
    new_tokens = 120
    gen = hf_generation_config(meta["tokens"], new_tokens, multilingual=False)
    with torch.no_grad():
        expected = [hf_generated_tokens(row, meta) for row in reference.generate(torch.from_numpy(mel), generation_config=gen)]
    encoder, _ = onnx_greedy.load_sessions(tiny_en_export_dir, meta)
    states = onnx_greedy.encode(encoder, meta, mel)
    ours = cached_greedy.transcribe_tokens(states, cached_greedy.load_cached_decoder(tiny_en_export_dir, meta), meta,
                                           options=cached_greedy.DecodeOptions(new_tokens, pad_encoder=False))
    assert ours == expected
    assert all(len(t) > 0 for t in ours)


@pytest.mark.slow
def test_transcriber_matches_the_fixed_pair_where_it_fits_and_is_not_cut_where_the_fixed_one_is(
        tiny_en_export_dir, tiny_en_speech):
    from transformers import AutoTokenizer

    meta = read_export_json(tiny_en_export_dir)
    texts, mel = tiny_en_speech
    tokenizer = AutoTokenizer.from_pretrained(tiny_en_export_dir)
    encoder, fixed = onnx_greedy.load_sessions(tiny_en_export_dir, meta)
    rows = onnx_greedy.greedy_decode(encoder, fixed, meta, *onnx_greedy.load_host_assets(tiny_en_export_dir, meta), mel)
    fixed_tokens = [onnx_greedy.generated_tokens(row, meta) for row in rows]
    fits = [meta["tokens"]["end_of_text"] in row[len(meta["tokens"]["prompt"]):] for row in rows]
    # The 30-word sentence does not fit seq_len 32 (nor does a sentence tiny.en repeats without end).
    assert sum(fits) >= 3 and not fits[-1]

    states = onnx_greedy.encode(encoder, meta, mel)
    decoder = cached_greedy.load_cached_decoder(tiny_en_export_dir, meta)
    # Same view as the Hailo decoder (500 encoder positions): the same tokens wherever the sequence fits.
    unpadded = cached_greedy.transcribe_tokens(states, decoder, meta,
                                               options=cached_greedy.DecodeOptions(pad_encoder=False))
    for fit, ours, theirs in zip(fits, unpadded, fixed_tokens):
        if fit:
            assert ours == theirs

    # The transcriber's default (padded to 1500 positions): the long sentence is heard to its end.
    padding = cached_greedy.load_encoder_padding(tiny_en_export_dir, meta)
    long_tokens = cached_greedy.transcribe_tokens(states[-1:], decoder, meta, encoder_padding=padding)[0]
    heard, cut = (_words(tokenizer.decode(t, skip_special_tokens=True)) for t in (long_tokens, fixed_tokens[-1]))
    assert len(fixed_tokens[-1]) == meta["seq_len"] - len(meta["tokens"]["prompt"])
    assert cut[-1] != "town" and len(long_tokens) > len(fixed_tokens[-1])
    assert heard[-3:] == ["market", "in", "town"], heard
    assert json.dumps(long_tokens)  # plain ints, ready for a JSON report
