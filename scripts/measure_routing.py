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


def _int8_weight_share(model_path: Path, int8_nodes: list[str]) -> float:
    """Share of the weighted nodes' parameters that belong to INT8 nodes."""
    model = onnx.load(str(model_path))
    sizes = {i.name: int(np.prod(numpy_helper.to_array(i).shape)) for i in model.graph.initializer}
    total = quantized = 0
    chosen = set(int8_nodes)
    for node in model.graph.node:
        weighted = node.op_type in ("Conv", "Gemm") or (node.op_type == "MatMul" and node.input[1] in sizes)
        if not weighted:
            continue
        params = sizes.get(node.input[1], 0)
        total += params
        quantized += params if node.name in chosen else 0
    return quantized / max(total, 1)


def _int8_mac_share(model_path: Path, int8_nodes: list[str]) -> float:
    """Share of the weighted nodes' multiply-accumulates (per image) that belong to INT8 nodes."""
    model = onnx.load(str(model_path))
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {
        v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.value_info, *inferred.graph.output)
    }
    weights = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    total = quantized = 0
    chosen = set(int8_nodes)
    for node in model.graph.node:
        if len(node.input) < 2 or node.input[1] not in weights or node.output[0] not in dims:
            continue
        w, out = weights[node.input[1]], int(np.prod(dims[node.output[0]]))
        if node.op_type == "Conv":
            macs = out * int(np.prod(w[1:]))
        elif node.op_type == "MatMul":
            macs = out * int(w[0])
        elif node.op_type == "Gemm":
            macs = out * int(w[-1])
        else:
            continue
        total += macs
        quantized += macs if node.name in chosen else 0
    return quantized / max(total, 1)


def _logits(path: Path, batches: list[np.ndarray]) -> np.ndarray:
    from edge_biformer.runtime.cpu import cpu_session

    session = cpu_session(str(path))
    return np.concatenate([session.run(None, {"input": b})[0] for b in batches])


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The lowest per-image cosine similarity of two logit arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(((a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))).min())


def measure(name: str, plain: Path, calib_data, test_data, work: Path) -> list[str]:
    from edge_biformer import quantize
    from edge_biformer.check.routing import compare_routing, run_routing
    from edge_biformer.quantize.policy import ROUTING_PROTECTIONS, node_policy

    batches = list(test_data.batches())
    reference = run_routing(onnx.load(str(plain)), batches, with_logits=True)
    ref_logits = _logits(plain, batches)
    labels = test_data.labels
    variants: list[tuple[str, Path, float, float]] = []
    fp16 = work / f"{name}.fp16.onnx"
    quantize.quantize_fp16(plain, fp16)
    variants.append(("FP16", fp16, 0.0, 0.0))
    for protection in ROUTING_PROTECTIONS:
        out = work / f"{name}.int8.{protection}.onnx"
        quantize.quantize_int8(plain, out, calib_data, routing_protection=protection)
        policy = node_policy(onnx.load(str(plain)), routing_protection=protection)
        variants.append(
            (
                f"INT8, --protect-routing {protection}",
                out,
                _int8_weight_share(plain, policy.int8),
                _int8_mac_share(plain, policy.int8),
            )
        )
    rows = []
    for label, path, share, mac_share in variants:
        blocks = compare_routing(reference, run_routing(onnx.load(str(path)), batches))
        logits = _logits(path, batches)
        agree = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
        acc = f"{(logits.argmax(1) == labels).mean():.2%}" if labels is not None else "n/a"
        per_block = ", ".join(f"{b.agreement:.2%}" for b in blocks)
        worst = min(b.agreement for b in blocks)
        cos = _min_cosine(logits, ref_logits)
        rows.append(
            f"| {name} | {label} | {per_block} | {worst:.2%} | {agree:.2%} | {cos:.4f} | {acc} | {share:.0%} "
            f"| {mac_share:.0%} |"
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
