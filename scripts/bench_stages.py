#!/usr/bin/env python3
"""Benchmark: time and peak memory of each CPU stage of a build, for three kinds of model.

Each stage runs as its own CLI process (``python -m edge_biformer <stage> ...``), so its peak resident
memory is its own (``ru_maxrss`` of the child):

- ``export``  PyTorch -> ONNX with onnxruntime verification (registry models only),
- ``rewrite`` BRA -> plugin nodes, with the per-block and whole-graph checks (``cpu_session``),
- ``fp16``    the FP16 conversion,
- ``int8``    INT8 calibration (``--calib-num`` images, onnxruntime on the CPU) and Q/DQ insertion,
- ``rewrite int8`` the rewrite of the INT8 graph, with its checks.

Models (``--models``, comma-separated):

- ``tiny224``: BiFormer-T classifier at 224 (random weights),
- ``small512``: BiFormer-S backbone (``--features-only``, 4 outputs) at 512x512 with n_win 16,
- ``yolo640``: a YOLOv8n-sized detector (3.4 M parameters: CSP backbone to stride 32, SPPF, one BRA at the
  20x20 P5 map, a PAN neck and a decoupled head with the decode on 3 scales) at 640x640, static batch 1.

    python scripts/bench_stages.py --models tiny224,small512,yolo640 --calib-num 32

Prints a Markdown table (docs/benchmarks.md, "Stages on the CPU").
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


#: Runs the CLI in this process and prints its own peak RSS (KiB) last on stderr.
_WRAPPER = (
    "import resource, runpy, sys\n"
    "sys.argv = ['edge-biformer', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('edge_biformer', run_name='__main__')\n"
    "finally:\n"
    "    print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def _run(argv: list[str], log: Path) -> tuple[float, float]:
    """Run one CLI process; returns (seconds, peak RSS of that process in MiB)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    with log.open("a") as f:
        f.write("$ edge-biformer " + " ".join(argv) + "\n" + proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} failed (exit {proc.returncode}); see {log}:\n{proc.stderr[-2000:]}"
        )
    peak = next(
        int(line.split()[1]) for line in reversed(proc.stderr.splitlines()) if line.startswith("MAXRSS")
    )
    return seconds, peak / 1024


def yolo_like(path: Path) -> Path:
    """Export the YOLOv8n-sized detector (seeded) as Ultralytics does: static images 1x3x640x640."""
    import torch
    from torch import nn

    from tests.pipeline.own_models import BraNCHW, seeded

    def conv(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())

    class C2f(nn.Module):
        def __init__(self, cin: int, cout: int, n: int = 1) -> None:
            super().__init__()
            self.c = cout // 2
            self.cv1, self.cv2 = conv(cin, 2 * self.c, 1), conv((2 + n) * self.c, cout, 1)
            self.m = nn.ModuleList(
                nn.Sequential(conv(self.c, self.c), conv(self.c, self.c)) for _ in range(n)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = list(self.cv1(x).chunk(2, 1))
            for m in self.m:
                y.append(y[-1] + m(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.cv1, self.cv2, self.m = conv(c, c // 2, 1), conv(c * 2, c, 1), nn.MaxPool2d(5, 1, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = [self.cv1(x)]
            for _ in range(3):
                y.append(self.m(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class Detector(nn.Module):
        def __init__(self, classes: int = 80) -> None:
            super().__init__()
            w = (16, 32, 64, 128, 256)
            self.b1 = nn.Sequential(conv(3, w[0], 3, 2), conv(w[0], w[1], 3, 2), C2f(w[1], w[1]))
            self.b2 = nn.Sequential(conv(w[1], w[2], 3, 2), C2f(w[2], w[2], 2))  # P3
            self.b3 = nn.Sequential(conv(w[2], w[3], 3, 2), C2f(w[3], w[3], 2))  # P4
            self.b4 = nn.Sequential(conv(w[3], w[4], 3, 2), C2f(w[4], w[4]), SPPF(w[4]))  # P5
            self.bra = BraNCHW(w[4], n_win=5, topk=4)  # 20x20 map: 5x5 regions of 4x4 tokens
            self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
            self.n4, self.n3 = C2f(w[4] + w[3], w[3]), C2f(w[3] + w[2], w[2])
            self.d3, self.d4 = conv(w[2], w[2], 3, 2), conv(w[3], w[3], 3, 2)
            self.p4, self.p5 = C2f(w[2] + w[3], w[3]), C2f(w[3] + w[4], w[4])
            self.box = nn.ModuleList(
                nn.Sequential(conv(c, 64), conv(64, 64), nn.Conv2d(64, 4, 1)) for c in w[2:]
            )
            self.cls = nn.ModuleList(
                nn.Sequential(conv(c, 80), conv(80, 80), nn.Conv2d(80, classes, 1)) for c in w[2:]
            )

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            p3 = self.b2(self.b1(images))
            p4 = self.b3(p3)
            p5 = self.bra(self.b4(p4))
            n4 = self.n4(torch.cat([self.up(p5), p4], 1))
            n3 = self.n3(torch.cat([self.up(n4), p3], 1))
            o4 = self.p4(torch.cat([self.d3(n3), n4], 1))
            o5 = self.p5(torch.cat([self.d4(o4), p5], 1))
            outs = []
            for i, (f, stride) in enumerate(zip((n3, o4, o5), (8, 16, 32), strict=True)):
                n, _, h, w = f.shape
                ys, xs = torch.meshgrid(
                    torch.arange(h, dtype=f.dtype), torch.arange(w, dtype=f.dtype), indexing="ij"
                )
                grid = torch.stack([xs, ys]).reshape(1, 2, h * w) + 0.5
                raw = self.box[i](f).reshape(n, 4, h * w)
                xy = (grid + raw[:, :2].tanh()) * stride
                wh = raw[:, 2:].exp().clamp(max=64.0) * stride
                outs.append(torch.cat([xy, wh, self.cls[i](f).reshape(n, -1, h * w).sigmoid()], 1))
            return torch.cat(outs, 2)  # [1, 84, 8400], as YOLOv8's output0

    model = seeded(Detector())
    params = sum(p.numel() for p in model.parameters())
    torch.onnx.export(
        model, torch.rand(1, 3, 640, 640), str(path), input_names=["images"], output_names=["output0"],
        opset_version=17, dynamo=False,
    )  # fmt: skip
    print(f"yolo640: {params / 1e6:.2f} M parameters", flush=True)
    return path


def bench_model(name: str, work: Path, calib: Path, log: Path) -> list[tuple[str, str, float, float, float]]:
    """Rows (model, stage, seconds, peak MiB, size MB) of one model."""
    rows = []
    if name == "yolo640":
        t0 = time.perf_counter()
        onnx_path = yolo_like(work / "yolo.onnx")
        rows.append((name, "export (torch.onnx, in process)", time.perf_counter() - t0, float("nan"), 0.0))
        pre = ["--preprocess", "yolo"]
    else:
        onnx_path = work / f"{name}.onnx"
        args = (
            ["--model", "biformer_tiny", "--img-size", "224"]
            if name == "tiny224"
            else ["--model", "biformer_small", "--features-only", "--img-size", "512", "--n-win", "16"]
        )
        s, m = _run(["export", *args, "--output", str(onnx_path)], log)
        rows.append((name, "export (+ onnxruntime verification)", s, m, 0.0))
        pre = []
    size = onnx_path.stat().st_size / 1e6
    rows[-1] = (*rows[-1][:4], size)
    w = str(work / name)
    stages = (
        ("rewrite fp32 (+ block and graph checks)", ["rewrite", str(onnx_path), "-o", f"{w}.plugin.onnx"]),
        ("quantize fp16", ["quantize", str(onnx_path), "--precision", "fp16", "-o", f"{w}.fp16.onnx"]),
        (
            "quantize int8 (calibration + Q/DQ)",
            ["quantize", str(onnx_path), "--precision", "int8", "--calib-data", str(calib), *pre,
             "-o", f"{w}.int8.onnx"],
        ),
        ("rewrite int8 (+ checks)", ["rewrite", f"{w}.int8.onnx", "-o", f"{w}.int8.plugin.onnx"]),
    )  # fmt: skip
    for stage, argv in stages:
        s, m = _run(argv, log)
        out = Path(argv[-1])
        rows.append((name, stage, s, m, out.stat().st_size / 1e6 if out.is_file() else 0.0))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="tiny224,small512,yolo640")
    parser.add_argument("--calib-num", type=int, default=32)
    args = parser.parse_args()
    import importlib.util

    import torch

    cores = os.cpu_count()
    print(f"machine: {platform.machine()}, {cores} cores; torch {torch.__version__}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        spec = importlib.util.spec_from_file_location(
            "train_reduced", REPO / "scripts" / "train_reduced_biformer.py"
        )
        assert spec is not None and spec.loader is not None
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        script.write_image_folder(work / "calib", "calib", args.calib_num)
        for name in args.models.split(","):
            rows += bench_model(name, work, work / "calib", work / "log.txt")
            for row in (r for r in rows if r[0] == name):
                print("  " + " | ".join(str(v) for v in row), flush=True)
    print("\n| model | stage | time (s) | peak RSS (MiB) | output (MB) |\n| --- | --- | --- | --- | --- |")
    for model, stage, seconds, mib, mb in rows:
        peak = f"{mib:.0f}" if mib == mib else ""  # NaN: measured in this process
        print(f"| {model} | {stage} | {seconds:.1f} | {peak} | {mb:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
