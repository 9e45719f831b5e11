"""Deformable Bi-level Routing Attention (DBRA), the attention of DeBiFormer, on NHWC maps.

Parameter names and shapes are those of the official ``DeBiLevelRoutingAttention``
(maclong01/DeBiFormer ``classification/debiformer.py``). Written for deployment (see
:mod:`edge_biformer.models.debiformer` and ``docs/debiformer.md``): 1x1 projections as MatMuls on
NHWC maps, the routed K/V picked by index, the sampling grids built out of place in float32, so
that the routed attention is exactly the ``BiLevelRoutingAttention`` plugin op with the agent map as
its query map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_biformer.models.bra import (
    GATHER_MODES,
    TopkRouting,
    flat_region_index,
    from_regions,
    multihead_attention,
    to_regions,
)

__all__ = ["DBRA_SETTINGS", "ChannelLayerNorm", "ConvMLP", "DeformableBiLevelRoutingAttention", "QKVConv"]

#: DBRA hyper-parameters by (param_size, width): offset groups, offset kernel, stride, inner MLP
#: ratio and the relative-position table base q_size. The official code keys them by the block
#: width, not by the stage; other widths cannot be built.
DBRA_SETTINGS: dict[tuple[str, int], dict[str, int]] = {
    **{
        (size, 64): {"groups": 1, "kernel": 9, "stride": 8, "mlp_ratio": 3, "q_size": 56}
        for size in ("tiny", "small")
    },
    **{
        (size, 128): {"groups": 2, "kernel": 7, "stride": 4, "mlp_ratio": 3, "q_size": 28}
        for size in ("tiny", "small")
    },
    **{
        (size, 256): {"groups": 4, "kernel": 5, "stride": 2, "mlp_ratio": 3, "q_size": 14}
        for size in ("tiny", "small")
    },
    ("tiny", 512): {"groups": 8, "kernel": 3, "stride": 1, "mlp_ratio": 3, "q_size": 7},
    ("small", 512): {"groups": 8, "kernel": 3, "stride": 1, "mlp_ratio": 1, "q_size": 7},
    ("base", 96): {"groups": 1, "kernel": 9, "stride": 8, "mlp_ratio": 3, "q_size": 56},
    ("base", 192): {"groups": 2, "kernel": 7, "stride": 4, "mlp_ratio": 3, "q_size": 28},
    ("base", 384): {"groups": 3, "kernel": 5, "stride": 2, "mlp_ratio": 3, "q_size": 14},
    ("base", 768): {"groups": 6, "kernel": 3, "stride": 1, "mlp_ratio": 3, "q_size": 7},
}


def conv1x1_nhwc(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 ``Conv2d`` applied to an NHWC map as a matrix product (same weights, NHWC out)."""
    weight = conv.weight.reshape(conv.out_channels, conv.in_channels)
    return F.linear(x, weight, conv.bias)


class ConvMLP(nn.Module):
    """The official ``TransformerMLPWithConv`` on NCHW maps: 1x1, + depthwise 3x3 residual, GELU, 1x1.

    Keys ``linear1.0``, ``dwc``, ``linear2.0``.
    """

    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.linear1 = nn.Sequential(nn.Conv2d(channels, hidden, 1))
        self.act = nn.GELU()
        self.linear2 = nn.Sequential(nn.Conv2d(hidden, channels, 1))
        self.dwc = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (N, C, H, W)."""
        x = self.linear1(x)
        x = self.act(x + self.dwc(x))
        return self.linear2(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (the official ``LayerNormProxy``, key ``norm``).

    The official offset network builds it with PyTorch's default eps 1e-5 (all other LayerNorms
    of the model use 1e-6); kept.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (N, C, H, W)."""
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class QKVConv(nn.Module):
    """The fused 1x1 q/k/v projection (key ``qkv.qkv``): channels ``[q, k, v]``, applied to NHWC maps."""

    def __init__(self, dim: int, qk_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.qk_dim = qk_dim
        self.qkv = nn.Conv2d(dim, qk_dim + qk_dim + dim, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` (N, H, W, C) -> NHWC ``q``, ``k``, ``v``."""
        q, k, v = conv1x1_nhwc(self.qkv, x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
        return q, k, v


class DeformableBiLevelRoutingAttention(nn.Module):
    """DBRA on NHWC maps, compatible with the official ``DeBiLevelRoutingAttention`` weights.

    Args mirror the official constructor (``kv_per_win`` & co. are accepted for compatibility;
    the released models use ``kv_downsample_mode="identity"``, the only mode supported here).
    ``param_size`` and ``dim`` select the offset network, stride and table size
    (:data:`DBRA_SETTINGS`). ``qk_scale`` defaults to ``qk_dim ** -0.5`` with the whole width,
    used by all three dot products (routing, routed attention, deformable attention).
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
        param_size: str = "small",
        gather_mode: str = "index",
    ) -> None:
        super().__init__()
        settings = DBRA_SETTINGS.get((param_size, dim))
        if settings is None:
            widths = sorted(w for size, w in DBRA_SETTINGS if size == param_size)
            raise ValueError(
                f"DBRA has no settings for width {dim} with param_size={param_size!r} "
                f"(the official table knows widths {widths or 'none'}; param_size is tiny, small or base)"
            )
        self.qk_dim = qk_dim or dim
        if self.qk_dim != dim:
            raise ValueError(
                f"DBRA needs qk_dim == dim (the official agents are dim wide), got {qk_dim}, {dim}"
            )
        if num_heads < 1 or dim % num_heads or num_heads % settings["groups"]:
            raise ValueError(
                f"DBRA width {dim}: num_heads ({num_heads}) must divide the width and be a multiple of "
                f"the {settings['groups']} offset groups"
            )
        if kv_downsample_mode != "identity":
            raise ValueError(f"DBRA supports kv_downsample_mode='identity' only, got {kv_downsample_mode!r}")
        if param_routing or diff_routing or soft_routing:
            raise ValueError("DBRA supports param_routing = diff_routing = soft_routing = False only")
        if auto_pad:
            raise ValueError(
                "DBRA supports auto_pad=False only (the released models; the official padded path is untried)"
            )
        if param_attention not in ("qkvo", "qkv"):
            raise ValueError(f"param_attention must be 'qkvo' or 'qkv', got {param_attention!r}")
        if gather_mode not in GATHER_MODES:
            raise ValueError(f"gather_mode must be one of {GATHER_MODES}, got {gather_mode!r}")
        if not 1 <= topk <= n_win * n_win:
            raise ValueError(f"topk must be in [1, n_win*n_win={n_win * n_win}], got {topk}")
        if side_dwconv < 1:
            raise ValueError(f"DBRA needs side_dwconv > 0 (its strided LCE), got {side_dwconv}")
        self.dim = dim
        self.n_win = n_win
        self.num_heads = num_heads
        self.topk = topk
        self.gather_mode = gather_mode
        self.scale = qk_scale or self.qk_dim**-0.5
        self.groups = settings["groups"]
        self.stride = settings["stride"]
        self.q_size = settings["q_size"]
        kernel = settings["kernel"]
        group_channels = dim // self.groups

        self.rpe_table = nn.Parameter(torch.zeros(num_heads, 2 * self.q_size - 1, 2 * self.q_size - 1))
        nn.init.trunc_normal_(self.rpe_table, std=0.01)
        self.lepe1 = nn.Conv2d(
            dim, dim, kernel_size=side_dwconv, stride=self.stride, padding=side_dwconv // 2, groups=dim
        )
        self.router = TopkRouting(self.qk_dim, topk, self.scale)
        self.qkv_conv = QKVConv(dim, self.qk_dim)
        self.proj_q = nn.Conv2d(dim, dim, 1)
        self.proj_k = nn.Conv2d(dim, dim, 1)
        self.proj_v = nn.Conv2d(dim, dim, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.unifyheads1 = nn.Conv2d(dim, dim, 1)
        self.conv_offset_q = nn.Sequential(
            nn.Conv2d(
                group_channels,
                group_channels,
                kernel,
                self.stride,
                kernel // 2,
                groups=group_channels,
                bias=False,
            ),
            ChannelLayerNorm(group_channels, eps=1e-5),
            nn.GELU(),
            nn.Conv2d(group_channels, 1, 1, 1, 0, bias=False),
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ConvMLP(dim, settings["mlp_ratio"])

    # -- grids ---------------------------------------------------------------------------------
    @staticmethod
    def _axis(size: int, device: torch.device) -> Tensor:
        return torch.arange(size, device=device).to(torch.float32)

    def sampling_grid(self, offset: Tensor) -> Tensor:
        """Agent positions, GridSample (x, y) order: clamp(cell centre + offset, -1, 1).

        ``offset`` (N*g, 1, Hk, Wk): the single offset channel, added to both coordinates.
        Returns (N*g, Hk, Wk, 2) float32, built out of place.
        """
        hk, wk = offset.shape[2], offset.shape[3]
        ref_y = (self._axis(hk, offset.device) + 0.5) / hk * 2.0 - 1.0
        ref_x = (self._axis(wk, offset.device) + 0.5) / wk * 2.0 - 1.0
        ref = torch.stack(
            [ref_x.reshape(1, wk).expand(hk, wk), ref_y.reshape(hk, 1).expand(hk, wk)], dim=-1
        )  # (Hk, Wk, 2)
        return (ref.unsqueeze(0) + offset.permute(0, 2, 3, 1)).clamp(-1.0, 1.0)

    @staticmethod
    def query_grid(height: int, width: int, device: torch.device) -> Tensor:
        """Pixel positions in the align_corners convention, (x, y) order: (H*W, 2) float32."""
        gy = DeformableBiLevelRoutingAttention._axis(height, device) / (height - 1.0) * 2.0 - 1.0
        gx = DeformableBiLevelRoutingAttention._axis(width, device) / (width - 1.0) * 2.0 - 1.0
        grid = torch.stack(
            [gx.reshape(1, width).expand(height, width), gy.reshape(height, 1).expand(height, width)], dim=-1
        )
        return grid.reshape(height * width, 2)

    # -- the routed attention (the BiLevelRoutingAttention op) ---------------------------------
    def route(self, qa: Tensor, k: Tensor) -> Tensor:
        """Routing of agent regions to key regions: ``r_idx`` (N, S*S, topk) int64."""
        s = self.n_win
        _, r_idx = self.router(to_regions(qa, s).mean([2, 3]), to_regions(k, s).mean([2, 3]))
        return r_idx

    def routed_attention(self, qa: Tensor, k: Tensor, v: Tensor, r_idx: Tensor) -> Tensor:
        """The ``BiLevelRoutingAttention`` op: agent queries ``qa`` (N, Hk, Wk, C) attend to the
        full-resolution tokens of their ``topk`` routed regions of ``k``, ``v`` (N, H, W, C).

        Returns (N, Hk, Wk, C) NHWC.
        """
        s = self.n_win
        q_reg, k_reg, v_reg = to_regions(qa, s), to_regions(k, s), to_regions(v, s)
        _, _, h, w, _ = q_reg.shape
        _, _, hk, wk, _ = k_reg.shape
        tokens = hk * wk
        k_tab = k_reg.reshape(-1, tokens, self.qk_dim)
        v_tab = v_reg.reshape(-1, tokens, self.dim)
        if self.gather_mode == "index":
            flat_idx = flat_region_index(r_idx, s * s)
            k_sel = torch.index_select(k_tab, 0, flat_idx)
            v_sel = torch.index_select(v_tab, 0, flat_idx)
        else:  # the official data path: gather over the K/V expanded to every query region
            n = r_idx.shape[0]
            kv = torch.cat([k_tab, v_tab], dim=-1).reshape(n, 1, s * s, tokens, self.qk_dim + self.dim)
            kv_sel = torch.gather(
                kv.expand(-1, s * s, -1, -1, -1),
                dim=2,
                index=r_idx.reshape(n, s * s, self.topk, 1, 1).expand(
                    -1, -1, -1, tokens, self.qk_dim + self.dim
                ),
            )
            k_sel, v_sel = kv_sel.split([self.qk_dim, self.dim], dim=-1)
        k_sel = k_sel.reshape(-1, self.topk * tokens, self.qk_dim)
        v_sel = v_sel.reshape(-1, self.topk * tokens, self.dim)
        out = multihead_attention(
            q_reg.reshape(-1, h * w, self.qk_dim),
            k_sel,
            v_sel,
            self.num_heads,
            self.scale,
            self.qk_dim,
            self.dim,
        )
        return from_regions(out.reshape(-1, s * s, h, w, self.dim), s)

    # -- forward -------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """``x``: (N, H, W, C) NHWC, the block's normalised input; returns NHWC of the same shape."""
        s = self.n_win
        batch, height, width, channels = x.shape
        if not torch.jit.is_tracing() and (height % s or width % s):
            raise ValueError(
                f"DBRA input {(height, width)} is not a multiple of n_win={s}; DeBiFormer needs input "
                f"sizes whose stage maps are multiples of {s} (224 and 448 are)"
            )
        g, cg = self.groups, channels // self.groups
        q, k, v = self.qkv_conv(x)  # NHWC, full resolution
        q_nchw = q.permute(0, 3, 1, 2)
        lepe = self.lepe1(v.permute(0, 3, 1, 2))  # (N, C, Hk, Wk)

        offset = self.conv_offset_q(q_nchw.reshape(batch * g, cg, height, width))  # (N*g, 1, Hk, Wk)
        hk, wk = offset.shape[2], offset.shape[3]
        if not torch.jit.is_tracing() and (hk % s or wk % s):
            raise ValueError(
                f"DBRA agent grid {(hk, wk)} (input {(height, width)}, stride {self.stride}) is not a "
                f"multiple of n_win={s}; use an input size such as 224 or 448"
            )
        pos = self.sampling_grid(offset)  # (N*g, Hk, Wk, 2), (x, y)
        agents = F.grid_sample(
            x.permute(0, 3, 1, 2).reshape(batch * g, cg, height, width),
            pos,
            mode="bilinear",
            padding_mode="zeros",
            align_corners=True,
        ).reshape(batch, channels, hk, wk)
        agents = agents.permute(0, 2, 3, 1)  # NHWC (N, Hk, Wk, C)

        qa = conv1x1_nhwc(self.proj_q, agents)  # the op's q: one NHWC agent map
        r_idx = self.route(qa, k)
        out = self.routed_attention(qa, k, v, r_idx) + lepe.permute(0, 2, 3, 1)  # the op's output + LCE
        out = agents + conv1x1_nhwc(self.unifyheads1, out)
        out = out + self.mlp(self.norm2(out).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = self.norm(out)
        kd = conv1x1_nhwc(self.proj_k, out).reshape(batch, hk * wk, self.num_heads, -1)
        vd = conv1x1_nhwc(self.proj_v, out).reshape(batch, hk * wk, self.num_heads, -1)

        # Deformable attention of every pixel's q over the agents, plus the relative-position bias.
        m = self.num_heads
        qp = q.reshape(batch, height * width, m, -1).permute(0, 2, 1, 3)  # (N, m, HW, c)
        logits = (qp @ kd.permute(0, 2, 3, 1)) * self.scale  # (N, m, HW, HkWk)
        disp = (
            self.query_grid(height, width, x.device).reshape(1, height * width, 1, 2)
            - pos.reshape(batch * g, 1, hk * wk, 2)
        ) * 0.5  # (N*g, HW, HkWk, 2), (x, y)
        table = self.rpe_table.unsqueeze(0).expand(batch, -1, -1, -1)
        table = table.reshape(batch * g, m // g, 2 * self.q_size - 1, 2 * self.q_size - 1)
        bias = F.grid_sample(table, disp, mode="bilinear", padding_mode="zeros", align_corners=True)
        attn = torch.softmax(logits + bias.reshape(batch, m, height * width, hk * wk), dim=-1)
        out = (attn @ vd.permute(0, 2, 1, 3)).permute(0, 2, 1, 3).reshape(batch, height, width, channels)
        return conv1x1_nhwc(self.proj_out, out)
