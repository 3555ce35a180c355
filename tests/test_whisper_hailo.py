"""pipeline/export/whisper_hailo.py: the Hailo-friendly modules compute what transformers' Whisper computes."""

import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration

from pipeline.export.export import hf_reference_model
from pipeline.tables import DECODER_VOCAB_SPLITS
from pipeline.export.whisper_hailo import (
    CAUSAL_MASK_VALUE,
    HailoWhisperDecoder,
    HailoWhisperEncoder,
    causal_mask,
    conv1d_weight_as_2d,
    embed_tokens,
    host_embedding,
    vocab_split_sizes,
)

FRAMES = 200  # 2 s: keeps the tests fast
SEQ_LEN = 32


@pytest.fixture(scope="module")
def tiny(random_whisper_dir):
    return WhisperForConditionalGeneration.from_pretrained(random_whisper_dir("tiny")).eval()


def test_vocab_split_sizes_cover_the_vocabulary_in_four_parts():
    assert vocab_split_sizes(51865) == [12967, 12966, 12966, 12966]
    assert vocab_split_sizes(51864) == [12966] * 4
    assert len(vocab_split_sizes(51865)) == DECODER_VOCAB_SPLITS


def test_conv_weight_becomes_a_1x3_kernel_over_an_h1_image():
    weight = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
    w2 = conv1d_weight_as_2d(weight)
    assert w2.shape == (2, 3, 1, 3)
    assert torch.equal(w2[:, :, 0, :], weight)
    # A 2-D conv with it on [1, C, 1, T] equals the 1-D conv on [1, C, T].
    x = torch.randn(1, 3, 11)
    one_d = torch.nn.functional.conv1d(x, weight, padding=1, stride=2)
    two_d = torch.nn.functional.conv2d(x[:, :, None, :], w2, padding=(0, 1), stride=(1, 2))
    assert torch.allclose(one_d, two_d[:, :, 0, :])


def test_causal_mask_is_zero_on_and_below_the_diagonal():
    mask = causal_mask(4)
    assert mask.shape == (4, 4)
    assert torch.equal(mask.tril(), torch.zeros(4, 4))
    assert mask[0, 1] == CAUSAL_MASK_VALUE and mask[2, 3] == CAUSAL_MASK_VALUE


def test_encoder_shapes_and_parity_with_transformers(tiny):
    encoder = HailoWhisperEncoder.from_hf(tiny, FRAMES)
    assert encoder.conv1.weight.shape == (384, 80, 1, 3)
    assert encoder.conv2.stride == (1, 2)
    assert encoder.positional_embedding.shape == (FRAMES // 2, 384)
    mel = torch.randn(1, 80, FRAMES)
    reference = hf_reference_model(tiny, FRAMES // 2)
    with torch.no_grad():
        ours = encoder(mel[:, :, None, :])
        theirs = reference.model.encoder(mel).last_hidden_state
    assert ours.shape == (1, FRAMES // 2, 384)
    assert (ours - theirs).abs().max() <= 1e-4


def test_decoder_split_logits_equal_transformers_logits(tiny):
    decoder = HailoWhisperDecoder.from_hf(tiny, SEQ_LEN)
    token_embedding, positional_embedding = host_embedding(tiny, SEQ_LEN)
    assert token_embedding.shape == (51865, 384) and positional_embedding.shape == (SEQ_LEN, 384)
    states = torch.randn(1, FRAMES // 2, 384)
    tokens = np.random.default_rng(0).integers(0, 51865, size=(1, SEQ_LEN))
    with torch.no_grad():
        parts = decoder(states, torch.from_numpy(embed_tokens(tokens, token_embedding, positional_embedding)))
        theirs = tiny(encoder_outputs=(states,), decoder_input_ids=torch.from_numpy(tokens)).logits
    assert [p.shape[-1] for p in parts] == vocab_split_sizes(51865)
    assert all(p.shape[:2] == (1, SEQ_LEN) for p in parts)
    assert (torch.cat(parts, -1) - theirs).abs().max() <= 1e-3


def test_decoder_is_causal(tiny):
    decoder = HailoWhisperDecoder.from_hf(tiny, SEQ_LEN)
    states = torch.randn(1, FRAMES // 2, 384)
    embedded = torch.randn(1, SEQ_LEN, 384)
    changed = embedded.clone()
    changed[:, 10:] = torch.randn(1, SEQ_LEN - 10, 384)  # only positions >= 10 differ
    with torch.no_grad():
        a = torch.cat(decoder(states, embedded), -1)
        b = torch.cat(decoder(states, changed), -1)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_embed_tokens_needs_a_full_sequence():
    with pytest.raises(ValueError, match="expected 4 tokens"):
        embed_tokens(np.zeros((1, 3), dtype=np.int64), np.zeros((10, 2)), np.zeros((4, 2)))


def test_encoder_refuses_more_frames_than_positions(tiny):
    with pytest.raises(ValueError, match="3002 frames need 1501 positions"):
        HailoWhisperEncoder.from_hf(tiny, 3002)
