"""The rewrite of INT8 (Q/DQ) graphs: checked with fake quantization off, and able to fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_biformer import calib
from edge_biformer.cli.main import main
from edge_biformer.ops.bra import CONTRACT
from edge_biformer.rewrite import RewriteError, Rewriter, load_onnx, rewrite_onnx
from tests.reduced_model import CHECKPOINT, export_reduced, train_script

pytest.importorskip(
    "modelopt.onnx.quantization", reason="nvidia-modelopt (a default dependency) is not installed"
)


@pytest.fixture(scope="module")
def int8_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained reduced model, quantized to INT8 on 32 of its own calibration images."""
    from edge_biformer.quantize import quantize_int8

    root = tmp_path_factory.mktemp("int8")
    plain = export_reduced(root / "reduced.onnx", weights=CHECKPOINT)
    images = train_script().write_image_folder(root / "calib", "calib", 32)
    data = calib.load(images, img_size=train_script().IMG_SIZE, batch_size=8)
    quantize_int8(plain, root / "reduced.int8.onnx", data)
    return root / "reduced.int8.onnx"


def test_int8_graph_is_rewritten_and_verified(int8_graph: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "q.plugin.onnx"
    assert main(["rewrite", str(int8_graph), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "Q/DQ pairs bypassed on both sides): PASS" in stdout and "with Q/DQ:" in stdout
    assert f"--from-onnx {out} --precision int8" in stdout  # the graph's precision, not fp32
    report = rewrite_onnx(int8_graph, tmp_path / "again.onnx")
    check = report.output_check
    assert report.replaced == 3 and report.precision == "int8" and check is not None and check.passed
    assert check.fake_quant_bypassed > 0 and check.quantized is not None
    assert check.max_rel_diff <= 2e-3  # float16 rounding of the attention, not INT8 steps
    model = onnx.load(str(out))
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == report.qdq_after // 2


def test_a_wrong_rewrite_of_an_int8_graph_fails(int8_graph: Path) -> None:
    """Keys paired with the wrong values (k and v swapped at the first plugin node) fail the graph check."""
    rewriter = Rewriter(load_onnx(int8_graph), source=str(int8_graph))
    rewriter.find()
    rewriter.check()
    rewritten = rewriter.apply()
    node = next(n for n in rewritten.graph.node if CONTRACT.is_node(n))
    node.input[1], node.input[2] = node.input[2], node.input[1]
    with pytest.raises(RewriteError, match="outputs differ from the original's"):
        rewriter.verify_outputs()


def test_a_plugin_graph_builds_only_at_its_precision(int8_graph: Path, tmp_path: Path, capsys) -> None:
    plugin = tmp_path / "q.plugin.onnx"
    rewrite_onnx(int8_graph, plugin)
    capsys.readouterr()
    rc = main(["build", "--from-onnx", str(plugin), "--precision", "fp16", "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and "graph of precision int8" in err and "--precision int8" in err
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_bypass_fake_quant_also_behind_a_graph_output() -> None:
    """onnxruntime's quantize_static ends graphs with Q -> DQ -> output: the bypass keeps one producer."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edge_biformer.rewrite.checks import bypass_fake_quant

    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.5])
    zero = helper.make_tensor("z", TensorProto.INT8, [], [0])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rdq"]),
        helper.make_node("Neg", ["rdq"], ["n"]),
        helper.make_node("QuantizeLinear", ["n", "s", "z"], ["nq"]),
        helper.make_node("DequantizeLinear", ["nq", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [scale, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    bypassed, pairs = bypass_fake_quant(model)
    assert pairs == 2
    onnx.checker.check_model(bypassed)
    x = np.array([-1.0, 0.3, 1.26, 2.0], np.float32)
    run = ort.InferenceSession(bypassed.SerializeToString(), providers=["CPUExecutionProvider"]).run
    np.testing.assert_array_equal(run(None, {"x": x})[0], -np.maximum(x, 0))  # no rounding to 0.5 steps


def test_inplace_attention_outputs_of_a_float16_graph_allow_upstream_drift_not_a_wrong_rewrite() -> None:
    """check_graph judges graph outputs by the graph entry and attention outputs in place by their own:
    in a float16 graph an attention output carries the drift of the blocks before it (BiFormer-T INT8:
    up to 0.12 of its range while the logits stay within 4e-4), a wrong rewrite moves it by its range."""
    from edge_biformer.rewrite.checks import check_graph

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 10)).astype(np.float32)
    attn = rng.standard_normal((2, 8, 8, 16)).astype(np.float32)
    scale = float(np.abs(attn).max())
    labels = {"attn_out": "block 3 (stages.1.1/attn)"}
    expected = {"logits": logits, "attn_out": attn}
    drifted = {"logits": logits * (1 + 3e-4), "attn_out": attn + 0.12 * scale * np.sign(attn)}
    ok = check_graph(expected, drifted, {"input": [2, 3, 64, 64]}, True, labels=labels)
    assert ok.passed, ok.comparison.failures
    assert ok.comparison.outputs["attn_out"]["max_rel_diff"] == pytest.approx(0.12, rel=1e-3)
    wrong = {"logits": logits, "attn_out": np.roll(attn, 1, axis=-1)}  # keys paired with other values
    bad = check_graph(expected, wrong, {"input": [2, 3, 64, 64]}, True, labels=labels)
    assert not bad.passed
    assert any(
        f.startswith("block 3 (stages.1.1/attn): max relative difference") for f in bad.comparison.failures
    )
    strict = check_graph(expected, drifted, {"input": [2, 3, 64, 64]}, False, labels=labels)
    assert not strict.passed  # float32 graphs: 1e-4 in place too
    off = check_graph(expected, {"logits": logits * 1.05, "attn_out": attn}, {"input": [2, 3, 64, 64]}, True,
                      labels=labels)  # fmt: skip
    assert not off.passed and any("output 'logits'" in f for f in off.comparison.failures)
