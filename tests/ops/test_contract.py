"""The op contract: one JSON file that everything reads (Python, the ONNX schema, the CPU op, the plugin)."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import helper

from edge_biformer import plugins
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.ops import OPS, find_op
from edge_biformer.ops.bra import CONTRACT
from tests.bra_cases import CASES, one_node_graph


def test_the_json_is_the_contract() -> None:
    spec = json.loads(CONTRACT.path.read_text())
    assert CONTRACT.path.name == "BiLevelRoutingAttention.json" and CONTRACT.path.parent.name == "bra"
    assert (CONTRACT.name, CONTRACT.version, CONTRACT.namespace) == (
        spec["name"],
        spec["version"],
        spec["namespace"],
    )
    assert (CONTRACT.op_type, CONTRACT.domain, CONTRACT.opset_version) == (
        spec["onnx"]["op_type"],
        spec["onnx"]["domain"],
        spec["onnx"]["opset_version"],
    )
    assert CONTRACT.attribute_names == tuple(a["name"] for a in spec["attributes"])
    assert [i.name for i in CONTRACT.inputs] == ["q", "k", "v", "r_idx"] and [
        o.name for o in CONTRACT.outputs
    ] == ["o"]
    assert [a.name for a in CONTRACT.plugin_fields] == ["n_win", "num_heads", "topk", "scale"]
    assert CONTRACT.fixed_attributes == {
        "plugin_version": CONTRACT.version,
        "plugin_namespace": CONTRACT.namespace,
    }
    assert CONTRACT.tolerance("float32").max_abs == 1e-4 and CONTRACT.tolerance("fp16").max_rel == 2e-3
    assert len(CASES) == len(spec["cases"]) and all("scale" in c for c in CASES.values())
    # The plugin library is looked up by the same identity.
    assert (
        CONTRACT.name,
        CONTRACT.version,
        CONTRACT.namespace,
    ) == (plugins.PLUGIN_NAME, plugins.PLUGIN_VERSION, plugins.PLUGIN_NAMESPACE)
    assert [op.contract for op in OPS] == [CONTRACT]


def test_onnx_schema_from_the_contract_validates_nodes() -> None:
    CONTRACT.register_onnx_schema()
    CONTRACT.register_onnx_schema()  # once per process, however often it is asked for
    model = one_node_graph(CASES["s2_r2_d32_full"])
    onnx.checker.check_model(model, full_check=True)
    assert find_op(model.graph.node[0]) is OPS[0]
    missing = onnx.ModelProto()
    missing.CopyFrom(model)
    del missing.graph.node[0].attribute[2:]  # no n_win, num_heads, topk, scale
    with pytest.raises(onnx.checker.ValidationError, match="Required attribute"):
        onnx.checker.check_model(missing, full_check=True)
    wrong_type = helper.make_node(CONTRACT.op_type, ["q", "k", "v"], ["o"], domain=CONTRACT.domain)
    assert find_op(wrong_type) is OPS[0] and find_op(helper.make_node("Relu", ["x"], ["y"])) is None


def test_node_attributes_and_node_checks() -> None:
    attrs = CONTRACT.node_attributes(n_win=7, num_heads=2, topk=4, scale=0.125)
    assert list(attrs) == list(CONTRACT.attribute_names) and attrs["plugin_version"] == "1"
    with pytest.raises(ValueError, match="needs the attribute scale"):
        CONTRACT.node_attributes(n_win=7, num_heads=2, topk=4)
    with pytest.raises(ValueError, match="below 1"):
        CONTRACT.node_attributes(n_win=0, num_heads=2, topk=4, scale=1.0)
    with pytest.raises(ValueError, match="no attribute"):
        CONTRACT.node_attributes(n_win=7, num_heads=2, topk=4, scale=1.0, window=3)
    CONTRACT.check_node({**attrs, "plugin_version": b"1"}, 4, 1, "m.onnx", "bra")
    with pytest.raises(EdgeBiformerError, match="asks for plugin version '2'"):
        CONTRACT.check_node({**attrs, "plugin_version": b"2"}, 4, 1, "m.onnx", "bra")
    with pytest.raises(EdgeBiformerError, match="lacks the attribute"):
        CONTRACT.check_node(
            {"plugin_version": "1", "plugin_namespace": "edge_biformer"}, 4, 1, "m.onnx", "bra"
        )
    with pytest.raises(EdgeBiformerError, match="takes q, k, v, r_idx and returns o"):
        CONTRACT.check_node(attrs, 3, 1, "m.onnx", "bra")
