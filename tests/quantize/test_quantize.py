"""INT8 (modelopt Q/DQ, CPU calibration) and FP16 conversion of the plain export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_biformer import calib
from edge_biformer.cli.main import main
from edge_biformer.testing import assert_close
from tests.reduced_model import export_reduced

pytest.importorskip(
    "modelopt.onnx.quantization", reason="nvidia-modelopt (a default dependency) is not installed"
)
from edge_biformer import quantize
from edge_biformer.quantize.calib_cache import activation_scales


@pytest.fixture(scope="module")
def reduced_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_reduced(tmp_path_factory.mktemp("reduced") / "reduced.onnx")


def _photos(num: int, seed: int = 0) -> calib.CalibrationData:
    """``num`` of the built-in demo photographs at the reduced model's 48x48 (a seeded subset)."""
    return calib.load(calib.DEMO_SOURCE, img_size=48, num=num, seed=seed, batch_size=8)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]


def test_node_policy_keeps_routing_norms_and_attention_out_of_int8(reduced_onnx: Path) -> None:
    model = onnx.load(str(reduced_onnx))
    policy = quantize.node_policy(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {ops[n] for n in policy.int8} <= {"Conv", "Gemm", "MatMul"}
    assert sum(ops[n] == "Conv" for n in policy.int8) > 0 and sum(ops[n] == "MatMul" for n in policy.int8) > 0
    assert not set(policy.int8) & set(policy.attention_matmuls)
    routing_ops = {ops[n] for n in policy.routing}
    assert {"TopK", "ReduceMean", "MatMul"} <= routing_ops
    assert all(ops[n] in ("LayerNormalization",) or n in policy.routing for n in policy.fp32)
    assert sum(ops[n] == "TopK" for n in policy.fp32) == 3  # three routed stages
    excluded = quantize.node_policy(model, exclude=[r"/mlp/"])
    assert excluded.excluded_by_user and all("/mlp/" in n for n in excluded.excluded_by_user)
    assert len(excluded.int8) == len(policy.int8) - len(excluded.excluded_by_user)
    with pytest.raises(quantize.QuantizationError, match="not a valid regular expression"):
        quantize.node_policy(model, exclude=["(unclosed"])


@pytest.mark.slow
def test_int8_qdq_runs_in_onnxruntime_and_cache_is_reused(reduced_onnx: Path, tmp_path: Path) -> None:
    data = _photos(16)  # real photographs (the built-in demo set), not noise
    cache = tmp_path / "calib.cache"
    first = quantize.quantize_int8(reduced_onnx, tmp_path / "a.onnx", data, cache=cache)
    assert first.qdq_pairs > 0 and not first.calib_cache_reused and cache.is_file()
    assert cache.read_text().startswith("TRT-8501-EntropyCalibration2\n")
    q = onnx.load(str(tmp_path / "a.onnx"))
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert q.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert q.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # Routing, LayerNorm stay FP32 inside the otherwise FP16 graph.
    topk = next(n for n in q.graph.node if n.op_type == "TopK")
    inferred = onnx.shape_inference.infer_shapes(q)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert types[topk.output[0]] == onnx.TensorProto.FLOAT

    second = quantize.quantize_int8(reduced_onnx, tmp_path / "b.onnx", data, cache=cache)
    assert second.calib_cache_reused
    a = activation_scales(onnx.load(str(tmp_path / "a.onnx")))
    b = activation_scales(onnx.load(str(tmp_path / "b.onnx")))
    assert a and a.keys() == b.keys() and all(np.isclose(a[k], b[k], rtol=1e-3) for k in a)
    # Other data -> no reuse.
    other = quantize.quantize_int8(reduced_onnx, tmp_path / "c.onnx", _photos(8, seed=2), cache=cache)
    assert not other.calib_cache_reused

    x = _photos(4, seed=3).tensors
    ref = _run(reduced_onnx, x)
    out = _run(tmp_path / "a.onnx", x)
    assert out.dtype == np.float32
    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
    assert cos.min() > 0.95, cos
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert not leftovers


def test_fp16_mixed_precision(reduced_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp16.onnx"
    result = quantize.quantize_fp16(reduced_onnx, out)
    assert result.fp16_tensors > 0 and result.fp32_nodes >= 3
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            assert types[node.output[0]] == onnx.TensorProto.FLOAT
        if node.op_type == "Softmax":
            assert types[node.output[0]] == onnx.TensorProto.FLOAT16
    x = _photos(2, seed=4).tensors
    ref, got = _run(reduced_onnx, x), _run(out, x)
    assert_close(got, ref, max_rel=1e-2)


def test_int8_rejects_rewritten_or_quantized_graphs(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])
    node = helper.make_node("BiLevelRoutingAttention", ["input"], ["logits"], domain="trt.plugins")
    graph = helper.make_graph([node], "g", [inp], [out])
    path = tmp_path / "plugin.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(quantize.QuantizationError, match="plain export"):
        quantize.quantize_int8(path, tmp_path / "q.onnx", calib.synthetic(2, 4))
    assert not (tmp_path / "q.onnx").exists()


def test_calib_cache_roundtrip(tmp_path: Path) -> None:
    scales = {"/a/b_output_0": 0.0123, "input": 0.5}
    quantize.write_calib_cache(tmp_path / "c.cache", scales, "max")
    assert (tmp_path / "c.cache").read_text().splitlines()[0] == "TRT-8501-MinMaxCalibration"
    back = quantize.read_calib_cache(tmp_path / "c.cache")
    assert back.keys() == scales.keys() and all(np.isclose(back[k], scales[k]) for k in scales)


def test_quantize_cli_errors(reduced_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Without --calib-data: the built-in demo photographs, said loudly and recorded.
    rc = main(["quantize", str(reduced_onnx), "--precision", "int8", "--output", str(tmp_path / "demo.onnx")])
    printed = capsys.readouterr().out
    assert (
        rc == 0
        and "WARNING: no --calib-data: calibrating on the built-in demo set (16 photographs" in printed
    )
    summary = json.loads((tmp_path / "demo.manifest.json").read_text())["quantize"]["calib_summary"]
    assert summary["kind"] == "demo" and summary["used_for_calibration"] == 16
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(
        [
            "quantize",
            str(reduced_onnx),
            "--precision",
            "int8",
            "--calib-data",
            str(empty),
            "-o",
            str(tmp_path / "q.onnx"),
        ]
    )
    assert rc == 2 and "no images in" in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()
    rc = main(
        ["quantize", str(tmp_path / "nope.onnx"), "--precision", "fp16", "-o", str(tmp_path / "q.onnx")]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_quantize_cli_fp16(reduced_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.fp16.onnx"
    assert main(["quantize", str(reduced_onnx), "--precision", "fp16", "-o", str(out)]) == 0
    assert "quantize fp16" in capsys.readouterr().out
    onnx.checker.check_model(str(out))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_int8_rejects_converted_graphs(reduced_onnx: Path, tmp_path: Path) -> None:
    fp16 = tmp_path / "fp16.onnx"
    quantize.quantize_fp16(reduced_onnx, fp16)
    with pytest.raises(quantize.QuantizationError, match="already converted to float16"):
        quantize.quantize_int8(fp16, tmp_path / "q.onnx", calib.synthetic(2, 48))
    qdq = tmp_path / "qdq.onnx"
    quantize.quantize_int8(reduced_onnx, qdq, _photos(8, seed=1))
    with pytest.raises(quantize.QuantizationError, match="already quantized"):
        quantize.quantize_int8(qdq, tmp_path / "q2.onnx", calib.synthetic(2, 48))
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "q2.onnx").exists()


def test_linear_autocast_cleanup_gives_the_same_graph(reduced_onnx: Path) -> None:
    """Our linear-time dead-node clean-up (a third of BiFormer-T's conversion time) changes no byte."""
    from edge_biformer.quantize.fp16 import convert_fp16_model
    from edge_biformer.quantize.toolkit import quiet_modelopt

    fp32 = quantize.node_policy(onnx.load(str(reduced_onnx))).fp32
    with quiet_modelopt():
        fast = convert_fp16_model(onnx.load(str(reduced_onnx)), fp32, fast=True)
        original = convert_fp16_model(onnx.load(str(reduced_onnx)), fp32, fast=False)
    assert fast.SerializeToString() == original.SerializeToString()
    from modelopt.onnx.autocast.precisionconverter import PrecisionConverter

    assert PrecisionConverter._cleanup_no_consumer_nodes.__name__ == "_cleanup_no_consumer_nodes"  # restored


def test_long_steps_say_they_are_running_even_inside_a_stdout_redirect(capsys) -> None:
    import contextlib
    import io
    import time

    from edge_biformer.utils import heartbeat

    with heartbeat("calibrating", every=0.05), contextlib.redirect_stdout(io.StringIO()):
        time.sleep(0.3)
    out = capsys.readouterr().out
    assert out.startswith("[edge-biformer] calibrating ...") and "calibrating: still running" in out
