#!/usr/bin/env python3
"""Benchmark: wall time of the quantize stage (FP16 conversion, INT8 calibration) on the CPU.

Exports the model (random weights unless ``--weights``), then times, each in the same process:

- FP16 with AutoCast's own dead-node clean-up (quadratic in the graph size) and with ours
  (linear; the two graphs are compared byte for byte),
- INT8 (modelopt PTQ, onnxruntime CPU calibration, then FP16 for the other ops) on
  ``--calib-num`` generated images (``scripts/train_reduced_biformer.py``'s shapes, resized by the
  official eval transform).

    python scripts/bench_quantize.py --model biformer_tiny --calib-num 64

Prints a Markdown table (paste it into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shapes_images(folder: Path, count: int) -> Path:
    spec = importlib.util.spec_from_file_location(
        "train_reduced", REPO / "scripts" / "train_reduced_biformer.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_image_folder(folder, "calib", count)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="biformer_tiny")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--calib-num", type=int, default=64)
    parser.add_argument("--skip-original", action="store_true", help="do not time AutoCast's own clean-up")
    args = parser.parse_args()

    import onnx
    import torch

    from edge_biformer import calib, quantize
    from edge_biformer.export import ExportOptions, build_model, export_onnx
    from edge_biformer.quantize.fp16 import convert_fp16_model
    from edge_biformer.quantize.policy import node_policy
    from edge_biformer.quantize.toolkit import quiet_modelopt

    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench_quantize_") as work:
        work_dir = Path(work)
        source = work_dir / "model.onnx"
        model = build_model(
            ExportOptions(model=args.model, weights=args.weights, img_size=(args.img_size,) * 2)
        )
        start = time.perf_counter()
        export_onnx(model, source, img_size=args.img_size)
        rows.append(("export (torchscript) + verification", time.perf_counter() - start, "reference point"))
        graph = onnx.load(str(source))
        fp32 = node_policy(graph).fp32
        nodes = len(graph.graph.node)

        converted = {}
        for fast in (False, True) if not args.skip_original else (True,):
            with quiet_modelopt():
                start = time.perf_counter()
                converted[fast] = convert_fp16_model(
                    onnx.load(str(source)), fp32, fast=fast
                ).SerializeToString()
                seconds = time.perf_counter() - start
            label = "linear clean-up (ours)" if fast else "AutoCast's own clean-up"
            rows.append((f"fp16 conversion, {label}", seconds, f"{nodes} nodes"))
        if len(converted) == 2:
            same = converted[True] == converted[False]
            rows.append(("fp16: the two graphs are identical", 0.0, "yes" if same else "NO"))

        images = _shapes_images(work_dir / "images", args.calib_num)
        data = calib.load(images, img_size=args.img_size, batch_size=8)
        start = time.perf_counter()
        quantize.quantize_int8(source, work_dir / "model.int8.onnx", data, cache=None)
        rows.append(
            (
                f"int8: calibration on {len(data)} images + FP16 of the rest",
                time.perf_counter() - start,
                "entropy",
            )
        )

    print(
        f"\n{args.model} at {args.img_size}, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, onnx {onnx.__version__}, python {sys.version.split()[0]}\n"
    )
    print("| step | seconds | note |\n| --- | --- | --- |")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.1f} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
