"""The non-routed token mixers of BiFormer blocks (official ``models/_common.py`` semantics).

* ``topk == -2``: :class:`AttentionLePE` (stage 4 of the released models): global attention with
  8 heads whatever the width, qkv without bias, scale ``head_dim ** -0.5``, plus LePE (a depthwise
  conv on the attention *input*) added before the projection.
* ``topk == -1``: :class:`Attention`, the same without LePE.
* ``topk == 0``: :class:`ConvMixer`, the official "pseudo attention" (1x1, 5x5 depthwise, 1x1 convs).

All take and return NHWC maps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    """Global multi-head self-attention on an NHWC map (keys ``qkv``, ``proj``)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: float | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _attend(self, x: Tensor) -> Tensor:
        """(B, T, C) tokens -> (B, T, C) attention output before the projection."""
        tokens, channels = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return (attn @ v).transpose(1, 2).reshape(-1, tokens, channels)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (N, H, W, C)."""
        n_shape = x.shape
        out = self._attend(x.flatten(1, 2))
        return self.proj(out).reshape(n_shape)


class AttentionLePE(Attention):
    """:class:`Attention` plus LePE: a depthwise conv of the block input added before ``proj``."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        side_dwconv: int = 5,
    ):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.lepe = (
            nn.Conv2d(dim, dim, kernel_size=side_dwconv, stride=1, padding=side_dwconv // 2, groups=dim)
            if side_dwconv > 0
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (N, H, W, C)."""
        n_shape = x.shape
        out = self._attend(x.flatten(1, 2))
        if self.lepe is not None:
            out = out + self.lepe(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        return self.proj(out).reshape(n_shape)


class _ToNCHW(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)


class _ToNHWC(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


class ConvMixer(nn.Sequential):
    """The official ``topk == 0`` mixer; module indices match its keys (``attn.1`` to ``attn.3``)."""

    def __init__(self, dim: int):
        super().__init__(
            _ToNCHW(),
            nn.Conv2d(dim, dim, 1),
            nn.Conv2d(dim, dim, 5, padding=2, groups=dim),
            nn.Conv2d(dim, dim, 1),
            _ToNHWC(),
        )
