"""Set transformer blocks (Lee et al., 2019): multihead attention blocks, induced-set attention and pooling by
multihead attention with learned seed queries. Every block returns its attention weights so they can be plotted.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from models.mlp import MLP


class MultiheadAttentionBlock(nn.Module):
    """``MAB(X, Y) = H + FF(H)`` with ``H = X + Attention(X, Y, Y)``: the set transformer's block without the
    optional LayerNorm (docs/DESIGN.md#the-encoder says why)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.feedforward = MLP(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries (b, nq, d)``, ``keys (b, nk, d)`` -> ``(b, nq, d)`` and weights ``(b, heads, nq, nk)``."""
        q = rearrange(self.query(queries), "b n (h d) -> b h n d", h=self.num_heads)
        k = rearrange(self.key(keys), "b n (h d) -> b h n d", h=self.num_heads)
        v = rearrange(self.value(keys), "b n (h d) -> b h n d", h=self.num_heads)
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
        weights = scores.float().softmax(dim=-1)
        attended = torch.einsum("bhqk,bhkd->bhqd", weights.to(v.dtype), v)
        hidden = queries + self.out(rearrange(attended, "b h n d -> b n (h d)"))
        return hidden + self.feedforward(hidden), weights


class InducedSetAttentionBlock(nn.Module):
    """``ISAB(X) = MAB(X, MAB(I, X))``: self-attention through ``m`` learned inducing points, O(n m) not O(n^2)."""

    def __init__(self, dim: int, num_heads: int, num_inducing: int):
        super().__init__()
        self.inducing_points = nn.Parameter(torch.randn(1, num_inducing, dim) / math.sqrt(dim))
        self.summarise = MultiheadAttentionBlock(dim, num_heads)
        self.broadcast = MultiheadAttentionBlock(dim, num_heads)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        inducing = self.inducing_points.expand(tokens.shape[0], -1, -1)
        summary, _ = self.summarise(inducing, tokens)
        out, _ = self.broadcast(tokens, summary)
        return out


class PoolingByMultiheadAttention(nn.Module):
    """``PMA_k(X) = MAB(S, FF(X))`` with ``k`` learned seed queries ``S``: a permutation-invariant summary."""

    def __init__(self, dim: int, num_heads: int, num_seeds: int):
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(1, num_seeds, dim) / math.sqrt(dim))
        self.feedforward = MLP(nn.Linear(dim, dim), nn.ReLU())
        self.block = MultiheadAttentionBlock(dim, num_heads)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b, n, d)`` -> pooled ``(b, num_seeds, d)`` and attention ``(b, heads, num_seeds, n)``."""
        return self.block(self.seeds.expand(tokens.shape[0], -1, -1), self.feedforward(tokens))
