"""Bi-level Routing Attention (BRA), written for deployment.

Same parameters (state_dict keys) and the same math as the official legacy implementation
(rayleizhu/BiFormer, ``ops/bra_legacy.py``), with a different data path for the routed keys and
values:

* the official module gathers K/V with ``torch.gather`` over ``kv.expand(n, p^2, p^2, w^2, c)``,
  which exports to ONNX as ``Expand`` -> ``GatherElements``: runtimes materialise the expanded
  tensor (``p^2`` times K/V, 49x for ``n_win=7``) plus an int64 index as large as the result;
* here the routed regions are picked by index: the region index of every (batch, region, k) is
  flattened to ``n * S^2 + r_idx`` and one ``Gather`` (``index_select``) on the region-major K and V
  reads exactly the ``topk`` routed regions.

The qkv projection runs on the NHWC map (before the regions are cut), so the graph holds ``q``,
``k`` and ``v`` as NHWC tensors, the routing as ReduceMean/MatMul/TopK with a constant K, and the
attention output as an NHWC tensor: exactly the inputs and output of the ``BiLevelRoutingAttention``
plugin op (``plugins/bra/README.md``), which the graph rewrite swaps in.

``gather_mode="expand"`` reproduces the official data path op for op (patchify, then qkv, then
expand + gather). It exists for benchmarks and for testing the graph rewrite on the official
pattern; it computes the same values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV_DOWNSAMPLE_MODES = ("identity", "ada_avgpool", "ada_maxpool", "maxpool", "avgpool")
GATHER_MODES = ("index", "expand")


class TopkRouting(nn.Module):
    """Region-level routing: ``topk((q_win * scale) @ k_win^T)``.

    Holds the optional ``emb`` projection of ``param_routing`` (key ``router.emb.*``).
    """

    def __init__(self, qk_dim: int, topk: int, scale: float, param_routing: bool = False) -> None:
        super().__init__()
        self.topk = topk
        self.scale = scale
        self.emb = nn.Linear(qk_dim, qk_dim) if param_routing else nn.Identity()

    def forward(self, q_win: Tensor, k_win: Tensor) -> tuple[Tensor, Tensor]:
        """``q_win``, ``k_win``: (N, S*S, C). Returns (routing weights, indices), both (N, S*S, topk)."""
        logits = (self.emb(q_win) * self.scale) @ self.emb(k_win).transpose(-2, -1)
        top_logits, r_idx = torch.topk(logits, k=self.topk, dim=-1)
        return torch.softmax(top_logits, dim=-1), r_idx


class QKVLinear(nn.Module):
    """The fused q/k/v projection (key ``qkv.qkv.*``): channels ``[q (qk_dim), k (qk_dim), v (dim)]``."""

    def __init__(self, dim: int, qk_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.qk_dim = qk_dim
        self.qkv = nn.Linear(dim, qk_dim + qk_dim + dim, bias=bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``q``, ``k``, ``v`` with the leading dims of ``x``."""
        q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        return q, k, v


def _make_kv_down(mode: str, kv_per_win: int, ratio: int) -> nn.Module:
    if mode == "identity":
        return nn.Identity()
    if mode == "ada_avgpool":
        return nn.AdaptiveAvgPool2d(kv_per_win)
    if mode == "ada_maxpool":
        return nn.AdaptiveMaxPool2d(kv_per_win)
    if mode == "maxpool":
        return nn.MaxPool2d(ratio) if ratio > 1 else nn.Identity()
    if mode == "avgpool":
        return nn.AvgPool2d(ratio) if ratio > 1 else nn.Identity()
    raise ValueError(f"kv_downsample_mode must be one of {KV_DOWNSAMPLE_MODES}, got {mode!r}")


def to_regions(x: Tensor, n_win: int) -> Tensor:
    """(N, H, W, C) -> (N, S*S, H/S, W/S, C): region (j, i) at index ``j*S + i``."""
    _, height, width, channels = x.shape
    h, w = height // n_win, width // n_win
    x = x.reshape(-1, n_win, h, n_win, w, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, n_win * n_win, h, w, channels)


def from_regions(x: Tensor, n_win: int) -> Tensor:
    """(N, S*S, h, w, C) -> (N, S*h, S*w, C); the inverse of :func:`to_regions`."""
    _, _, h, w, channels = x.shape
    x = x.reshape(-1, n_win, n_win, h, w, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, n_win * h, n_win * w, channels)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad an NHWC map at the bottom/right to multiples of ``multiple``.

    Written as "pad by ``multiple - 1``, then slice to the rounded-up size" so that an exported
    graph computes the padding from the runtime shape (no amount frozen at export time).
    """
    if multiple == 1:
        return x
    height, width = x.shape[1], x.shape[2]
    padded_h = (height + multiple - 1) // multiple * multiple
    padded_w = (width + multiple - 1) // multiple * multiple
    x = F.pad(x, (0, 0, 0, multiple - 1, 0, multiple - 1))
    return x[:, :padded_h, :padded_w, :]


def flat_region_index(r_idx: Tensor, n_regions: int) -> Tensor:
    """Routed region indices (N, S*S, topk) as rows of a (N*S*S, ...) region table: ``n*S*S + r_idx``.

    The routed K/V are then read with one ``index_select`` (ONNX ``Gather``) per table.
    """
    batch = r_idx.shape[0]
    offsets = torch.arange(batch, device=r_idx.device, dtype=r_idx.dtype).reshape(-1, 1, 1) * n_regions
    return (r_idx + offsets).reshape(-1)


def multihead_attention(
    q_pix: Tensor, k_sel: Tensor, v_sel: Tensor, num_heads: int, scale: float, qk_dim: int, dim: int
) -> Tensor:
    """``softmax((q * scale) @ k^T) @ v`` per region and head; channels split head-major.

    ``q_pix`` (B, Tq, qk_dim), ``k_sel`` (B, Tk, qk_dim), ``v_sel`` (B, Tk, dim); returns (B, Tq, dim).
    The widths are passed as ints so that exported graphs reshape by constants.
    """
    m = num_heads
    tq, tk = q_pix.shape[1], k_sel.shape[1]
    q = q_pix.reshape(-1, tq, m, qk_dim // m).permute(0, 2, 1, 3)
    k = k_sel.reshape(-1, tk, m, qk_dim // m).permute(0, 2, 3, 1)
    v = v_sel.reshape(-1, tk, m, dim // m).permute(0, 2, 1, 3)
    attn = torch.softmax((q * scale) @ k, dim=-1)
    return (attn @ v).permute(0, 2, 1, 3).reshape(-1, tq, dim)


class BiLevelRoutingAttention(nn.Module):
    """BRA on NHWC maps, compatible with the official ``BiLevelRoutingAttention`` (legacy) weights.

    Args mirror the official constructor. ``qk_scale`` defaults to ``qk_dim ** -0.5`` with the
    whole ``qk_dim`` (not per head); the same scale is used for routing and for token attention.
    ``gather_mode``: ``"index"`` (deployment path, default) or ``"expand"`` (official data path).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        qk_dim: int | None = None,
        qk_scale: float | None = None,
        kv_per_win: int = 4,
        kv_downsample_ratio: int = 4,
        kv_downsample_kernel: int | None = None,
        kv_downsample_mode: str = "identity",
        topk: int = 4,
        param_attention: str = "qkvo",
        param_routing: bool = False,
        diff_routing: bool = False,
        soft_routing: bool = False,
        side_dwconv: int = 3,
        auto_pad: bool = False,
        gather_mode: str = "index",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.n_win = n_win
        self.num_heads = num_heads
        self.qk_dim = qk_dim or dim
        if self.qk_dim % num_heads or dim % num_heads:
            raise ValueError(
                f"qk_dim ({self.qk_dim}) and dim ({dim}) must be divisible by num_heads ({num_heads})"
            )
        if param_routing and not diff_routing:
            raise ValueError("param_routing=True needs diff_routing=True (as in the official module)")
        if param_attention not in ("qkvo", "qkv"):
            raise ValueError(f"param_attention must be 'qkvo' or 'qkv', got {param_attention!r}")
        if gather_mode not in GATHER_MODES:
            raise ValueError(f"gather_mode must be one of {GATHER_MODES}, got {gather_mode!r}")
        if not 1 <= topk <= n_win * n_win:
            raise ValueError(f"topk must be in [1, n_win*n_win={n_win * n_win}], got {topk}")
        self.scale = qk_scale or self.qk_dim**-0.5
        self.topk = topk
        self.soft_routing = soft_routing
        self.auto_pad = auto_pad
        self.gather_mode = gather_mode
        self.kv_downsample_mode = kv_downsample_mode

        self.lepe = (
            nn.Conv2d(dim, dim, kernel_size=side_dwconv, stride=1, padding=side_dwconv // 2, groups=dim)
            if side_dwconv > 0
            else None
        )
        self.router = TopkRouting(self.qk_dim, topk, self.scale, param_routing=param_routing)
        self.qkv = QKVLinear(dim, self.qk_dim)
        self.wo = nn.Linear(dim, dim) if param_attention == "qkvo" else nn.Identity()
        self.kv_down = _make_kv_down(kv_downsample_mode, kv_per_win, kv_downsample_ratio)

    # -- shared pieces -------------------------------------------------------------------------
    def _lepe(self, v: Tensor) -> Tensor:
        """LCE: depthwise conv over the whole V map (NHWC in, NHWC out)."""
        if self.lepe is None:
            return torch.zeros_like(v)
        return self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def _attend(self, q_pix: Tensor, k_sel: Tensor, v_sel: Tensor) -> Tensor:
        """Multi-head attention per region (:func:`multihead_attention` with this block's heads/scale)."""
        return multihead_attention(q_pix, k_sel, v_sel, self.num_heads, self.scale, self.qk_dim, self.dim)

    def _downsample_regions(self, kv: Tensor) -> Tensor:
        """(N, S*S, h, w, C) -> (N*S*S, h'*w', C) after the optional per-region K/V pooling."""
        _, _, h, w, channels = kv.shape
        if self.kv_downsample_mode == "identity":
            return kv.reshape(-1, h * w, channels)
        pooled = self.kv_down(kv.reshape(-1, h, w, channels).permute(0, 3, 1, 2))
        return pooled.flatten(2).transpose(1, 2)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """``x``: (N, H, W, C) NHWC; returns NHWC of the same shape."""
        if self.auto_pad:
            height_in, width_in = x.shape[1], x.shape[2]
            x = pad_to_multiple(x, self.n_win)
        elif not torch.jit.is_tracing() and (x.shape[1] % self.n_win or x.shape[2] % self.n_win):
            raise ValueError(
                f"BRA input {tuple(x.shape[1:3])} is not a multiple of n_win={self.n_win}; "
                "use an input size that is a multiple of 32*n_win or build the model with auto_pad=True"
            )
        out = self._forward_index(x) if self.gather_mode == "index" else self._forward_expand(x)
        out = self.wo(out)
        if self.auto_pad:
            out = out[:, :height_in, :width_in, :]
        return out

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Projection and region routing of a (padded) NHWC map.

        Returns ``q``, ``k``, ``v`` (NHWC maps: the inputs of the ``BiLevelRoutingAttention`` op),
        the routing weights and ``r_idx`` (N, S*S, topk) int64.
        """
        q, k, v = self.qkv(x)
        r_weight, r_idx = self._route_regions(to_regions(q, self.n_win), to_regions(k, self.n_win))
        return q, k, v, r_weight, r_idx

    def routed_attention(
        self, q: Tensor, k: Tensor, v: Tensor, r_idx: Tensor, r_weight: Tensor | None = None
    ) -> Tensor:
        """The ``BiLevelRoutingAttention`` op (``plugins/bra/README.md``) as this block computes it.

        ``r_weight`` scales the routed K/V when the block uses ``soft_routing`` (not part of the op).
        """
        s = self.n_win
        return self._attend_regions(to_regions(q, s), to_regions(k, s), to_regions(v, s), r_idx, r_weight)

    def _route_regions(self, q_reg: Tensor, k_reg: Tensor) -> tuple[Tensor, Tensor]:
        return self.router(q_reg.mean([2, 3]), k_reg.mean([2, 3]))

    def _attend_regions(
        self, q_reg: Tensor, k_reg: Tensor, v_reg: Tensor, r_idx: Tensor, r_weight: Tensor | None
    ) -> Tensor:
        """Routed attention on region-major maps; returns the NHWC output ``o``.

        Routed K/V regions are rows of the (N*S*S, tokens, C) region tables picked by index.
        """
        s = self.n_win
        flat_idx = flat_region_index(r_idx, s * s)
        k_tab, v_tab = self._downsample_regions(k_reg), self._downsample_regions(v_reg)
        tokens = k_tab.shape[1]
        k_sel = torch.index_select(k_tab, 0, flat_idx)  # (N*S*S*topk, tokens, Cqk)
        v_sel = torch.index_select(v_tab, 0, flat_idx)
        if self.soft_routing and r_weight is not None:
            weight = r_weight.reshape(-1, 1, 1)
            k_sel, v_sel = k_sel * weight, v_sel * weight
        k_sel = k_sel.reshape(-1, self.topk * tokens, self.qk_dim)
        v_sel = v_sel.reshape(-1, self.topk * tokens, self.dim)

        _, _, h, w, _ = q_reg.shape
        out = self._attend(q_reg.reshape(-1, h * w, self.qk_dim), k_sel, v_sel)
        return from_regions(out.reshape(-1, s * s, h, w, self.dim), s)

    def _forward_index(self, x: Tensor) -> Tensor:
        s = self.n_win
        q, k, v = self.qkv(x)  # NHWC maps: the op's q, k, v
        q_reg, k_reg, v_reg = to_regions(q, s), to_regions(k, s), to_regions(v, s)
        r_weight, r_idx = self._route_regions(q_reg, k_reg)
        out = self._attend_regions(q_reg, k_reg, v_reg, r_idx, r_weight)  # the op's output o
        return out + self._lepe(v)

    def _forward_expand(self, x: Tensor) -> Tensor:
        """The official data path: patchify, project, gather over an expanded K/V."""
        s = self.n_win
        x_reg = to_regions(x, s)
        q, k, v = self.qkv(x_reg)  # (N, S*S, h, w, C)
        kv = torch.cat([k, v], dim=-1)
        n, p2, h, w, c_kv = kv.shape
        r_weight, r_idx = self.router(q.mean([2, 3]), k.mean([2, 3]))
        kv_pix = self._downsample_regions(kv).reshape(n, p2, -1, c_kv)
        tokens = kv_pix.shape[2]
        kv_sel = torch.gather(
            kv_pix.reshape(n, 1, p2, tokens, c_kv).expand(-1, p2, -1, -1, -1),
            dim=2,
            index=r_idx.reshape(n, p2, self.topk, 1, 1).expand(-1, -1, -1, tokens, c_kv),
        )
        if self.soft_routing:
            kv_sel = r_weight.reshape(n, p2, self.topk, 1, 1) * kv_sel
        k_sel, v_sel = kv_sel.split([self.qk_dim, self.dim], dim=-1)
        out = self._attend(
            q.reshape(-1, h * w, self.qk_dim),
            k_sel.reshape(-1, self.topk * tokens, self.qk_dim),
            v_sel.reshape(-1, self.topk * tokens, self.dim),
        )
        out = from_regions(out.reshape(n, p2, h, w, self.dim), s)
        return out + self._lepe(from_regions(v, s))
