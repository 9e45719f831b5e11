"""``--protect-routing``: which routing TopKs have their inputs kept out of INT8 under each mode."""

from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_biformer.cli.main import build_parser
from edge_biformer.quantize.policy import (
    DEFAULT_ROUTING_PROTECTION,
    ROUTING_PROTECTIONS,
    node_policy,
    protected_topks,
)


def _routings() -> onnx.ModelProto:
    """Three routings over 9 regions (topk 1, 4 and all 9), each after its own projection and region
    mean, and a classifier head that feeds no routing."""
    rng = np.random.default_rng(0)
    inits, nodes, outputs = [], [], []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name

    for k in (1, 4, 9):
        nodes += [
            helper.make_node("MatMul", ["x", weight(f"w{k}", (8, 8))], [f"p{k}"], name=f"proj{k}"),
            helper.make_node("ReduceMean", [f"p{k}"], [f"m{k}"], name=f"mean{k}", axes=[2], keepdims=1),
            helper.make_node("MatMul", [f"m{k}", weight(f"r{k}", (1, 9))], [f"s{k}"], name=f"route{k}"),
            helper.make_node("TopK", [f"s{k}", weight(f"k{k}", ())], [f"v{k}", f"i{k}"], name=f"topk{k}"),
        ]
        inits[-1] = numpy_helper.from_array(np.array([k], np.int64), f"k{k}")
        outputs += [helper.make_tensor_value_info(f"v{k}", TensorProto.FLOAT, None)]
    nodes += [
        helper.make_node("ReduceMean", ["x"], ["pooled"], name="pool", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", weight("w_out", (8, 10))], ["y"], name="head"),
    ]
    outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10]))  # a classifier
    graph = helper.make_graph(
        nodes, "routings", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 9, 8])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_each_mode_protects_the_inputs_of_its_routings() -> None:
    model = _routings()
    assert protected_topks(model, "path") == []
    assert protected_topks(model, "top1") == ["topk1"]
    assert protected_topks(model, "inputs") == ["topk1", "topk4"]  # a TopK of all 9 regions decides nothing
    default = node_policy(model)
    assert default.routing_protection == DEFAULT_ROUTING_PROTECTION == "top1"
    assert default.routing_inputs == ["proj1"] and {"proj4", "proj9", "head"} <= set(default.int8)
    inputs = node_policy(model, routing_protection="inputs")
    assert inputs.routing_inputs == ["proj1", "proj4"] and {"proj9", "head"} <= set(inputs.int8)
    path = node_policy(model, routing_protection="path")
    assert path.routing_inputs == [] and {"proj1", "proj4", "proj9", "head"} <= set(path.int8)


def test_the_cli_offers_the_policy_modes_and_default() -> None:
    actions = [
        a
        for sub in build_parser()._subparsers._group_actions  # type: ignore[union-attr]
        for p in sub.choices.values()
        for a in p._actions
        if isinstance(a, argparse.Action) and "--protect-routing" in a.option_strings
    ]
    assert actions, "no command offers --protect-routing"
    for action in actions:
        assert tuple(action.choices) == ROUTING_PROTECTIONS and action.default == DEFAULT_ROUTING_PROTECTION
