"""The BRA calls of the BiFormer models, for the benchmark and the static cost report.

:func:`stage_shapes` lists the routed attention of stages 1-3 (stage 4 is full attention) of
BiFormer-T/S (same widths, different depths) and BiFormer-B, head dim 32, for classification at
224x224 (n_win 7) and two dense-prediction inputs: ADE20K segmentation at 512x512 (n_win 8) and COCO
detection at 800x1344 (n_win 16; the maps padded up to a multiple of n_win, as the models' auto-pad
does). Pure Python (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_biformer.kernels.launch import Geometry

#: Model -> (stage 1-3 channels, stage 1-3 heads); head dim 32, qk dim = width.
MODELS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "T/S": ((64, 128, 256), (2, 4, 8)),
    "B": ((96, 192, 384), (3, 6, 12)),
}
#: Routed regions per query region in stages 1-3.
TOPKS: tuple[int, int, int] = (1, 4, 16)
#: Task -> (image height, width, n_win).
TASKS: dict[str, tuple[int, int, int]] = {
    "cls224": (224, 224, 7),
    "seg512": (512, 512, 8),
    "det800x1344": (800, 1344, 16),
}


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class StageShape:
    """One BRA call of a model stage: square-region NHWC maps with ``Cqk = Cv = channels``."""

    model: str
    task: str
    stage: int  # 1..3
    h: int
    w: int
    channels: int
    heads: int
    n_win: int
    topk: int

    @property
    def name(self) -> str:
        return f"{self.model} {self.task} stage {self.stage}"

    @property
    def region(self) -> tuple[int, int]:
        """Tokens of one region (rows, columns)."""
        return self.h // self.n_win, self.w // self.n_win

    @property
    def scale(self) -> float:
        return self.channels**-0.5

    def geometry(self, batch: int) -> Geometry:
        c = self.channels
        return Geometry(batch, self.h, self.w, self.h, self.w, c, c, self.n_win, self.heads, self.topk)

    def compulsory_bytes(self, batch: int, elem: int = 2) -> int:
        """Bytes a call must move at least once: q, k, v and r_idx read, o written."""
        return batch * (4 * self.h * self.w * self.channels * elem + self.n_win**2 * self.topk * 4)

    def gathered_bytes(self, batch: int, elem: int = 2) -> int:
        """Size of the official code's gathered ``[N, S*S, topk, tokens, Cqk + Cv]`` K/V."""
        rh, rw = self.region
        return batch * self.n_win**2 * self.topk * rh * rw * 2 * self.channels * elem


def stage_shapes(tasks: list[str] | tuple[str, ...], models: list[str] | tuple[str, ...]) -> list[StageShape]:
    """The stage 1-3 BRA calls of ``models`` for ``tasks`` (keys of :data:`TASKS` / :data:`MODELS`)."""
    out = []
    for task in tasks:
        img_h, img_w, s = TASKS[task]
        for model in models:
            widths, heads = MODELS[model]
            for i in range(3):
                stride = 4 * 2**i  # the stage's map, padded up to a multiple of n_win
                h = _ceil_div(_ceil_div(img_h, stride), s) * s
                w = _ceil_div(_ceil_div(img_w, stride), s) * s
                out.append(StageShape(model, task, i + 1, h, w, widths[i], heads[i], s, TOPKS[i]))
    return out
