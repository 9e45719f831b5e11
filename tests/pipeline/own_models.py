"""Graphs "of one's own" for ``build --onnx``: a detector and a segmenter with BRA, written here.

They are not BiFormers: other input names, a static batch (the detector, as Ultralytics exports),
several outputs (boxes and scores), a dense map (the segmenter), 0-1 RGB inputs. The BRA block is the
package's own module wrapped NCHW -> NHWC, as YOLO forks paste the official one after a backbone stage.
Weights are seeded; BatchNorm statistics are set so that activations neither vanish nor explode.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edge_biformer.models.bra import BiLevelRoutingAttention


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class BraNCHW(nn.Module):
    """BRA on an NCHW map (permute in and out, residual), as YOLO plug-ins use it."""

    def __init__(self, dim: int, n_win: int, topk: int) -> None:
        super().__init__()
        self.attn = BiLevelRoutingAttention(dim, num_heads=2, n_win=n_win, topk=topk, side_dwconv=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TinyDetector(nn.Module):
    """Stem to stride 8, BRA at the P3 map, two decoupled heads with a YOLO-style decode.

    Outputs ``boxes`` ``[N, 4, A]`` (xywh in input pixels: grid + sigmoid offsets, times the stride)
    and ``scores`` ``[N, classes, A]`` (sigmoid), ``A = (H/8) * (W/8)`` anchors.
    """

    def __init__(self, classes: int = 5, width: int = 32, n_win: int = 4, topk: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 16, 2), _conv(16, width, 2), _conv(width, width, 2))
        self.bra = BraNCHW(width, n_win, topk)
        self.box = nn.Sequential(_conv(width, width), nn.Conv2d(width, 4, 1))
        self.cls = nn.Sequential(_conv(width, width), nn.Conv2d(width, classes, 1))
        self.stride = 8

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.bra(self.stem(images))
        n, _, h, w = f.shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=f.dtype), torch.arange(w, dtype=f.dtype), indexing="ij")
        grid = torch.stack([xs, ys]).reshape(1, 2, h * w)
        raw = self.box(f).reshape(n, 4, h * w)
        xy = (grid + raw[:, :2].sigmoid() * 2 - 0.5) * self.stride
        wh = (raw[:, 2:].sigmoid() * 4) * self.stride
        scores = self.cls(f).reshape(n, -1, h * w).sigmoid()
        return torch.cat([xy, wh], 1), scores


class TinySegmenter(nn.Module):
    """A U-Net: two encoder stages, BRA at the bottleneck, a decoder with skips, a class map at input size."""

    def __init__(self, classes: int = 4, n_win: int = 4, topk: int = 4) -> None:
        super().__init__()
        self.enc1 = _conv(3, 16, 2)
        self.enc2 = _conv(16, 32, 2)
        self.bra = BraNCHW(32, n_win, topk)
        self.dec2 = _conv(32 + 16, 16)
        self.head = nn.Conv2d(16 + 3, classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(image)
        e2 = self.bra(self.enc2(e1))
        d2 = self.dec2(torch.cat([nn.functional.interpolate(e2, scale_factor=2.0, mode="nearest"), e1], 1))
        up = nn.functional.interpolate(d2, scale_factor=2.0, mode="nearest")
        return self.head(torch.cat([up, image], 1))


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded weights and BatchNorm statistics that keep activations alive; eval mode."""
    torch.manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.8, 1.2)
            m.bias.data.uniform_(-0.1, 0.1)
    return module.eval()


def export_detector(path: Path, size: int = 64) -> Path:
    """The detector as Ultralytics exports one: static ``images`` 1x3xSxS, outputs ``boxes``, ``scores``."""
    model = seeded(TinyDetector())
    torch.onnx.export(
        model, torch.rand(1, 3, size, size), str(path), input_names=["images"],
        output_names=["boxes", "scores"], opset_version=17, dynamo=False,
    )  # fmt: skip
    return path


def export_segmenter(path: Path, size: int = 64) -> Path:
    """The segmenter with a dynamic batch: ``image`` Nx3xSxS -> ``mask`` NxKxSxS."""
    model = seeded(TinySegmenter(), seed=1)
    torch.onnx.export(
        model, torch.rand(2, 3, size, size), str(path), input_names=["image"], output_names=["mask"],
        dynamic_axes={"image": {0: "batch"}, "mask": {0: "batch"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
    return path
