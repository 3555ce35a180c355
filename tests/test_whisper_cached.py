"""pipeline/export/whisper_cached.py: the cached decoder (cross-KV + one-token step) computes transformers' logits."""

import pytest
import torch
from transformers import WhisperForConditionalGeneration

from pipeline.export.whisper_cached import CachedCrossKV, CachedDecoderStep, cache_names


@pytest.fixture(scope="module")
def tiny(random_whisper_dir):
    return WhisperForConditionalGeneration.from_pretrained(random_whisper_dir("tiny")).eval()


def _run(tiny, encoder_states, tokens):
    """Feed tokens [B, n] one by one from empty caches -> logits [B, n, vocab] and the final self caches."""
    cross, step = CachedCrossKV.from_hf(tiny), CachedDecoderStep.from_hf(tiny)
    heads, head_dim = tiny.config.decoder_attention_heads, tiny.config.d_model // tiny.config.decoder_attention_heads
    with torch.no_grad():
        cross_cache = cross(encoder_states)
        self_cache = [torch.zeros(len(tokens), heads, 0, head_dim)] * (2 * tiny.config.decoder_layers)
        logits = []
        for position in range(tokens.shape[1]):
            out = step(tokens[:, position: position + 1], *self_cache, *cross_cache)
            logits.append(out[0])
            self_cache = list(out[1:])
    return torch.stack(logits, 1), self_cache, cross_cache


def test_token_by_token_logits_equal_transformers_logits(tiny):
    torch.manual_seed(0)
    states = torch.randn(3, 50, 384)
    tokens = torch.randint(0, tiny.config.vocab_size, (3, 12))
    logits, self_cache, cross_cache = _run(tiny, states, tokens)
    with torch.no_grad():
        expected = tiny(encoder_outputs=(states,), decoder_input_ids=tokens).logits
    assert (logits - expected).abs().max() < 1e-3
    assert [tuple(c.shape) for c in self_cache[:2]] == [(3, 6, 12, 64)] * 2
    assert tuple(cross_cache[0].shape) == (3, 6, 64, 50) and tuple(cross_cache[1].shape) == (3, 6, 50, 64)


def test_encoder_positions_are_free(tiny):
    """The same module takes 500 or 1500 encoder positions (a padded window)."""
    torch.manual_seed(1)
    states = torch.randn(1, 1500, 384)
    tokens = torch.randint(0, tiny.config.vocab_size, (1, 4))
    logits, _, _ = _run(tiny, states, tokens)
    with torch.no_grad():
        expected = tiny(encoder_outputs=(states,), decoder_input_ids=tokens).logits
    assert (logits - expected).abs().max() < 1e-3


def test_an_untied_output_projection_is_refused(random_whisper_dir):
    model = WhisperForConditionalGeneration.from_pretrained(random_whisper_dir("tiny")).eval()
    model.proj_out.weight = torch.nn.Parameter(model.proj_out.weight.detach().clone() + 1)
    with pytest.raises(ValueError, match="tied output projection"):
        CachedDecoderStep.from_hf(model)


def test_cache_names_alternate_keys_and_values_per_layer():
    assert cache_names(2, "self") == ["self_key_0", "self_value_0", "self_key_1", "self_value_1"]
