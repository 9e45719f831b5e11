"""BRA as people deploy it, written here: the official modules op for op, and small networks around them.

Nothing here is copied from the official code (rayleizhu/BiFormer) or from the public YOLO and U-Net
forks that paste it; these modules are written for the tests so that they *compute the same ops in
the same order*, which is what decides the exported graph:

* :class:`NchwBRA`: the official NCHW refactor (``ops/bra_nchw.py`` class ``nchwBRA`` with the token
  attention of ``ops/torch/rrsda.py``), copied into YOLO forks as ``BiLevelRoutingAttention_nchw``:
  a 1x1-conv qkv projection ``chunk``-ed on the channel axis, routing on ``avg_pool2d`` region means
  (``ceil_mode``, no padding counted), regions of ``H // n_win x W // n_win`` tokens (so a 20x20 map
  with ``n_win=7`` has 10x10 regions of 2x2 tokens), zero padding of q/k/v to whole regions, the
  region layout by ``view`` + a permuting ``einsum``, and the gather of an expanded K/V;
* :class:`LegacyBRA`: the official legacy module (``ops/bra_legacy.py``) on NHWC maps: patchify,
  qkv projection split into ``q`` and ``kv``, the optional pooling of K/V per region
  (``kv_downsample_mode``: ``ada_avgpool``, ``ada_maxpool``, ``maxpool``, ``avgpool``), the expand +
  gather, LCE on ``kv[..., qk_dim:]``; the einops ``rearrange`` calls are written as the reshape ->
  permute -> reshape they trace to;
* :class:`BiFormerBlock`: the official ``Block`` (``models/biformer.py``), the NCHW wrapper around the
  legacy module that YOLO forks use as ``BiFormerBlock`` (pooled K/V by default: ``ada_avgpool``);
* :class:`C2BRA`: Ultralytics' ``C2PSA`` with the NCHW module as the attention of its ``PSABlock``;
* :class:`TinyDetector`: a YOLO-like detector (strided convs, SPPF, one attention block at the P5
  map, a top-down merge, two detection outputs) with any of the blocks above;
* :class:`TinyUNet`: a BRAU-Net++-like U-Net with legacy BRA blocks in the encoder, the bottleneck
  and the decoder, skip connections concatenated and projected.

:func:`sharpen` scales the query/key projections so that the attention of random weights is far from
uniform: only then does a check of the attention output see a wrong pairing of keys and values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "C2BRA",
    "BiFormerBlock",
    "LegacyBRA",
    "NchwBRA",
    "TinyDetector",
    "TinyUNet",
    "bra_modules",
    "sharpen",
]


# -- the official NCHW module ----------------------------------------------------------------------


def _regions_of(x: Tensor, rows: int, cols: int, heads: int) -> tuple[Tensor, int, int]:
    """(B, C, H, W) -> (B, heads, regions, rows*cols, C/heads), as rrsda's grid-to-sequence does it."""
    b, c, height, width = x.shape
    grid_h, grid_w = height // rows, width // cols
    x = x.view(b, heads, c // heads, grid_h, rows, grid_w, cols)
    x = torch.einsum("bmdhpwq->bmhwpqd", x)
    return x.flatten(2, 3).flatten(-3, -2), grid_h, grid_w


def _map_of(x: Tensor, grid_h: int, grid_w: int, rows: int, cols: int) -> Tensor:
    """The inverse of :func:`_regions_of`: (B, heads, regions, tokens, d) -> (B, C, H, W)."""
    b, heads, _, _, d = x.shape
    x = x.view(b, heads, grid_h, grid_w, rows, cols, d)
    x = torch.einsum("bmhwpqd->bmdhpwq", x)
    return x.reshape(b, heads * d, grid_h * rows, grid_w * cols)


def routed_attention_nchw(
    q: Tensor, k: Tensor, v: Tensor, scale: float, graph: Tensor, region: tuple[int, int]
) -> Tensor:
    """The token attention of the NCHW module (auto padding on, as rrsda's default)."""
    batch, heads, q_regions, topk = graph.shape
    rows, cols = region
    height, width = q.shape[2], q.shape[3]
    pad_b, pad_r = (rows - height % rows) % rows, (cols - width % cols) % cols
    if pad_b > 0 or pad_r > 0:
        q, k, v = (F.pad(t, (0, pad_r, 0, pad_b)) for t in (q, k, v))
    q_seq, grid_h, grid_w = _regions_of(q, rows, cols, heads)
    k_seq = _regions_of(k, rows, cols, heads)[0]
    v_seq = _regions_of(v, rows, cols, heads)[0]
    _, _, kv_regions, tokens, head_dim = k_seq.shape
    index = graph.view(batch, heads, q_regions, topk, 1, 1).expand(-1, -1, -1, -1, tokens, head_dim)
    k_all = k_seq.view(batch, heads, 1, kv_regions, tokens, head_dim).expand(
        -1, -1, q_seq.size(2), -1, -1, -1
    )
    v_all = v_seq.view(batch, heads, 1, kv_regions, tokens, head_dim).expand(
        -1, -1, q_seq.size(2), -1, -1, -1
    )
    k_sel = torch.gather(k_all, dim=3, index=index)
    v_sel = torch.gather(v_all, dim=3, index=index)
    logits = (q_seq * scale) @ k_sel.flatten(-3, -2).transpose(-1, -2)
    out = torch.softmax(logits, dim=-1) @ v_sel.flatten(-3, -2)
    out = _map_of(out, grid_h, grid_w, rows, cols)
    if pad_b > 0 or pad_r > 0:
        out = out[:, :, :height, :width]
    return out


class NchwBRA(nn.Module):
    """BRA on NCHW maps, computed as the official ``nchwBRA`` computes it (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        qk_scale: float | None = None,
        topk: int = 4,
        side_dwconv: int = 3,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.dim, self.num_heads, self.n_win, self.topk = dim, num_heads, n_win, topk
        self.scale = qk_scale or dim**-0.5
        self.lepe = (
            nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
            if side_dwconv > 0
            else None
        )
        self.qkv_linear = nn.Conv2d(dim, 3 * dim, kernel_size=1)
        self.output_linear = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        _, _, height, width = x.size()
        region = (height // self.n_win, width // self.n_win)
        q, k, v = self.qkv_linear(x).chunk(3, dim=1)
        q_means = F.avg_pool2d(q.detach(), kernel_size=region, ceil_mode=True, count_include_pad=False)
        k_means = F.avg_pool2d(k.detach(), kernel_size=region, ceil_mode=True, count_include_pad=False)
        adjacency = q_means.permute(0, 2, 3, 1).flatten(1, 2) @ k_means.flatten(2, 3)
        _, index = torch.topk(adjacency, k=self.topk, dim=-1)
        graph = index.unsqueeze_(1).expand(-1, self.num_heads, -1, -1)
        out = routed_attention_nchw(q, k, v, self.scale, graph, region)
        out = out + (self.lepe(v) if self.lepe is not None else torch.zeros_like(v))
        return self.output_linear(out)


# -- the official legacy module ----------------------------------------------------------------------


def _patchify(x: Tensor, s: int) -> Tensor:
    """'n (j h) (i w) c -> n (j i) h w c'."""
    n, height, width, c = x.shape
    x = x.reshape(n, s, height // s, s, width // s, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, s * s, height // s, width // s, c)


def _kv_down(mode: str, kv_per_win: int, ratio: int) -> nn.Module:
    modes = {
        "identity": nn.Identity,
        "ada_avgpool": lambda: nn.AdaptiveAvgPool2d(kv_per_win),
        "ada_maxpool": lambda: nn.AdaptiveMaxPool2d(kv_per_win),
        "maxpool": lambda: nn.MaxPool2d(ratio) if ratio > 1 else nn.Identity(),
        "avgpool": lambda: nn.AvgPool2d(ratio) if ratio > 1 else nn.Identity(),
    }
    if mode not in modes:
        raise ValueError(f"kv_downsample_mode {mode!r} is not one of {sorted(modes)}")
    return modes[mode]()


class LegacyBRA(nn.Module):
    """BRA on NHWC maps, computed as the official legacy ``BiLevelRoutingAttention`` (hard routing)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        qk_dim: int | None = None,
        kv_per_win: int = 4,
        kv_downsample_ratio: int = 4,
        kv_downsample_mode: str = "identity",
        topk: int = 4,
        side_dwconv: int = 3,
        auto_pad: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.n_win, self.num_heads, self.topk = dim, n_win, num_heads, topk
        self.qk_dim = qk_dim or dim
        self.scale = self.qk_dim**-0.5
        self.auto_pad = auto_pad
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
        self.qkv = nn.Linear(dim, 2 * self.qk_dim + dim)
        self.wo = nn.Linear(dim, dim)
        self.kv_down = _kv_down(kv_downsample_mode, kv_per_win, kv_downsample_ratio)

    def forward(self, x: Tensor) -> Tensor:
        s, m, qk = self.n_win, self.num_heads, self.qk_dim
        if self.auto_pad:
            _, height_in, width_in, _ = x.size()
            pad_r, pad_b = (s - width_in % s) % s, (s - height_in % s) % s
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        n, height, width, _ = x.size()
        h, w = height // s, width // s
        q, kv = self.qkv(_patchify(x, s)).split([qk, qk + self.dim], dim=-1)
        c_kv = kv.shape[-1]
        q_pix = q.reshape(n, s * s, h * w, qk)
        tables = self.kv_down(kv.permute(0, 1, 4, 2, 3).reshape(n * s * s, c_kv, h, w))
        hk, wk = tables.shape[2], tables.shape[3]
        tables = tables.reshape(n, s, s, c_kv, hk, wk).permute(0, 1, 2, 4, 5, 3)
        kv_pix = tables.reshape(n, s * s, hk * wk, c_kv)
        q_win, k_win = q.mean([2, 3]), kv[..., 0:qk].mean([2, 3])
        lepe_in = kv[..., qk:].reshape(n, s, s, h, w, self.dim).permute(0, 5, 1, 3, 2, 4)
        lepe = self.lepe(lepe_in.reshape(n, self.dim, s * h, s * w).contiguous())
        lepe = (
            lepe.reshape(n, self.dim, s, h, s, w)
            .permute(0, 2, 3, 4, 5, 1)
            .reshape(n, height, width, self.dim)
        )
        _, r_idx = torch.topk((q_win * self.scale) @ k_win.transpose(-2, -1), k=self.topk, dim=-1)
        tokens = kv_pix.shape[2]
        selected = torch.gather(
            kv_pix.view(n, 1, s * s, tokens, c_kv).expand(-1, s * s, -1, -1, -1),
            dim=2,
            index=r_idx.view(n, s * s, self.topk, 1, 1).expand(-1, -1, -1, tokens, c_kv),
        )
        k_sel, v_sel = selected.split([qk, self.dim], dim=-1)
        k_sel = k_sel.reshape(n, s * s, self.topk, tokens, m, qk // m).permute(0, 1, 4, 5, 2, 3)
        k_sel = k_sel.reshape(n * s * s, m, qk // m, self.topk * tokens)
        v_sel = v_sel.reshape(n, s * s, self.topk, tokens, m, self.dim // m).permute(0, 1, 4, 2, 3, 5)
        v_sel = v_sel.reshape(n * s * s, m, self.topk * tokens, self.dim // m)
        q_pix = (
            q_pix.reshape(n, s * s, h * w, m, qk // m)
            .permute(0, 1, 3, 2, 4)
            .reshape(n * s * s, m, h * w, qk // m)
        )
        attn = torch.softmax((q_pix * self.scale) @ k_sel, dim=-1)
        out = (attn @ v_sel).reshape(n, s, s, m, h, w, self.dim // m).permute(0, 1, 4, 2, 5, 3, 6)
        out = self.wo(out.reshape(n, height, width, self.dim) + lepe)
        if self.auto_pad:
            out = out[:, :height_in, :width_in, :].contiguous()
        return out


class BiFormerBlock(nn.Module):
    """The official ``Block``: NCHW in and out, the legacy module on NHWC inside (pre-norm, MLP)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        topk: int = 4,
        kv_per_win: int = 4,
        kv_downsample_ratio: int = 4,
        kv_downsample_mode: str = "ada_avgpool",
        mlp_ratio: int = 2,
        auto_pad: bool = False,
    ) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = LegacyBRA(
            dim,
            num_heads=num_heads,
            n_win=n_win,
            kv_per_win=kv_per_win,
            kv_downsample_ratio=kv_downsample_ratio,
            kv_downsample_mode=kv_downsample_mode,
            topk=topk,
            side_dwconv=5,
            auto_pad=auto_pad,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.pos_embed(x)
        x = x.permute(0, 2, 3, 1)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)


# -- Ultralytics-style blocks --------------------------------------------------------------------------


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm + SiLU, as Ultralytics' ``Conv``."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class BRABlock(nn.Module):
    """``PSABlock`` with the NCHW module as its attention: ``x + attn(x)``, then ``x + ffn(x)``."""

    def __init__(self, c: int, num_heads: int = 8, n_win: int = 7, topk: int = 4) -> None:
        super().__init__()
        self.attn = NchwBRA(c, num_heads=num_heads, n_win=n_win, topk=topk)
        self.ffn = nn.Sequential(Conv(c, 2 * c, 1), Conv(2 * c, c, 1, act=False))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.ffn(x)


class C2BRA(nn.Module):
    """``C2PSA`` with :class:`BRABlock`: split in two halves, attention on one, concatenate, project."""

    def __init__(self, c1: int, c2: int, n: int = 1, e: float = 0.5, **bra: int) -> None:
        super().__init__()
        self.c = int(c1 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv(2 * self.c, c2, 1)
        self.m = nn.Sequential(*(BRABlock(self.c, **bra) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max pools, concatenated."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1)
        self.cv2 = Conv(hidden * 4, c2, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        y.extend(self.pool(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class TinyDetector(nn.Module):
    """A YOLO-like detector: stride-8 P4 and stride-16 P5 maps, one attention block after SPPF at P5.

    ``attention``: ``"c2bra"`` (C2PSA with the NCHW module), ``"biformer_block"`` (the official Block,
    pooled K/V unless ``kv_downsample_mode`` says otherwise) or ``"legacy"`` (the legacy module
    between NCHW permutes, YOLO-style). Outputs: ``boxes`` ``[N, 4, A]`` and ``scores`` ``[N, k, A]``
    (sigmoid) over the anchors of both maps.
    """

    def __init__(self, attention: str = "c2bra", width: int = 64, classes: int = 3, **bra: object) -> None:
        super().__init__()
        c = width
        self.stem = nn.Sequential(Conv(3, c // 4, 3, 2), Conv(c // 4, c // 2, 3, 2), Conv(c // 2, c, 3, 2))
        self.down = Conv(c, c, 3, 2)
        self.sppf = SPPF(c, c)
        if attention == "c2bra":
            self.attn: nn.Module = C2BRA(c, c, **bra)  # type: ignore[arg-type]
        elif attention == "biformer_block":
            self.attn = BiFormerBlock(c, **bra)  # type: ignore[arg-type]
        elif attention == "legacy":
            self.attn = _NhwcWrapper(LegacyBRA(c, **bra))  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown attention {attention!r}")
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.merge = Conv(2 * c, c, 3)
        self.box = nn.ModuleList([nn.Conv2d(c, 4, 1), nn.Conv2d(c, 4, 1)])
        self.cls = nn.ModuleList([nn.Conv2d(c, classes, 1), nn.Conv2d(c, classes, 1)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p4 = self.stem(x)
        p5 = self.attn(self.sppf(self.down(p4)))
        p4 = self.merge(torch.cat([self.up(p5), p4], 1))
        boxes = torch.cat([head(p).flatten(2) for head, p in zip(self.box, (p4, p5), strict=True)], 2)
        scores = torch.cat([head(p).flatten(2) for head, p in zip(self.cls, (p4, p5), strict=True)], 2)
        return boxes, scores.sigmoid()


class _NhwcWrapper(nn.Module):
    """An NHWC module between NCHW permutes with a residual (how YOLO forks paste the legacy module)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return x + self.inner(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# -- a BRAU-Net++-like U-Net -------------------------------------------------------------------------


class TinyUNet(nn.Module):
    """Encoder-decoder with legacy BRA blocks at every level (BRAU-Net++'s layout, much smaller).

    ``image`` -> stride-4 stem -> [BRA at 1/4] -> down -> [BRA at 1/8] -> down -> [BRA at 1/16,
    bottleneck] -> up + skip -> [BRA at 1/8] -> up + skip -> [BRA at 1/4] -> 1x1 head, upsampled x4.
    Five BRA blocks; topk grows with depth as in BiFormer (1, 4, 16).
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 96), n_win: int = 7, classes: int = 2) -> None:
        super().__init__()
        c1, c2, c3 = widths

        def block(dim: int, topk: int) -> BiFormerBlock:
            return BiFormerBlock(
                dim, num_heads=dim // 16, n_win=n_win, topk=topk, kv_downsample_mode="identity"
            )

        self.stem = nn.Sequential(
            nn.Conv2d(3, c1, 3, 2, 1), nn.BatchNorm2d(c1), nn.GELU(), nn.Conv2d(c1, c1, 3, 2, 1)
        )
        self.enc1, self.enc2, self.mid = block(c1, 1), block(c2, 4), block(c3, 16)
        self.down1 = nn.Sequential(nn.Conv2d(c1, c2, 3, 2, 1), nn.BatchNorm2d(c2))
        self.down2 = nn.Sequential(nn.Conv2d(c2, c3, 3, 2, 1), nn.BatchNorm2d(c3))
        self.up2 = nn.ConvTranspose2d(c3, c2, 4, 2, 1)
        self.up1 = nn.ConvTranspose2d(c2, c1, 4, 2, 1)
        self.skip2, self.skip1 = nn.Linear(2 * c2, c2), nn.Linear(2 * c1, c1)
        self.dec2, self.dec1 = block(c2, 4), block(c1, 1)
        self.head = nn.Conv2d(c1, classes, 1)

    @staticmethod
    def _merge(x: Tensor, skip: Tensor, proj: nn.Linear) -> Tensor:
        merged = torch.cat([x.permute(0, 2, 3, 1), skip.permute(0, 2, 3, 1)], -1)
        return proj(merged).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        s1 = self.enc1(self.stem(x))
        s2 = self.enc2(self.down1(s1))
        y = self.mid(self.down2(s2))
        y = self.dec2(self._merge(self.up2(y), s2, self.skip2))
        y = self.dec1(self._merge(self.up1(y), s1, self.skip1))
        return F.interpolate(self.head(y), scale_factor=4.0, mode="nearest")


# -- helpers ------------------------------------------------------------------------------------------


def bra_modules(model: nn.Module) -> list[nn.Module]:
    """The BRA modules of ``model`` (one plugin node each after the rewrite)."""
    return [m for m in model.modules() if isinstance(m, (NchwBRA, LegacyBRA))]


@torch.no_grad()
def sharpen(model: nn.Module, factor: float = 4.0) -> nn.Module:
    """Scale every BRA's query/key projection by ``factor`` (values untouched), in place.

    Random weights give near-uniform attention (logits of ~0.3), which averages the routed values
    whichever key each is paired with; sharper logits make the attention depend on the pairing, so
    the checks (and a wrong rewrite) can tell. Also moves BatchNorm statistics away from the identity
    so that activations neither vanish nor saturate.
    """
    for module in bra_modules(model):
        if isinstance(module, NchwBRA):
            weight, bias, qk = module.qkv_linear.weight, module.qkv_linear.bias, 2 * module.dim
        else:
            weight, bias, qk = module.qkv.weight, module.qkv.bias, 2 * module.qk_dim
        weight[:qk] *= factor
        bias[:qk] *= factor
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2, generator=gen)
            module.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


def export(model: nn.Module, x: Tensor, path: str, exporter: str, *, slim: bool = False) -> str:
    """Export ``model`` at the static input ``x`` with ``exporter`` (``torchscript``/``dynamo``).

    ``slim``: then simplify with onnxslim, as Ultralytics' exporter does (``simplify=True``).
    """
    import contextlib
    import io
    import warnings

    model.eval()
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                model,
                (x,),
                path,
                input_names=["images"],
                opset_version=17,
                do_constant_folding=True,
                dynamo=False,
            )
        elif exporter == "dynamo":
            program = torch.onnx.export(
                model,
                (x,),
                input_names=["images"],
                opset_version=18,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            program.save(path, external_data=False)
        else:
            raise ValueError(f"unknown exporter {exporter!r}")
    if slim:
        import onnx
        import onnxslim

        with contextlib.redirect_stdout(sink):
            onnx.save(onnxslim.slim(onnx.load(path)), path)
    return path
