"""The graphs for TensorRT 8.5/8.6's ONNX parser compute what the originals compute (onnxruntime, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_biformer import engine
from edge_biformer.engine import BatchProfile, EngineOptions
from edge_biformer.engine.onnx_compat import decompose_layer_normalization, lower_to_opset17, tensorrt8_graph
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.ops.bra import CONTRACT


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _layer_norm_model(opset: int, dtype: int, bias: bool = True) -> onnx.ModelProto:
    """x [2, 5, 8] -> LayerNormalization(axis=-1) -> (Cast to float32) -> y, with a ReduceMean beside it."""
    np_type = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(8).astype(np_type), "scale")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(8).astype(np_type), "bias"))
    ln = helper.make_node(
        "LayerNormalization", ["x", "scale", *(["bias"] if bias else [])], ["ln"], name="ln", epsilon=1e-6
    )
    nodes = [ln, helper.make_node("Cast", ["ln"], ["y"], to=TensorProto.FLOAT, name="cast")]
    graph = helper.make_graph(
        nodes,
        "ln",
        [helper.make_tensor_value_info("x", dtype, [2, 5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.mark.parametrize("opset", [17, 19])
@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.FLOAT16])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_normalization_decomposition_matches(opset, dtype, bias) -> None:
    model = _layer_norm_model(opset, dtype, bias)
    x = np.random.default_rng(1).standard_normal((2, 5, 8)) * 30
    feeds = {"x": x.astype(np.float16 if dtype == TensorProto.FLOAT16 else np.float32)}
    reference = _run(model, feeds)
    decomposed = onnx.ModelProto()
    decomposed.CopyFrom(model)
    assert decompose_layer_normalization(decomposed) == 1
    onnx.checker.check_model(decomposed)
    assert not any(n.op_type == "LayerNormalization" for n in decomposed.graph.node)
    tol = 1e-5 if dtype == TensorProto.FLOAT else 2e-3
    np.testing.assert_allclose(_run(decomposed, feeds), reference, atol=tol * np.abs(reference).max())


def _opset19_model(scale_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """ReduceMean with an axes input, a Cast with saturate and a Q/DQ pair: what opset 19 graphs hold."""
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1, name="mean"),
        helper.make_node("Cast", ["m"], ["c"], to=TensorProto.FLOAT, saturate=1, name="cast"),
        helper.make_node("QuantizeLinear", ["c", "s", "z"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq"),
    ]
    np_scale = np.float16 if scale_type == TensorProto.FLOAT16 else np.float32
    inits = [
        numpy_helper.from_array(np.array([-1], np.int64), "axes"),
        numpy_helper.from_array(np.array(0.05, np_scale), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
    ]
    out_type = scale_type
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 6])],
        [helper.make_tensor_value_info("y", out_type, [2, 4, 1])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)


def test_lowering_to_opset17_keeps_the_results() -> None:
    model = _opset19_model()
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 4, 6)).astype(np.float32)}
    reference = _run(model, feeds)
    notes = lower_to_opset17(model)
    assert notes and "opset 19 -> 17" in notes[0] and "1 ReduceMean" in notes[0]
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    assert not any(i.name == "axes" for i in model.graph.initializer)  # the axes became an attribute
    np.testing.assert_array_equal(_run(model, feeds), reference)


def test_what_tensorrt8_cannot_take_is_refused_with_the_fix() -> None:
    with pytest.raises(EdgeBiformerError, match=r"float32 Q/DQ scales only.*--int8-mode calibrator"):
        lower_to_opset17(_opset19_model(TensorProto.FLOAT16))
    computed = _opset19_model()
    computed.graph.initializer.pop(0)  # axes: now a graph input, i.e. computed
    computed.graph.input.append(helper.make_tensor_value_info("axes", TensorProto.INT64, [1]))
    with pytest.raises(EdgeBiformerError, match=r"computed axes"):
        lower_to_opset17(computed)
    newer = _opset19_model()
    newer.graph.node.append(helper.make_node("BitwiseNot", ["z"], ["nz"], name="bitwise"))
    with pytest.raises(EdgeBiformerError, match=r"BitwiseNot node 'bitwise' is the opset-18 version"):
        lower_to_opset17(newer)


def _plugin_model() -> onnx.ModelProto:
    """A LayerNormalization feeding the plugin node, in an opset-19 graph (a rewritten FP16-style graph)."""
    attrs = CONTRACT.node_attributes(n_win=1, num_heads=1, topk=1, scale=0.5)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "scale"], ["n"], name="norm"),
        helper.make_node(
            CONTRACT.name, ["n", "n", "n", "r"], ["y"], name="bra", domain=CONTRACT.domain, **attrs
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "plugin",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 4]),
            helper.make_tensor_value_info("r", TensorProto.INT32, [1, 1, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "scale")],
    )
    opsets = [helper.make_opsetid("", 19), helper.make_opsetid(CONTRACT.domain, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def test_tensorrt8_graph_per_version() -> None:
    model = _plugin_model()
    for version, has_ln in (((8, 6), True), ((8, 5), False)):
        converted, notes = tensorrt8_graph(model, version)
        assert any(n.op_type == "LayerNormalization" for n in converted.graph.node) is has_ln
        assert {o.domain: o.version for o in converted.opset_import}[""] == 17
        assert any(n.op_type == CONTRACT.name for n in converted.graph.node)
        assert len(notes) == (1 if has_ln else 2)
    assert model.opset_import[0].version == 19  # the original is left alone


def test_engine_stage_for_tensorrt85_writes_its_graph_and_commands(tmp_path: Path, monkeypatch) -> None:
    if engine.tensorrt_available():
        pytest.skip("TensorRT is installed here: the stage would build")
    source = tmp_path / "model.fp16.plugin.onnx"
    onnx.save(_plugin_model(), str(source))
    options = EngineOptions(
        "fp16", (2, 2), BatchProfile(1, 1, 2), source=source, output=tmp_path / "model.fp16.engine",
        target_tensorrt="8.5", plugin_library=None,
    )  # fmt: skip
    record = engine.run(options)
    graph = tmp_path / "model.fp16.plugin.trt8.5.onnx"
    assert not record.built and record.onnx == str(graph) and graph.is_file()
    assert not any(n.op_type == "LayerNormalization" for n in onnx.load(str(graph)).graph.node)
    assert set(record.commands) == {"8.5"} and record.trtexec == record.commands["8.5"]
    assert f"--onnx={graph}" in record.trtexec and "--plugins=" in record.trtexec
    assert "--fp16" in record.trtexec and "--stronglyTyped" not in record.trtexec
    section = record.to_manifest()
    assert section["target"]["plugin_interface"] == "IPluginV2DynamicExt"
    assert section["onnx_notes"] and section["trtexec_by_tensorrt"] == record.commands
