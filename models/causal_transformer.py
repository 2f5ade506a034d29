"""A causal (decoder-only) transformer over a sequence of tokens, with an incremental path for acting.

Pre-LayerNorm blocks (``x + Attention(LN(x))``, then ``x + MLP(LN(x))``), learned absolute positions, a final
LayerNorm. Three ways to run the same weights:

- ``forward(tokens)``: a whole sequence at once with fused attention (``scaled_dot_product_attention``), for
  training; on a CPU under bf16 autocast it runs in fp32 (``fused_causal_attention``);
- ``forward(tokens, need_weights=True)``: the same with attention written out, returning the last block's
  weights for plots;
- ``step(token, cache)``: one new token against the keys and values cached from the earlier ones, for acting
  one transition at a time in ``O(n)`` instead of re-reading the whole history.

All three agree to float rounding (``tests/test_transformer.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# per block: keys and values of every token so far, each ``(batch, heads, n, head_dim)``
KeyValueCache = list[tuple[torch.Tensor, torch.Tensor]]


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(b, n, d)`` -> queries, keys and values ``(b, heads, n, head_dim)``."""
        return rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.num_heads).unbind(0)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = self.project(x)
        if need_weights:
            attended, weights = explicit_attention(q, k, v, causal=True)
        else:
            attended, weights = fused_causal_attention(q, k, v), None
        return self.out(rearrange(attended, "b h n e -> b n (h e)")), weights

    def step(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None
             ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One token ``(b, 1, d)`` attending to itself and every cached one: output, weights ``(b, heads, 1, n)``
        and the cache with this token's key and value appended."""
        q, k, v = self.project(x)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        attended, weights = explicit_attention(q, k, v, causal=False)  # the last token may see every cached one
        return self.out(rearrange(attended, "b h n e -> b n (h e)")), weights, (k, v)


def fused_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention`` with a causal mask, ``(b, h, n, e)`` each; under bf16 autocast on a CPU in
    fp32: there torch's flash attention takes 1.7-3.8x as long in bf16 as in fp32, forward and backward, at the
    transformer's training shapes (``benchmarks/dev/transformer-attention/ATTENTION.md``), and fp32 rounds less."""
    if q.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention written out: ``(b, h, nq, e)`` queries over ``(b, h, nk, e)`` keys -> output and weights
    ``(b, h, nq, nk)``. ``causal``: query ``i`` sees keys ``0..i`` only (``nq == nk``)."""
    scores = torch.einsum("bhqe,bhke->bhqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        future = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).triu(diagonal=1)
        scores = scores.masked_fill(future, float("-inf"))
    weights = scores.float().softmax(dim=-1)
    return torch.einsum("bhqk,bhke->bhqe", weights.to(v.dtype), v), weights


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attention_norm, self.mlp_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, num_heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.attention(self.attention_norm(x), need_weights)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), weights

    def step(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None
             ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, weights, cache = self.attention.step(self.attention_norm(x), cache)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), weights, cache


class CausalTransformer(nn.Module):
    """``(b, n, token_dim)`` -> ``(b, n, dim)``: the output at position ``i`` reads tokens ``0..i`` only."""

    def __init__(self, token_dim: int, dim: int, num_layers: int, num_heads: int, max_length: int):
        super().__init__()
        self.max_length = max_length
        self.embed = nn.Linear(token_dim, dim)
        self.positions = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(num_layers))
        self.final_norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Outputs ``(b, n, dim)`` and, with ``need_weights``, the last block's attention ``(b, heads, n, n)``."""
        n = tokens.shape[1]
        if n > self.max_length:
            raise ValueError(f"{n} tokens exceed the transformer's context length {self.max_length}")
        x = self.embed(tokens) + self.positions[:n]
        weights = None
        for block in self.blocks:
            x, weights = block(x, need_weights)
        return self.final_norm(x), weights

    def step(self, token: torch.Tensor, cache: KeyValueCache | None
             ) -> tuple[torch.Tensor, torch.Tensor, KeyValueCache]:
        """The next token ``(b, token_dim)`` after the ``n`` cached ones: its output ``(b, dim)``, the last block's
        attention from it over all ``n + 1`` tokens ``(b, heads, 1, n + 1)``, and the grown cache."""
        position = 0 if not cache else cache[0][0].shape[2]
        if position >= self.max_length:
            raise ValueError(f"token {position + 1} exceeds the transformer's context length {self.max_length}")
        x = (self.embed(token) + self.positions[position])[:, None]                   # (b, 1, dim)
        new_cache: KeyValueCache = []
        weights = None
        for index, block in enumerate(self.blocks):
            x, weights, block_cache = block.step(x, cache[index] if cache else None)
            new_cache.append(block_cache)
        return self.final_norm(x[:, 0]), weights, new_cache
