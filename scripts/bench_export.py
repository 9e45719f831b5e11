#!/usr/bin/env python3
"""Benchmark: onnxruntime (CPU) latency and peak memory of our BRA export vs the official pattern.

Both graphs come from the same weights: ``gather_mode="index"`` (ours: routed K/V regions picked by
index with one Gather) and ``gather_mode="expand"`` (the official data path: ``Expand`` of K/V to
``p^2`` copies, then ``GatherElements``). Each measurement runs in a fresh process so that the
peak resident memory belongs to that graph alone; the peak is reset after the session is created
(``/proc/self/clear_refs``), so it measures inference (activations and ORT's arena), not loading.

    python scripts/bench_export.py --model biformer_tiny --batch 1 8 --runs 20

Prints a Markdown table (paste it into docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> None:
    """Reset VmHWM (Linux >= 4.0), so that the peak measures inference, not session creation."""
    Path("/proc/self/clear_refs").write_text("5")


def _child(path: str, batch: int, size: int, runs: int, threads: int) -> None:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    load_peak = _status_kib("VmHWM")
    after_load = _status_kib("VmRSS")
    _reset_peak_rss()
    session.run(None, {"input": x})  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM")
    times.sort()
    print(
        json.dumps(
            {
                "median_ms": 1000 * times[len(times) // 2],
                "min_ms": 1000 * times[0],
                "peak_rss_mib": peak / 1024,
                "load_rss_mib": after_load / 1024,
                "load_peak_rss_mib": load_peak / 1024,
            }
        )
    )


def _measure(path: Path, batch: int, size: int, runs: int, threads: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(path), str(batch), str(size), str(runs), str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    """Export both graphs, measure them, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="biformer_tiny")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", help="keep the exported graphs here (default: a temporary folder)")
    args = parser.parse_args()

    import onnxruntime
    import torch

    import edge_biformer
    from edge_biformer.export import export_onnx

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_export_"))
    torch.manual_seed(0)
    ours = edge_biformer.create_model(args.model)
    official = edge_biformer.create_model(args.model, gather_mode="expand")
    official.load_state_dict(ours.state_dict())
    graphs = {}
    candidates = (("ours (index Gather)", ours), ("official pattern (Expand+GatherElements)", official))
    for label, model in candidates:
        path = workdir / f"{args.model}_{model.stages[0][0].attn.gather_mode}.onnx"
        export_onnx(model, path, img_size=args.img_size, verify_batches=(1,))
        graphs[label] = path

    print(
        f"{args.model} at {args.img_size}x{args.img_size}, onnxruntime {onnxruntime.__version__} CPU, "
        f"{args.threads} threads, {platform.processor() or platform.machine()}, median of {args.runs} runs\n"
    )
    print(
        "| graph | batch | median latency (ms) | min (ms) | peak RSS during inference (MiB) "
        "| RSS after session load (MiB) | extra memory of inference (MiB) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for batch in args.batch:
        for label, path in graphs.items():
            m = _measure(path, batch, args.img_size, args.runs, args.threads)
            print(
                f"| {label} | {batch} | {m['median_ms']:.1f} | {m['min_ms']:.1f} | "
                f"{m['peak_rss_mib']:.0f} | {m['load_rss_mib']:.0f} | "
                f"{m['peak_rss_mib'] - m['load_rss_mib']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        sys.exit(main())
