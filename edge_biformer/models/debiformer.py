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

from torch import Tensor, nn

from edge_biformer.models.biformer import _per_stage
from edge_biformer.models.bra import BiLevelRoutingAttention
from edge_biformer.models.dbra import DBRA_SETTINGS, ConvMLP, DeformableBiLevelRoutingAttention

__all__ = ["DBRA_SETTINGS", "ConvMLP", "DeBiFormer", "DeBiFormerBlock", "DeformableBiLevelRoutingAttention"]

#: Block kinds by the stage's ``topks`` entry: (attn1, attn2) as ("bra"|"dbra", topk).
BLOCK_KINDS: dict[int, tuple[tuple[str, int], tuple[str, int]]] = {
    4: (("bra", 1), ("dbra", 4)),
    8: (("bra", 4), ("dbra", 8)),
    16: (("bra", 16), ("dbra", 16)),
    -2: (("dbra", 49), ("dbra", 49)),
}


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
