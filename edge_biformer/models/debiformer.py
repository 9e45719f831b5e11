"""DeBiFormer (maclong01/DeBiFormer, ACCV 2024): Deformable Bi-level Routing Attention models.

Module tree, parameter names and shapes match the official ``classification/debiformer.py``
(``DeBiFormer``, ``Block``, ``DeBiLevelRoutingAttention``) so that its checkpoints load unchanged,
and the values are those of the official code after the two fixes its HEAD needs to run (the
``uto_pad`` keyword typo and the undefined agent-grid size ``Hg, Wg``; neither changes numerics).
What the model computes, step by step, is in ``docs/debiformer.md``.

Written for deployment:

* every 1x1 projection runs on NHWC maps (a MatMul by the conv's weight viewed as a matrix), so
  the routed attention's q (the agents), k and v are NHWC tensors, its output is an NHWC tensor
  and the routed K/V are picked by index (one ``Gather`` per table, no Expand + GatherElements):
  exactly the inputs and output of the ``BiLevelRoutingAttention`` plugin op, with the agent map
  (``Hk x Wk``) as the query map and the full-resolution map as the key map;
* the reference points and the query grid are built out of place in float32 from ``arange``,
  so that the torchscript exporter (which drops chained in-place slice updates) and the dynamo
  exporter both give a correct graph;
* the single offset channel is added to both axes of a grid built directly in GridSample's
  (x, y) order (no channel swap).

The quirks of the official model are kept (``docs/debiformer.md``, "Quirks kept").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_biformer.models.biformer import _per_stage
from edge_biformer.models.bra import (
    GATHER_MODES,
    BiLevelRoutingAttention,
    TopkRouting,
    flat_region_index,
    from_regions,
    multihead_attention,
    to_regions,
)

__all__ = ["DBRA_SETTINGS", "ConvMLP", "DeBiFormer", "DeBiFormerBlock", "DeformableBiLevelRoutingAttention"]

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

#: Block kinds by the stage's ``topks`` entry: (attn1, attn2) as ("bra"|"dbra", topk).
BLOCK_KINDS: dict[int, tuple[tuple[str, int], tuple[str, int]]] = {
    4: (("bra", 1), ("dbra", 4)),
    8: (("bra", 4), ("dbra", 8)),
    16: (("bra", 16), ("dbra", 16)),
    -2: (("dbra", 49), ("dbra", 49)),
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


class DeBiFormerBlock(nn.Module):
    """DeBiFormer block (official ``Block``): two (position embedding, attention, ConvMLP) halves.

    NCHW in and out. ``topk`` (the stage's ``topks`` entry) selects the attentions
    (:data:`BLOCK_KINDS`): 4, 8, 16 give BRA + DBRA, -2 gives DBRA + DBRA routing to all regions.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        qk_dim: int | None = None,
        qk_scale: float | None = None,
        kv_downsample_mode: str = "identity",
        topk: int = 4,
        param_attention: str = "qkvo",
        mlp_ratio: float = 4,
        param_size: str = "small",
        side_dwconv: int = 5,
        before_attn_dwconv: int = 3,
        pre_norm: bool = True,
        gather_mode: str = "index",
    ) -> None:
        super().__init__()
        if topk not in BLOCK_KINDS:
            raise ValueError(
                f"DeBiFormer topks entries must be one of {sorted(BLOCK_KINDS)} (the official forward "
                f"fails for the others), got {topk}"
            )
        if before_attn_dwconv < 1:
            raise ValueError(f"before_attn_dwconv must be positive, got {before_attn_dwconv}")
        if not pre_norm:
            raise ValueError("DeBiFormer supports pre_norm=True only (the released models)")
        qk_dim = qk_dim or dim
        # The official code pads by 1 whatever the kernel size; kept for weight compatibility.
        self.pos_embed1 = nn.Conv2d(dim, dim, kernel_size=before_attn_dwconv, padding=1, groups=dim)
        self.pos_embed2 = nn.Conv2d(dim, dim, kernel_size=before_attn_dwconv, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        common = {
            "dim": dim,
            "num_heads": num_heads,
            "n_win": n_win,
            "qk_dim": qk_dim,
            "qk_scale": qk_scale,
            "kv_downsample_mode": kv_downsample_mode,
            "param_attention": param_attention,
            "side_dwconv": side_dwconv,
            "gather_mode": gather_mode,
        }
        attns: list[nn.Module] = []
        for kind, k in BLOCK_KINDS[topk]:
            if kind == "bra":
                attns.append(BiLevelRoutingAttention(topk=k, **common))
            else:
                attns.append(DeformableBiLevelRoutingAttention(topk=k, param_size=param_size, **common))
        self.attn1, self.attn2 = attns
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp1 = ConvMLP(dim, mlp_ratio)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.norm4 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp2 = ConvMLP(dim, mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (N, C, H, W)."""
        x = (x + self.pos_embed1(x)).permute(0, 2, 3, 1)
        x = x + self.attn1(self.norm1(x))
        x = x + self.mlp1(self.norm2(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.pos_embed2(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.attn2(self.norm3(x))
        x = x + self.mlp2(self.norm4(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x.permute(0, 3, 1, 2)


class DeBiFormer(nn.Module):
    """DeBiFormer image classifier (eval-time equivalent of the official class).

    Training-only arguments of the official constructor (``drop_path_rate``, ``drop_rate``,
    ``use_checkpoint_stages``) are accepted and have no effect on inference; arguments the
    released models do not use and the official forward cannot run are refused with a reason.
    """

    def __init__(
        self,
        depth: Sequence[int] = (3, 4, 8, 3),
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: Sequence[int] = (64, 128, 320, 512),
        head_dim: int = 64,
        qk_scale: float | None = None,
        representation_size: int | None = None,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        use_checkpoint_stages: Sequence[int] = (),
        n_win: int = 7,
        kv_downsample_mode: str = "ada_avgpool",
        kv_per_wins: Sequence[int] = (2, 2, -1, -1),
        topks: Sequence[int] = (8, 8, -1, -1),
        side_dwconv: int = 5,
        layer_scale_init_value: float = -1,
        qk_dims: Sequence[int | None] = (None, None, None, None),
        param_routing: bool = False,
        diff_routing: bool = False,
        soft_routing: bool = False,
        pre_norm: bool = True,
        pe: str | None = None,
        pe_stages: Sequence[int] = (0,),
        before_attn_dwconv: int = 3,
        auto_pad: bool = False,
        kv_downsample_kernels: Sequence[int] = (4, 2, 1, 1),
        kv_downsample_ratios: Sequence[int] = (4, 2, 1, 1),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        param_attention: str = "qkvo",
        param_size: str = "small",
        mlp_dwconv: bool = False,
        gather_mode: str = "index",
    ) -> None:
        super().__init__()
        if pe not in (None, "none"):
            raise ValueError(f"pe={pe!r} is not supported (the official code supports only None/'none')")
        if representation_size:
            raise ValueError(
                "representation_size is not supported (the official code cannot build it either)"
            )
        if layer_scale_init_value > 0:
            raise ValueError("layer_scale_init_value > 0 is not supported (the released models use -1)")
        if param_routing or diff_routing or soft_routing or auto_pad or mlp_dwconv:
            raise ValueError(
                "param_routing, diff_routing, soft_routing, auto_pad and mlp_dwconv must be False for "
                "DeBiFormer (the released models; the official code's other paths are untested or broken)"
            )
        depth = _per_stage("depth", depth)
        embed_dim = _per_stage("embed_dim", embed_dim)
        qk_dims = [q or d for q, d in zip(_per_stage("qk_dims", qk_dims), embed_dim, strict=True)]
        topks = _per_stage("topks", topks)
        mlp_ratios = _per_stage("mlp_ratios", mlp_ratios)
        _per_stage("kv_per_wins", kv_per_wins)
        if head_dim < 1:
            raise ValueError(f"head_dim must be positive, got {head_dim}")

        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.n_win = n_win
        stem = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim[0] // 2, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
            nn.BatchNorm2d(embed_dim[0] // 2),
            nn.GELU(),
            nn.Conv2d(embed_dim[0] // 2, embed_dim[0], kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)),
            nn.BatchNorm2d(embed_dim[0]),
        )
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    nn.Conv2d(
                        embed_dim[i], embed_dim[i + 1], kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)
                    ),
                    nn.BatchNorm2d(embed_dim[i + 1]),
                )
            )
        num_heads = [qk // head_dim for qk in qk_dims]  # floor, as the official code does
        #: Per stage, the DBRA agent stride (None for an empty stage): the input-size rule of a
        #: stage is side % n_win == 0 and ceil(side / stride) % n_win == 0.
        self.agent_strides: list[int | None] = [
            DBRA_SETTINGS.get((param_size, embed_dim[i]), {}).get("stride") if depth[i] else None
            for i in range(4)
        ]
        self.stages = nn.ModuleList(
            nn.Sequential(
                *[
                    DeBiFormerBlock(
                        dim=embed_dim[i],
                        num_heads=num_heads[i],
                        n_win=n_win,
                        qk_dim=qk_dims[i],
                        qk_scale=qk_scale,
                        kv_downsample_mode=kv_downsample_mode,
                        topk=topks[i],
                        param_attention=param_attention,
                        mlp_ratio=mlp_ratios[i],
                        param_size=param_size,
                        side_dwconv=side_dwconv,
                        before_attn_dwconv=before_attn_dwconv,
                        pre_norm=pre_norm,
                        gather_mode=gather_mode,
                    )
                    for _ in range(depth[i])
                ]
            )
            for i in range(4)
        )
        self.norm = nn.BatchNorm2d(embed_dim[-1])
        self.pre_logits = nn.Identity()
        self.head = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> the normalised last feature map (N, C4, H/32, W/32)."""
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
        return self.pre_logits(self.norm(x))

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) images -> (N, num_classes) logits."""
        x = self.forward_features(x)
        return self.head(x.flatten(2).mean(-1))
