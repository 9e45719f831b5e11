"""``edge_biformer.cpu_session``: BiLevelRoutingAttention nodes run on the CPU in onnxruntime."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import edge_biformer
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.ops import routed_attention_reference
from edge_biformer.ops.bra import CONTRACT
from edge_biformer.runtime.cpu import BraOpError


def plugin_graph(
    elem_type: int = TensorProto.FLOAT,
    *,
    n_win: int = 3,
    num_heads: int = 2,
    topk: int = 4,
    scale: float = 0.25,
    plugin_version: str = "1",
) -> onnx.ModelProto:
    """q, k, v, r_idx -> Identity -> BiLevelRoutingAttention -> Add(o, 1)."""
    nodes = [
        helper.make_node("Identity", ["q_in"], ["q"]),
        helper.make_node(
            CONTRACT.op_type,
            ["q", "k", "v", "r_idx"],
            ["o"],
            name="bra0",
            domain=CONTRACT.domain,
            **{
                **CONTRACT.node_attributes(n_win=n_win, num_heads=num_heads, topk=topk, scale=scale),
                "plugin_version": plugin_version,
            },
        ),
        helper.make_node("Add", ["o", "one"], ["out"]),
    ]
    one = helper.make_tensor("one", elem_type, [], [1.0])
    inputs = [
        helper.make_tensor_value_info("q_in", elem_type, ["N", "Hq", "Wq", 8]),
        helper.make_tensor_value_info("k", elem_type, ["N", "Hk", "Wk", 8]),
        helper.make_tensor_value_info("v", elem_type, ["N", "Hk", "Wk", 6]),
        helper.make_tensor_value_info("r_idx", TensorProto.INT32, ["N", n_win * n_win, topk]),
    ]
    graph = helper.make_graph(
        nodes,
        "bra",
        inputs,
        [helper.make_tensor_value_info("out", elem_type, ["N", "Hq", "Wq", 6])],
        initializer=[one],
        value_info=[helper.make_tensor_value_info("o", elem_type, ["N", "Hq", "Wq", 6])],
    )
    return helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid(CONTRACT.domain, CONTRACT.opset_version),
        ],
        ir_version=8,
    )


def feeds(dtype=np.float32, n: int = 2, s: int = 3, topk: int = 4, hq: int = 2, hk: int = 1) -> dict:
    rng = np.random.default_rng(0)
    return {
        "q_in": rng.standard_normal((n, s * hq, s * hq, 8)).astype(dtype),
        "k": rng.standard_normal((n, s * hk, s * hk, 8)).astype(dtype),
        "v": rng.standard_normal((n, s * hk, s * hk, 6)).astype(dtype),
        "r_idx": np.argsort(rng.random((n, s * s, s * s)), axis=-1)[..., :topk].astype(np.int32),
    }


def reference(x: dict, num_heads: int = 2, scale: float = 0.25) -> np.ndarray:
    out = routed_attention_reference(
        *(torch.from_numpy(x[name]) for name in ("q_in", "k", "v", "r_idx")), num_heads=num_heads, scale=scale
    )
    return out.numpy() + np.asarray(1, dtype=out.numpy().dtype)


def test_plugin_graph_is_valid_onnx() -> None:
    CONTRACT.register_onnx_schema()
    onnx.checker.check_model(plugin_graph(), full_check=True)
    onnx.checker.check_model(plugin_graph(TensorProto.FLOAT16), full_check=True)


def test_float32_plugin_node_runs(tmp_path: Path) -> None:
    path = tmp_path / "bra.onnx"
    onnx.save(plugin_graph(), str(path))
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    x = feeds()  # Hq=6 != Hk=3: queries and keys at different resolutions
    out = edge_biformer.cpu_session(path).run(None, x)[0]
    assert out.dtype == np.float32 and out.shape == (2, 6, 6, 6)
    np.testing.assert_allclose(out, reference(x), rtol=0, atol=1e-6)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # the file is not modified


def test_float16_plugin_node_runs_in_float32_and_rounds_once() -> None:
    x = feeds(np.float16)
    out = edge_biformer.cpu_session(plugin_graph(TensorProto.FLOAT16)).run(None, x)[0]
    assert out.dtype == np.float16
    x32 = {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in x.items()}
    expected = (reference(x32) - 1).astype(np.float16).astype(np.float32) + 1  # op output rounded, then +1
    np.testing.assert_allclose(
        out.astype(np.float32), expected.astype(np.float16).astype(np.float32), atol=2e-3
    )


@pytest.mark.parametrize("topk", [1, 9])
def test_topk_extremes(topk: int) -> None:
    x = feeds(topk=topk)
    out = edge_biformer.cpu_session(plugin_graph(topk=topk)).run(None, x)[0]
    np.testing.assert_allclose(out, reference(x), rtol=0, atol=1e-6)


def test_plain_graph_runs_as_in_onnxruntime(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    x = {"x": np.array([[-1, 0, 1], [2, -3, 4]], dtype=np.float32)}
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, x)[0]
    session = edge_biformer.cpu_session(path)
    assert isinstance(session, ort.InferenceSession)
    np.testing.assert_array_equal(session.run(None, x)[0], expected)


def test_session_options_are_used() -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = edge_biformer.cpu_session(plugin_graph(), sess_options=options)
    assert session.get_session_options().intra_op_num_threads == 1
    assert session.run(None, feeds())[0].shape == (2, 6, 6, 6)


def test_attributes_inconsistent_with_inputs_fail_at_run_time() -> None:
    model = plugin_graph(topk=3)
    model.graph.input[3].type.tensor_type.shape.dim[2].dim_param = "K"  # let a wrong r_idx through
    session = edge_biformer.cpu_session(model)
    with pytest.raises(BraOpError, match=r"the attributes say \[N, n_win\*n_win=9, topk=3\]"):
        session.run(None, feeds(topk=4))


def test_other_plugin_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "v2.onnx"
    onnx.save(plugin_graph(plugin_version="2"), str(path))
    with pytest.raises(
        EdgeBiformerError, match=r"v2.onnx: BiLevelRoutingAttention node 'bra0' asks for plugin version '2'"
    ):
        edge_biformer.cpu_session(path)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(EdgeBiformerError, match="no such file"):
        edge_biformer.cpu_session(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not protobuf" * 10)
    with pytest.raises(EdgeBiformerError, match=r"bad\.onnx is not a readable ONNX model"):
        edge_biformer.cpu_session(bad)
