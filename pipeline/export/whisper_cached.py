"""Whisper decoder with a key/value cache, for the host CPU (ONNX Runtime), batched.

The Hailo decoder (whisper_hailo.HailoWhisperDecoder) sees a fixed-length token row every step and
recomputes everything; this one is what a CPU wants: two graphs over the same weights.

- `CachedCrossKV`: encoder states [B, P, d] -> the cross-attention keys and values of every
  layer, computed once per utterance.
- `CachedDecoderStep`: one token per row [B, 1], the self-attention cache (T positions, T = 0 at
  the first prompt token) and the cross cache -> logits [B, vocab] and the self cache grown to
  T + 1 positions. The prompt runs through it token by token.

Batch, encoder positions P (a 10 s encoder gives 500; padded to Whisper's 1500 by
pipeline/export/cached_greedy.py) and cache length are dynamic. The attention scale (q and k each
by head_dim ** -0.25, as in whisper_hailo's blocks) is folded into the query and key projections.
The weights are copied from a transformers WhisperForConditionalGeneration through whisper_hailo's
block loader; nothing here patches third-party code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.export.whisper_hailo import ResidualAttentionBlock, _check_activation, _copy_block


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """[B, n, d] -> [B, H, n, hd]."""
    batch, n, d = x.shape
    return x.reshape(batch, n, n_head, d // n_head).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, n, hd] -> [B, n, d]."""
    batch, n_head, n, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, n, n_head * head_dim)


def attend(q: Tensor, k_t: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """q [B, H, n, hd] (scaled), k_t [B, H, hd, m] (scaled), v [B, H, m, hd] -> [B, H, n, hd]."""
    scores = torch.matmul(q, k_t)  # [B, H, n, m]
    if mask is not None:
        scores = scores + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class CachedCrossKV(nn.Module):
    """Encoder states [B, P, d] -> cross-attention keys [B, H, hd, P] and values [B, H, P, hd] per layer.

    Outputs layer by layer: k0, v0, k1, v1, ... (keys already scaled by head_dim ** -0.25 and
    transposed for the score matmul, so the step graph only multiplies).
    """

    def __init__(self, n_state: int, n_head: int, n_layer: int):
        super().__init__()
        self.n_head = n_head
        self.scale = (n_state // n_head) ** -0.25
        self.keys = nn.ModuleList(nn.Linear(n_state, n_state, bias=False) for _ in range(n_layer))
        self.values = nn.ModuleList(nn.Linear(n_state, n_state) for _ in range(n_layer))

    def forward(self, encoder_states: Tensor) -> tuple[Tensor, ...]:
        caches = []
        for key, value in zip(self.keys, self.values):
            caches.append(split_heads(key(encoder_states), self.n_head).transpose(2, 3))
            caches.append(split_heads(value(encoder_states), self.n_head))
        return tuple(caches)

    @classmethod
    def from_hf(cls, hf_model) -> "CachedCrossKV":
        """Copy the cross-attention key/value projections of a transformers WhisperForConditionalGeneration."""
        config = hf_model.config
        module = cls(config.d_model, config.decoder_attention_heads, config.decoder_layers)
        with torch.no_grad():
            for key, value, layer in zip(module.keys, module.values, hf_model.model.decoder.layers):
                key.load_state_dict(layer.encoder_attn.k_proj.state_dict())
                value.load_state_dict(layer.encoder_attn.v_proj.state_dict())
                _fold_scale(key, module.scale)
        return module.eval()


class CachedDecoderStep(nn.Module):
    """(token [B, 1], self caches (T positions), cross caches) -> (logits [B, vocab], self caches (T + 1)).

    Caches are passed and returned as flat per-layer lists: self k0, v0, k1, v1, ... ([B, H, T, hd]
    each; T = 0 before the first prompt token), then the cross caches of CachedCrossKV. The
    token's position is T (the self cache's length). One [d, vocab] matrix is both the token
    embedding (a column per token) and the output projection (Whisper ties them).
    """

    def __init__(self, vocab: int, max_positions: int, n_state: int, n_head: int, n_layer: int, n_mlp: int):
        super().__init__()
        self.n_head = n_head
        self.scale = (n_state // n_head) ** -0.25
        self.projection = nn.Parameter(torch.zeros(n_state, vocab), requires_grad=False)
        self.positional_embedding = nn.Parameter(torch.zeros(max_positions, n_state), requires_grad=False)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(n_state, n_head, n_mlp, cross_attention=True) for _ in range(n_layer)
        )
        self.ln = nn.LayerNorm(n_state)

    def forward(self, token: Tensor, *caches: Tensor) -> tuple[Tensor, ...]:
        n_layer = len(self.blocks)
        self_cache, cross_cache = caches[: 2 * n_layer], caches[2 * n_layer:]
        position = self_cache[0].shape[2]
        embedded = self.projection[:, token[:, 0]].t()  # [B, d]
        x = (embedded + self.positional_embedding[position]).unsqueeze(1)  # [B, 1, d]
        grown = []
        for index, block in enumerate(self.blocks):
            attn, k, v = self.self_attention(block, x, self_cache[2 * index], self_cache[2 * index + 1])
            x = x + attn
            x = x + self.cross_attention(block, x, cross_cache[2 * index], cross_cache[2 * index + 1])
            x = x + block.mlp(block.mlp_ln(x))
            grown += [k, v]
        return (torch.matmul(self.ln(x[:, 0]), self.projection), *grown)

    def self_attention(self, block, x: Tensor, past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, 1, d] -> (attention output [B, 1, d], keys and values [B, H, T + 1, hd])."""
        h = block.attn_ln(x)
        k = torch.cat([past_k, split_heads(block.attn.key(h), self.n_head)], dim=2)
        v = torch.cat([past_v, split_heads(block.attn.value(h), self.n_head)], dim=2)
        q = split_heads(block.attn.query(h), self.n_head)
        return block.attn.out(merge_heads(attend(q, k.transpose(2, 3), v))), k, v

    def cross_attention(self, block, x: Tensor, cross_k: Tensor, cross_v: Tensor) -> Tensor:
        """x [B, 1, d], cross_k [B, H, hd, P], cross_v [B, H, P, hd] -> [B, 1, d]."""
        q = split_heads(block.cross_attn.query(block.cross_attn_ln(x)), self.n_head)
        return block.cross_attn.out(merge_heads(attend(q, cross_k, cross_v)))

    @classmethod
    def from_hf(cls, hf_model) -> "CachedDecoderStep":
        """Copy the decoder weights of a transformers WhisperForConditionalGeneration."""
        config = hf_model.config
        hf = hf_model.model.decoder
        if hf.embed_scale != 1.0 or not torch.equal(hf_model.proj_out.weight, hf.embed_tokens.weight):
            raise ValueError("the cached decoder expects Whisper's tied output projection and embed_scale 1.0")
        module = cls(config.vocab_size, hf.embed_positions.weight.shape[0], config.d_model,
                     config.decoder_attention_heads, config.decoder_layers, config.decoder_ffn_dim)
        with torch.no_grad():
            module.projection.copy_(hf.embed_tokens.weight.T)
            module.positional_embedding.copy_(hf.embed_positions.weight)
            for block, layer in zip(module.blocks, hf.layers):
                _copy_block(block, layer)
                for projection in (block.attn.query, block.attn.key, block.cross_attn.query):
                    _fold_scale(projection, module.scale)
            module.ln.load_state_dict(hf.layer_norm.state_dict())
        _check_activation(config.activation_function)
        return module.eval()


def _fold_scale(linear: nn.Linear, scale: float) -> None:
    """Multiply a projection's output by `scale` through its weights: no Mul beside the score matmul
    (ONNX Runtime would fuse the two into a FusedMatMul, about 20% slower per step here)."""
    linear.weight.mul_(scale)
    if linear.bias is not None:
        linear.bias.mul_(scale)


def cache_names(n_layer: int, prefix: str) -> list[str]:
    """Flat per-layer cache names in graph order: <prefix>_key_0, <prefix>_value_0, ..."""
    return [f"{prefix}_{kind}_{layer}" for layer in range(n_layer) for kind in ("key", "value")]
