"""Routing fidelity: the library's numbers against an independent computation, a perturbed routing
that must be reported and can fail the check, the routing protection policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_biformer import calib
from edge_biformer.check.routing import compare_routing, routing_taps, run_routing
from edge_biformer.cli.main import main
from tests.reduced_model import CHECKPOINT, export_reduced, train_script

pytest.importorskip(
    "modelopt.onnx.quantization", reason="nvidia-modelopt (a default dependency) is not installed"
)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained reduced model: FP32 export, INT8 (default policy), its own images."""
    from edge_biformer.quantize import quantize_int8

    root = tmp_path_factory.mktemp("routing")
    plain = export_reduced(root / "plain.onnx", weights=CHECKPOINT)
    images = train_script().write_image_folder(root / "calib", "calib", 32)
    quantize_int8(plain, root / "int8.onnx", calib.load(images, img_size=48, batch_size=8))
    test = train_script().write_image_folder(root / "test", "test", 48)
    return {"plain": plain, "int8": root / "int8.onnx", "test": test}


def _batches(folder: Path) -> list[np.ndarray]:
    return list(calib.load(folder, img_size=48, batch_size=8).batches())


def _topk_indices_by_hand(path: Path, batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every TopK's indices, read by this test's own graph surgery (not the library's)."""
    model = onnx.load(str(path))
    topks = [n for n in model.graph.node if n.op_type == "TopK"]
    for node in topks:
        model.graph.output.append(helper.make_tensor_value_info(node.output[1], TensorProto.INT64, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [n.output[1] for n in topks]
    runs = [session.run(names, {"input": b}) for b in batches]
    return {n.name: np.concatenate([r[i] for r in runs]) for i, n in enumerate(topks)}


def test_agreement_equals_an_independent_computation(graphs: dict[str, Path]) -> None:
    batches = _batches(graphs["test"])
    library = compare_routing(
        run_routing(onnx.load(str(graphs["plain"])), batches, with_logits=True),
        run_routing(onnx.load(str(graphs["int8"])), batches),
    )
    ref, got = _topk_indices_by_hand(graphs["plain"], batches), _topk_indices_by_hand(graphs["int8"], batches)
    assert [b.block for b in library] == list(ref)  # every BRA block, in graph order
    for block in library:
        a, b = ref[block.block], got[block.block]
        k = a.shape[-1]
        a, b = a.reshape(-1, k), b.reshape(-1, k)
        same = [set(x) == set(y) for x, y in zip(a.tolist(), b.tolist(), strict=True)]
        overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(a.tolist(), b.tolist(), strict=True)])
        assert block.pairs == len(same) and block.identical == sum(same)
        assert block.mean_overlap == pytest.approx(overlap)
        assert block.margin_kept  # margins come from the FP32 logits
    assert min(b.agreement for b in library) < 0.99  # INT8 (default policy) flips some regions here


def test_order_inside_a_set_does_not_matter() -> None:
    rng = np.random.default_rng(0)
    indices = np.stack([rng.permutation(9)[:4] for _ in range(20)]).reshape(2, 10, 4)
    shuffled = np.stack([rng.permutation(row) for row in indices.reshape(-1, 4)]).reshape(indices.shape)
    (block,) = compare_routing({"t": {"indices": indices}}, {"t": {"indices": shuffled}})
    assert block.agreement == 1.0 and block.mean_overlap == 1.0
    changed = shuffled.copy()
    changed[0, 0] = [i for i in range(9) if i not in indices[0, 0]][:4]  # a wholly other set
    (block,) = compare_routing({"t": {"indices": indices}}, {"t": {"indices": changed}})
    assert block.flipped == 1 and block.mean_overlap == pytest.approx(1 - 1 / 20)


def test_plugin_graph_routing_is_read_from_the_topk_feeding_r_idx(
    graphs: dict[str, Path], tmp_path: Path
) -> None:
    rewritten = tmp_path / "int8.plugin.onnx"
    assert main(["rewrite", str(graphs["int8"]), "-o", str(rewritten)]) == 0
    model = onnx.load(str(rewritten))
    plugins = [n for n in model.graph.node if n.op_type == "BiLevelRoutingAttention"]
    taps = routing_taps(model)
    assert len(taps) == len(plugins) == 3
    assert [t.name for t in taps] == [t.name for t in routing_taps(onnx.load(str(graphs["plain"])))]


def _coarse_routing(source: Path, out: Path, block: str, scale: float) -> None:
    """``source`` with a Q/DQ of coarse ``scale`` on the routing logits (TopK input) of ``block``."""
    model = onnx.load(str(source))
    model.graph.initializer.extend(
        [numpy_helper.from_array(np.array(scale, np.float32), "coarse_s"),
         numpy_helper.from_array(np.array(0, np.int8), "coarse_z")]
    )  # fmt: skip
    nodes = []
    for node in model.graph.node:
        if node.op_type == "TopK" and node.name == block:
            logits = node.input[0]
            nodes += [
                helper.make_node("QuantizeLinear", [logits, "coarse_s", "coarse_z"], [logits + "_q"]),
                helper.make_node(
                    "DequantizeLinear", [logits + "_q", "coarse_s", "coarse_z"], [logits + "_dq"]
                ),
            ]
            node.input[0] = logits + "_dq"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))


def test_a_perturbed_routing_is_reported_and_fails_the_gate(
    graphs: dict[str, Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    argv = ["build", "--from-onnx", str(graphs["plain"]), "--precision", "fp16", "--no-rewrite",
            "--check-data", str(graphs["test"]), "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    fp16 = next(c for c in report["comparisons"] if c["name"].startswith("fp16 onnx"))
    assert [b["agreement"] for b in fp16["routing"]] == [1.0, 1.0, 1.0]  # FP16 routes as FP32 here
    # Round the first block's routing logits to 64 levels over their range (no clipping).
    first = fp16["routing"][0]["block"]
    logits = run_routing(onnx.load(str(graphs["plain"])), _batches(graphs["test"]), with_logits=True)
    scale = float(np.abs(logits[first]["logits"]).max()) / 32
    _coarse_routing(out / "model.fp16.onnx", out / "model.fp16.onnx", first, scale)

    def fp16_row() -> dict:
        report = json.loads((out / "report.json").read_text())
        return next(c for c in report["comparisons"] if c["name"].startswith("fp16 onnx"))

    capsys.readouterr()
    main(["check", str(out)])  # reported, not gated (the outputs may fail on their own: flips matter)
    printed = capsys.readouterr().out
    assert f"WARNING: check fp16 onnx (onnxruntime): routing of {first}" in printed
    by_block = {b["block"]: b["agreement"] for b in fp16_row()["routing"]}
    assert by_block[first] < 0.99  # (the later blocks see the changed attention output too)
    assert not any("min-routing-agreement" in f for f in fp16_row()["failures"])
    assert "## Routing" in (out / "report.md").read_text()
    assert main(["check", str(out), "--min-routing-agreement", "0.99"]) == 1
    assert "--min-routing-agreement 99.00%" in capsys.readouterr().out
    assert any(f.startswith(f"routing of {first}") for f in fp16_row()["failures"])


@pytest.mark.slow
def test_protecting_the_routing_inputs_routes_as_fp32(graphs: dict[str, Path], tmp_path: Path) -> None:
    """The option docs/routing.md gives for >= 99 %: nothing upstream of a routing TopK in INT8."""
    from edge_biformer.quantize import quantize_int8

    images = train_script().write_image_folder(tmp_path / "calib", "calib", 32)
    protected = tmp_path / "int8.inputs.onnx"
    result = quantize_int8(
        graphs["plain"], protected, calib.load(images, img_size=48, batch_size=8), routing_protection="inputs"
    )
    assert (
        result.policy["routing_protection"] == "inputs" and result.policy["routing_inputs_high_precision"] > 0
    )
    assert result.quantized_nodes > 0  # the rest of the network is still INT8
    batches = _batches(graphs["test"])
    blocks = compare_routing(
        run_routing(onnx.load(str(graphs["plain"])), batches, with_logits=True),
        run_routing(onnx.load(str(protected)), batches),
    )
    assert len(blocks) == 3 and min(b.agreement for b in blocks) >= 0.99
