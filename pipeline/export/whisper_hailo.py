"""Whisper encoder and decoder written the way Hailo's compiler can take them.

Same computation as openai/whisper's model.py (and transformers' WhisperModel), with the graph
changes Hailo needs (../shared/reference/dfc-api.md, "Whisper graph changes"):

- encoder input is NCHW `[1, 80, 1, frames]`; the two 1-D convolutions are 2-D convolutions
  with `(1, 3)` kernels, the second with stride `(1, 2)`; the positional embedding is cut to
  `frames / 2` positions (Hailo compiles a shorter window than Whisper's 30 s);
- attention is written out as matmul + softmax (no fused scaled-dot-product attention);
- the decoder runs at a fixed sequence length with the causal mask baked in as a constant, starts
  after the token + positional embedding (done on the host, see `host_embedding`), and ends in
  `DECODER_VOCAB_SPLITS` matmuls whose outputs concatenated on the last axis are the logits.

Weights are copied from a transformers `WhisperForConditionalGeneration`; nothing here patches
third-party code. Batch size is fixed to 1, as the Hailo networks are.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.tables import DECODER_VOCAB_SPLITS

CONV_KERNEL = (1, 3)  # 1-D kernel of width 3 laid along W of an H=1 image
CONV_PADDING = (0, 1)
CONV2_STRIDE = (1, 2)  # halves the frames: encoder positions = frames / 2
# Added to attention scores above the diagonal. Finite (not -inf) so the constant quantizes and
# never produces NaN; exp(-1e4) is exactly 0 in float32, so the result equals a -inf mask.
CAUSAL_MASK_VALUE = -1e4


def vocab_split_sizes(vocab_size: int, splits: int = DECODER_VOCAB_SPLITS) -> list[int]:
    """Widths of the split vocabulary projections (numpy.array_split order: larger ones first)."""
    base, extra = divmod(vocab_size, splits)
    return [base + (1 if i < extra else 0) for i in range(splits)]


def conv1d_weight_as_2d(weight: Tensor) -> Tensor:
    """[out, in, 3] Conv1d weight -> [out, in, 1, 3] Conv2d weight over an H=1 input."""
    return weight.unsqueeze(2)


def causal_mask(seq_len: int) -> Tensor:
    """[seq_len, seq_len]: 0 on and below the diagonal, CAUSAL_MASK_VALUE above it."""
    return torch.full((seq_len, seq_len), CAUSAL_MASK_VALUE).triu_(1)


class MultiHeadAttention(nn.Module):
    """Whisper attention with the score computation written out (matmul, softmax, matmul)."""

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: Tensor, xa: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x: [1, n_ctx, n_state]; xa (cross-attention source): [1, n_src, n_state] -> [1, n_ctx, n_state]."""
        source = x if xa is None else xa
        q = self.query(x)
        k = self.key(source)
        v = self.value(source)
        return self.out(self.qkv_attention(q, k, v, mask))

    def qkv_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """q: [1, n_ctx, n_state]; k, v: [1, n_src, n_state] -> [1, n_ctx, n_state]."""
        _, n_ctx, n_state = q.shape
        n_src = k.shape[1]
        head_dim = n_state // self.n_head
        # Scale q and k by head_dim ** -0.25 each (as openai/whisper does) rather than the scores
        # by head_dim ** -0.5: keeps both matmul inputs in a similar range for quantization.
        scale = head_dim**-0.25
        q = q.view(1, n_ctx, self.n_head, head_dim).permute(0, 2, 1, 3) * scale  # [1, H, n_ctx, hd]
        k = k.view(1, n_src, self.n_head, head_dim).permute(0, 2, 3, 1) * scale  # [1, H, hd, n_src]
        v = v.view(1, n_src, self.n_head, head_dim).permute(0, 2, 1, 3)  # [1, H, n_src, hd]
        scores = torch.matmul(q, k)  # [1, H, n_ctx, n_src]
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights, v)  # [1, H, n_ctx, hd]
        return out.permute(0, 2, 1, 3).reshape(1, n_ctx, n_state)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, GELU MLP."""

    def __init__(self, n_state: int, n_head: int, n_mlp: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: Tensor, xa: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x: [1, n_ctx, n_state]; xa: [1, n_src, n_state] for the decoder -> [1, n_ctx, n_state]."""
        x = x + self.attn(self.attn_ln(x), mask=mask)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), xa)
        x = x + self.mlp(self.mlp_ln(x))
        return x


class HailoWhisperEncoder(nn.Module):
    """Mel spectrogram [1, 80, 1, frames] -> encoder states [1, frames / 2, d_model]."""

    def __init__(self, n_mels: int, frames: int, n_state: int, n_head: int, n_layer: int, n_mlp: int):
        super().__init__()
        if frames % 2:
            raise ValueError(f"frames must be even (conv2 halves them), got {frames}")
        self.frames = frames
        self.positions = frames // 2
        self.conv1 = nn.Conv2d(n_mels, n_state, CONV_KERNEL, padding=CONV_PADDING)
        self.conv2 = nn.Conv2d(n_state, n_state, CONV_KERNEL, stride=CONV2_STRIDE, padding=CONV_PADDING)
        self.register_buffer("positional_embedding", torch.zeros(self.positions, n_state))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(n_state, n_head, n_mlp) for _ in range(n_layer))
        self.ln_post = nn.LayerNorm(n_state)

    def forward(self, x: Tensor) -> Tensor:
        """x: [1, n_mels, 1, frames] log-mel -> [1, positions, n_state]."""
        x = F.gelu(self.conv1(x))  # [1, n_state, 1, frames]
        x = F.gelu(self.conv2(x))  # [1, n_state, 1, positions]
        x = x.flatten(2).permute(0, 2, 1)  # [1, positions, n_state]
        x = x + self.positional_embedding
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)

    @classmethod
    def from_hf(cls, hf_model, frames: int) -> "HailoWhisperEncoder":
        """Copy the weights of a transformers WhisperForConditionalGeneration's encoder."""
        config = hf_model.config
        hf = hf_model.model.encoder
        positions = frames // 2
        if positions > hf.embed_positions.weight.shape[0]:
            raise ValueError(f"{frames} frames need {positions} positions; the model has {hf.embed_positions.weight.shape[0]}")
        encoder = cls(config.num_mel_bins, frames, config.d_model, config.encoder_attention_heads,
                      config.encoder_layers, config.encoder_ffn_dim)
        with torch.no_grad():
            for ours, theirs in ((encoder.conv1, hf.conv1), (encoder.conv2, hf.conv2)):
                ours.weight.copy_(conv1d_weight_as_2d(theirs.weight))
                ours.bias.copy_(theirs.bias)
            encoder.positional_embedding.copy_(hf.embed_positions.weight[:positions])
            for block, layer in zip(encoder.blocks, hf.layers):
                _copy_block(block, layer)
            encoder.ln_post.load_state_dict(hf.layer_norm.state_dict())
        _check_activation(config.activation_function)
        return encoder.eval()


class HailoWhisperDecoder(nn.Module):
    """(encoder states [1, positions, d], embedded tokens [1, seq_len, d]) -> logits split in 4.

    The token + positional embedding happens on the host (`host_embedding`); the outputs
    concatenated on the last axis are the logits over the whole vocabulary, [1, seq_len, vocab].
    """

    def __init__(self, seq_len: int, n_state: int, n_head: int, n_layer: int, n_mlp: int,
                 vocab_splits: Sequence[int]):
        super().__init__()
        self.seq_len = seq_len
        self.vocab_splits = list(vocab_splits)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(n_state, n_head, n_mlp, cross_attention=True) for _ in range(n_layer)
        )
        self.ln = nn.LayerNorm(n_state)
        self.register_buffer("mask", causal_mask(seq_len))
        # One [n_state, width] matrix per split: each becomes a MatMul with a constant operand.
        self.vocab_projections = nn.ParameterList(
            nn.Parameter(torch.zeros(n_state, width), requires_grad=False) for width in self.vocab_splits
        )

    def forward(self, encoder_states: Tensor, decoder_embeddings: Tensor) -> tuple[Tensor, ...]:
        """encoder_states: [1, positions, d]; decoder_embeddings: [1, seq_len, d] -> DECODER_VOCAB_SPLITS x [1, seq_len, n_i]."""
        x = decoder_embeddings
        for block in self.blocks:
            x = block(x, encoder_states, mask=self.mask)
        x = self.ln(x)  # [1, seq_len, d]
        return tuple(torch.matmul(x, projection) for projection in self.vocab_projections)

    @classmethod
    def from_hf(cls, hf_model, seq_len: int, splits: int = DECODER_VOCAB_SPLITS) -> "HailoWhisperDecoder":
        """Copy the weights of a transformers WhisperForConditionalGeneration's decoder and output projection."""
        config = hf_model.config
        hf = hf_model.model.decoder
        projection = hf_model.proj_out.weight  # [vocab, d]
        decoder = cls(seq_len, config.d_model, config.decoder_attention_heads, config.decoder_layers,
                      config.decoder_ffn_dim, vocab_split_sizes(projection.shape[0], splits))
        with torch.no_grad():
            for block, layer in zip(decoder.blocks, hf.layers):
                _copy_block(block, layer)
            decoder.ln.load_state_dict(hf.layer_norm.state_dict())
            for ours, rows in zip(decoder.vocab_projections, projection.split(decoder.vocab_splits, dim=0)):
                ours.copy_(rows.T)
        _check_activation(config.activation_function)
        return decoder.eval()


def host_embedding(hf_model, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(token embedding [vocab, d], positional embedding [seq_len, d]) as float32 numpy.

    embedded[t] = token_embedding[token_t] + positional_embedding[t] is the decoder input.
    transformers' embed_scale (1.0 for every Whisper checkpoint) is folded into the token matrix.
    """
    decoder = hf_model.model.decoder
    with torch.no_grad():
        tokens = (decoder.embed_tokens.weight * decoder.embed_scale).float().numpy()
        positions = decoder.embed_positions.weight[:seq_len].float().numpy()
    return np.ascontiguousarray(tokens), np.ascontiguousarray(positions)


def embed_tokens(tokens: np.ndarray, token_embedding: np.ndarray, positional_embedding: np.ndarray) -> np.ndarray:
    """tokens [N, seq_len] int -> decoder input [N, seq_len, d] float32 (the host side of the decoder)."""
    seq_len = positional_embedding.shape[0]
    if tokens.shape[-1] != seq_len:
        raise ValueError(f"expected {seq_len} tokens per row, got {tokens.shape[-1]}")
    return (token_embedding[tokens] + positional_embedding).astype(np.float32)


def _copy_block(block: ResidualAttentionBlock, layer) -> None:
    """Copy one transformers WhisperEncoderLayer / WhisperDecoderLayer into our block."""
    _copy_attention(block.attn, layer.self_attn)
    block.attn_ln.load_state_dict(layer.self_attn_layer_norm.state_dict())
    if block.cross_attn is not None:
        _copy_attention(block.cross_attn, layer.encoder_attn)
        block.cross_attn_ln.load_state_dict(layer.encoder_attn_layer_norm.state_dict())
    block.mlp[0].load_state_dict(layer.fc1.state_dict())
    block.mlp[2].load_state_dict(layer.fc2.state_dict())
    block.mlp_ln.load_state_dict(layer.final_layer_norm.state_dict())


def _copy_attention(ours: MultiHeadAttention, theirs) -> None:
    if theirs.k_proj.bias is not None:
        raise ValueError("Whisper attention has no key bias; this checkpoint has one")
    ours.query.load_state_dict(theirs.q_proj.state_dict())
    ours.key.load_state_dict(theirs.k_proj.state_dict())
    ours.value.load_state_dict(theirs.v_proj.state_dict())
    ours.out.load_state_dict(theirs.out_proj.state_dict())


def _check_activation(name: str) -> None:
    # nn.GELU / F.gelu are the exact (erf) GELU, which is what Whisper's "gelu" means.
    if name != "gelu":
        raise ValueError(f"only Whisper's exact GELU is supported, the checkpoint uses {name!r}")
