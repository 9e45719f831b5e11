"""BiFormer (official ``models/biformer.py`` semantics and state_dict layout).

The module tree, parameter names and shapes match the official ``BiFormer`` so that its released
checkpoints load unchanged; the routed attention is
:class:`~edge_biformer.models.bra.BiLevelRoutingAttention`, which computes the same values
with an export-friendly data path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from edge_biformer.models.attention import Attention, AttentionLePE, ConvMixer
from edge_biformer.models.bra import BiLevelRoutingAttention


class DWConv(nn.Module):
    """3x3 depthwise conv on an NHWC map (the optional ``mlp_dwconv``; key ``dwconv``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class Block(nn.Module):
    """BiFormer block: conv position embedding, token mixer, MLP; NCHW in and out.

    ``topk > 0`` selects BRA, ``-1`` global attention, ``-2`` global attention with LePE and
    ``0`` the conv mixer, as in the official code.
    """

    def __init__(
        self,
        dim: int,
        layer_scale_init_value: float = -1,
        num_heads: int = 8,
        n_win: int = 7,
        qk_dim: int | None = None,
        qk_scale: float | None = None,
        kv_per_win: int = 4,
        kv_downsample_ratio: int = 4,
        kv_downsample_kernel: int | None = None,
        kv_downsample_mode: str = "ada_avgpool",
        topk: int = 4,
        param_attention: str = "qkvo",
        param_routing: bool = False,
        diff_routing: bool = False,
        soft_routing: bool = False,
        mlp_ratio: float = 4,
        mlp_dwconv: bool = False,
        side_dwconv: int = 5,
        before_attn_dwconv: int = 3,
        pre_norm: bool = True,
        auto_pad: bool = False,
        gather_mode: str = "index",
    ) -> None:
        super().__init__()
        qk_dim = qk_dim or dim
        # The official code pads by 1 whatever the kernel size; kept for weight compatibility.
        self.pos_embed = (
            nn.Conv2d(dim, dim, kernel_size=before_attn_dwconv, padding=1, groups=dim)
            if before_attn_dwconv > 0
            else None
        )
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn: nn.Module
        if topk > 0:
            self.attn = BiLevelRoutingAttention(
                dim=dim,
                num_heads=num_heads,
                n_win=n_win,
                qk_dim=qk_dim,
                qk_scale=qk_scale,
                kv_per_win=kv_per_win,
                kv_downsample_ratio=kv_downsample_ratio,
                kv_downsample_kernel=kv_downsample_kernel,
                kv_downsample_mode=kv_downsample_mode,
                topk=topk,
                param_attention=param_attention,
                param_routing=param_routing,
                diff_routing=diff_routing,
                soft_routing=soft_routing,
                side_dwconv=side_dwconv,
                auto_pad=auto_pad,
                gather_mode=gather_mode,
            )
        elif topk == -1:
            self.attn = Attention(dim=dim)
        elif topk == -2:
            self.attn = AttentionLePE(dim=dim, side_dwconv=side_dwconv)
        elif topk == 0:
            self.attn = ConvMixer(dim)
        else:
            raise ValueError(f"topk must be > 0 (BRA), 0, -1 or -2, got {topk}")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(mlp_ratio * dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            DWConv(hidden) if mlp_dwconv else nn.Identity(),
            nn.GELU(),
            nn.Linear(hidden, dim),
        )
        self.use_layer_scale = layer_scale_init_value > 0
        if self.use_layer_scale:
            self.gamma1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.pre_norm = pre_norm

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (N, C, H, W)."""
        if self.pos_embed is not None:
            x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)
        gamma1 = self.gamma1 if self.use_layer_scale else 1.0
        gamma2 = self.gamma2 if self.use_layer_scale else 1.0
        if self.pre_norm:
            x = x + gamma1 * self.attn(self.norm1(x))
            x = x + gamma2 * self.mlp(self.norm2(x))
        else:
            x = self.norm1(x + gamma1 * self.attn(x))
            x = self.norm2(x + gamma2 * self.mlp(x))
        return x.permute(0, 3, 1, 2)


def _per_stage(name: str, value: Sequence, n: int = 4) -> list:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} needs {n} values (one per stage), got {value!r}")
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} needs {n} values (one per stage), got {value}")
    return value


class BiFormer(nn.Module):
    """BiFormer image classifier (eval-time equivalent of the official class).

    Training-only arguments of the official constructor (``drop_path_rate``, ``drop_rate``,
    ``use_checkpoint_stages``) are accepted and have no effect on inference.
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
        depth = _per_stage("depth", depth)
        embed_dim = _per_stage("embed_dim", embed_dim)
        qk_dims = [q or d for q, d in zip(_per_stage("qk_dims", qk_dims), embed_dim, strict=True)]
        topks = _per_stage("topks", topks)
        mlp_ratios = _per_stage("mlp_ratios", mlp_ratios)
        kv_per_wins = _per_stage("kv_per_wins", kv_per_wins)
        kv_downsample_ratios = _per_stage("kv_downsample_ratios", kv_downsample_ratios)
        kv_downsample_kernels = _per_stage("kv_downsample_kernels", kv_downsample_kernels)

        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.n_win = n_win
        self.auto_pad = auto_pad

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

        if head_dim < 1:
            raise ValueError(f"head_dim must be positive, got {head_dim}")
        num_heads = [qk // head_dim for qk in qk_dims]  # floor, as the official code does
        self.stages = nn.ModuleList()
        for i in range(4):
            self.stages.append(
                nn.Sequential(
                    *[
                        Block(
                            dim=embed_dim[i],
                            layer_scale_init_value=layer_scale_init_value,
                            topk=topks[i],
                            num_heads=num_heads[i],
                            n_win=n_win,
                            qk_dim=qk_dims[i],
                            qk_scale=qk_scale,
                            kv_per_win=kv_per_wins[i],
                            kv_downsample_ratio=kv_downsample_ratios[i],
                            kv_downsample_kernel=kv_downsample_kernels[i],
                            kv_downsample_mode=kv_downsample_mode,
                            param_attention=param_attention,
                            param_routing=param_routing,
                            diff_routing=diff_routing,
                            soft_routing=soft_routing,
                            mlp_ratio=mlp_ratios[i],
                            mlp_dwconv=mlp_dwconv,
                            side_dwconv=side_dwconv,
                            before_attn_dwconv=before_attn_dwconv,
                            pre_norm=pre_norm,
                            auto_pad=auto_pad,
                            gather_mode=gather_mode,
                        )
                        for _ in range(depth[i])
                    ]
                )
            )
        self.norm = nn.BatchNorm2d(embed_dim[-1])
        self.pre_logits = nn.Identity()
        self.head = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> the normalised last feature map (N, C4, H/32, W/32)."""
        for downsample, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(downsample(x))
        return self.pre_logits(self.norm(x))

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) images -> (N, num_classes) logits."""
        x = self.forward_features(x)
        return self.head(x.flatten(2).mean(-1))


#: The stride of each stage's output relative to the input image (stem /4, then /2 per stage).
STAGE_REDUCTIONS = (4, 8, 16, 32)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (timm's ``LayerNorm2d``: eps 1e-6, affine)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: (N, C, H, W) -> normalised over C, same shape."""
        x = nn.functional.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps
        )
        return x.permute(0, 3, 1, 2)


class BiFormerBackbone(BiFormer):
    """BiFormer as the official mmdet/mmseg ``BiFormer_mm`` builds it: the stage outputs of a dense backbone.

    The classifier's ``head`` and final ``norm`` are not built; each output stage ``i`` of
    ``out_indices`` gets the official per-stage norm ``extra_norms.{i}`` (``LayerNorm2d``, eps 1e-6),
    applied to the stage output. The state dict is the official backbone's (without its
    ``backbone.`` prefix), so mmdet/mmseg checkpoints load with every key used. Stages after the
    last output stage are not built; with ``out_indices`` a subset of (0, 1, 2, 3) the checkpoint's
    keys of stages and norms that are not built are ignored (:meth:`ignored_checkpoint_key`).

    ``forward`` returns a tuple of (N, C_i, H_i, W_i) maps, one per entry of ``out_indices``, in
    that order; ``feature_info`` lists their ``num_chs``, ``reduction`` and ``module`` (timm).
    """

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), **kwargs: Any) -> None:
        out_indices = tuple(int(i) for i in out_indices)
        if (
            not out_indices
            or len(set(out_indices)) != len(out_indices)
            or any(i not in range(4) for i in out_indices)
        ):
            raise ValueError(
                f"out_indices must be distinct stage indices out of 0, 1, 2, 3, got {list(out_indices)}"
            )
        kwargs.setdefault("num_classes", 0)
        super().__init__(**kwargs)
        # As the official backbone: no classifier head and no final norm.
        del self.head, self.norm, self.pre_logits
        self.out_indices = out_indices
        last = max(out_indices)
        del self.downsample_layers[last + 1 :]
        del self.stages[last + 1 :]
        # ModuleDict keyed by stage index: the state-dict names are the official extra_norms.{i}.
        self.extra_norms = nn.ModuleDict(
            {str(i): LayerNorm2d(self.embed_dim[i]) for i in sorted(out_indices)}
        )
        self.feature_info = [
            {
                "num_chs": self.embed_dim[i],
                "reduction": STAGE_REDUCTIONS[i],
                "module": f"stages.{i}",
                "index": i,
            }
            for i in out_indices
        ]

    def ignored_checkpoint_key(self, key: str) -> bool:
        """Whether ``key`` of a full official backbone checkpoint belongs to a part this model leaves out.

        Those are the classifier ``head.``/``norm.`` (absent from official dense checkpoints, ignored
        if present), the ``extra_norms`` of stages not in ``out_indices`` and the stages after the
        last output stage.
        """
        parts = key.split(".")
        if parts[0] in ("head", "norm"):
            return True
        if len(parts) > 1 and parts[1].isdigit():
            index = int(parts[1])
            if parts[0] == "extra_norms":
                return index in range(4) and index not in self.out_indices
            if parts[0] in ("stages", "downsample_layers"):
                return max(self.out_indices) < index < 4
        return False

    def forward_features(self, x: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        """(N, 3, H, W) -> the normalised outputs of the stages in ``out_indices``."""
        features = {}
        for i, (downsample, stage) in enumerate(zip(self.downsample_layers, self.stages, strict=True)):
            x = stage(downsample(x))
            if i in self.out_indices:
                features[i] = self.extra_norms[str(i)](x)
        return tuple(features[i] for i in self.out_indices)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        """(N, 3, H, W) images -> one (N, C_i, ceil(H/s_i), ceil(W/s_i)) map per output stage."""
        return self.forward_features(x)
