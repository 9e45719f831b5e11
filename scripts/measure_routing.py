#!/usr/bin/env python3
"""Measure routing fidelity of INT8 (and FP16) BiFormer graphs under each routing protection.

For each model it exports the FP32 graph, converts it to FP16 and quantizes it to INT8 with each
``--protect-routing`` choice, runs all of them in onnxruntime on held-out images, and prints per
variant: the routing agreement of every BRA block with FP32 (identical top-k sets), the top-1
agreement of the logits, the top-1 accuracy (labelled data only) and how much of the network is
INT8 (the share of the weighted nodes' parameters and of their multiply-accumulates).

    python scripts/measure_routing.py              # the reduced BiFormer and DeBiFormer, BiFormer-T

Models: the reduced BiFormer and the reduced DeBiFormer trained by scripts/train_reduced_biformer.py
(tests/data checkpoints; 64 calibration and 300 test images from its generator; the DeBiFormer's
stage 1 routes with topk 1, as the released models do), and BiFormer-T with its seeded random
initialisation (seed 0, the recipe `edge-biformer build` uses without --weights) on the built-in
demo photographs (16 calibration images, the same 16 as test images: the numbers describe routing
stability, not accuracy). Prints Markdown (paste it into docs/routing.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _node_costs(model_path: Path) -> dict[str, tuple[int, int]]:
    """Per weighted node (Conv, Gemm, MatMul with a constant weight): its parameters and its
    multiply-accumulates per image (output elements times the reduction length)."""
    model = onnx.load(str(model_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {
        v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.value_info, *inferred.graph.output)
    }
    weights = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    costs: dict[str, tuple[int, int]] = {}
    for node in model.graph.node:
        constant_weight = len(node.input) > 1 and node.input[1] in weights
        if node.op_type not in ("Conv", "Gemm", "MatMul") or not constant_weight:
            continue
        w = weights[node.input[1]]
        out = int(np.prod(dims[node.output[0]])) if node.output[0] in dims else 0
        reduction = {"Conv": int(np.prod(w[1:])), "MatMul": int(w[0])}.get(node.op_type, int(w[-1]))
        costs[node.name] = (int(np.prod(w)), out * reduction)
    return costs


def _int8_shares(costs: dict[str, tuple[int, int]], int8_nodes: list[str]) -> tuple[float, float]:
    """Share of the weighted nodes' parameters, and of their multiply-accumulates, that are INT8."""
    chosen = set(int8_nodes)
    shares = []
    for column in (0, 1):
        total = sum(c[column] for c in costs.values())
        shares.append(sum(c[column] for n, c in costs.items() if n in chosen) / max(total, 1))
    return shares[0], shares[1]


def _logits(path: Path, batches: list[np.ndarray]) -> np.ndarray:
    from edge_biformer.runtime.cpu import cpu_session

    session = cpu_session(str(path))
    return np.concatenate([session.run(None, {"input": b})[0] for b in batches])


def measure(name: str, plain: Path, calib_data, test_data, work: Path) -> list[str]:
    from edge_biformer import quantize
    from edge_biformer.check import compare
    from edge_biformer.check.routing import compare_routing, run_routing
    from edge_biformer.quantize.policy import ROUTING_PROTECTIONS, node_policy

    batches = list(test_data.batches())
    reference = run_routing(onnx.load(str(plain)), batches, with_logits=True)
    ref_logits = _logits(plain, batches)
    labels = test_data.labels
    costs = _node_costs(plain)
    graph = onnx.load(str(plain))
    variants: list[tuple[str, Path, tuple[float, float]]] = []
    fp16 = work / f"{name}.fp16.onnx"
    quantize.quantize_fp16(plain, fp16)
    variants.append(("FP16", fp16, (0.0, 0.0)))
    for protection in ROUTING_PROTECTIONS:
        out = work / f"{name}.int8.{protection}.onnx"
        quantize.quantize_int8(plain, out, calib_data, routing_protection=protection)
        policy = node_policy(graph, routing_protection=protection)
        variants.append((f"INT8, --protect-routing {protection}", out, _int8_shares(costs, policy.int8)))
    rows = []
    for label, path, (share, mac_share) in variants:
        blocks = compare_routing(reference, run_routing(onnx.load(str(path)), batches))
        c = compare(
            _logits(path, batches), ref_logits, "build.int8", labels=labels
        )  # the numbers, not a verdict
        acc = f"{c.top1_accuracy:.2%}" if c.top1_accuracy is not None else "n/a"
        per_block = ", ".join(f"{b.agreement:.2%}" for b in blocks)
        worst = min(b.agreement for b in blocks)
        rows.append(
            f"| {name} | {label} | {per_block} | {worst:.2%} | {c.top1_agreement:.2%} | {c.min_cosine:.4f} "
            f"| {acc} | {share:.0%} | {mac_share:.0%} |"
        )
    ref_acc = f"{(ref_logits.argmax(1) == labels).mean():.2%}" if labels is not None else "n/a"
    rows.append(f"| {name} | FP32 (reference) | 100% each | 100% | 100% | 1 | {ref_acc} | 0% | 0% |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-tiny", action="store_true", help="only the reduced model (fast)")
    args = parser.parse_args()

    from edge_biformer import calib, create_model
    from edge_biformer.export import ExportOptions, build_model, export_onnx
    from tests.reduced_model import CHECKPOINT, DEBI_CHECKPOINT, export_reduced, train_script

    rows = []
    with tempfile.TemporaryDirectory(prefix="measure_routing_") as tmp:
        work = Path(tmp)
        script = train_script()
        plain = export_reduced(work / "reduced.onnx", weights=CHECKPOINT)
        cal = calib.load(script.write_image_folder(work / "calib", "calib", 64), img_size=48, batch_size=8)
        test_dir = script.write_image_folder(work / "test", "test", 300)
        test = calib.load(test_dir, img_size=48, batch_size=8, labelled=True)
        rows += measure("reduced BiFormer (trained)", plain, cal, test, work)
        size = script.DEBI_IMG_SIZE
        debi = work / "reduced_debi.onnx"
        model = create_model("debiformer_tiny", weights=DEBI_CHECKPOINT, **script.REDUCED_DEBI_CONFIG)
        export_onnx(model.eval(), debi, img_size=size)
        debi_cal = calib.load(work / "calib", img_size=size, batch_size=8)
        debi_test = calib.load(test_dir, img_size=size, batch_size=8, labelled=True)
        rows += measure("reduced DeBiFormer (trained)", debi, debi_cal, debi_test, work)
        if not args.skip_tiny:
            tiny = work / "tiny.onnx"
            export_onnx(build_model(ExportOptions(model="biformer_tiny")), tiny, img_size=224)
            demo = calib.load(calib.DEMO_SOURCE, img_size=224, batch_size=8)
            rows += measure("BiFormer-T (seeded random weights)", tiny, demo, demo, work)
    print(
        "\n| model | graph | routing agreement per block | worst block | top-1 agreement | min cosine "
        "| top-1 accuracy | INT8 share of weights | INT8 share of MACs |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
