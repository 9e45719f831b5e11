"""ONNX graphs for the parsers of TensorRT 8.5/8.6 (JetPack 5.1 / 6.0), with the same semantics.

Both parsers import opsets up to 17 (onnx-tensorrt 8.5-GA/8.6-GA, ``docs/operators.md``), and 8.5's has no
``LayerNormalization`` (it came with 8.6). Our exports are opset 17; the FP16 conversion raises graphs
to opset 19. :func:`tensorrt8_graph` lowers a graph to opset 17 for the ops whose signature changed after
it (``ReduceMean`` & co. take ``axes`` as an input from 18, ``Cast`` has ``saturate`` from 19, Q/DQ take
FP16 scales from 19) and, for 8.5, writes every ``LayerNormalization`` as the primitive ops it is defined
by, in the node's own precision. GridSample (opset 16) is imported by both parsers (IGridSampleLayer).
Anything it cannot lower faithfully is an :class:`~edge_biformer.errors.EdgeBiformerError` naming the node.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_biformer.errors import EdgeBiformerError

__all__ = ["PARSER_MAX_OPSET", "decompose_layer_normalization", "lower_to_opset17", "tensorrt8_graph"]

#: The newest ONNX opset the ONNX parsers of TensorRT 8.5 and 8.6 import.
PARSER_MAX_OPSET = 17
#: Reductions whose ``axes`` moved from an attribute to an input in opset 18.
_REDUCE_OPS = (
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
)
#: Ops whose versions after 17 only add types (float8, int4, ...) that our graphs do not use.
_TYPES_ONLY = ("Constant", "Identity", "Reshape", "Shape", "Size", "Equal", "Pad", "Squeeze", "Unsqueeze")


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _drop_attribute(node: onnx.NodeProto, name: str) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)


def lower_to_opset17(model: onnx.ModelProto) -> list[str]:
    """Rewrite ``model`` (in place) as an opset-17 graph; returns one note per kind of change."""
    opset = _opset(model)
    if opset <= PARSER_MAX_OPSET:
        return []
    constants = _constants(model)
    changed: dict[str, int] = {}
    orphans: set[str] = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        op = node.op_type
        if op in _REDUCE_OPS:
            if len(node.input) > 1 and node.input[1]:
                if node.input[1] not in constants:
                    raise EdgeBiformerError(
                        f"{op} node {node.name!r} takes computed axes, which opset 17 (TensorRT 8) cannot "
                        "express; export the model for TensorRT 8 (edge-biformer export --target-trt 8.6)"
                    )
                axes = [int(a) for a in constants[node.input[1]].reshape(-1)]
                orphans.add(node.input[1])
                del node.input[1:]
                node.attribute.append(helper.make_attribute("axes", axes))
            _drop_attribute(node, "noop_with_empty_axes")
        elif op == "Cast":
            _drop_attribute(node, "saturate")  # only float8 targets saturate
        elif op in ("QuantizeLinear", "DequantizeLinear"):
            scale = constants.get(node.input[1]) if len(node.input) > 1 else None
            if scale is None or scale.dtype != np.float32:
                raise EdgeBiformerError(
                    f"{op} node {node.name!r} has a {'computed' if scale is None else scale.dtype} scale; "
                    "the ONNX parser of TensorRT 8 takes float32 Q/DQ scales only. Quantize with "
                    "--high-precision fp32, or build INT8 on TensorRT 8 with --int8-mode calibrator"
                )
            _drop_attribute(node, "saturate")
        elif op in ("Split",):
            if any(a.name == "num_outputs" for a in node.attribute):
                raise EdgeBiformerError(
                    f"Split node {node.name!r} uses num_outputs (opset 18); TensorRT 8 needs split sizes: "
                    "export with --opset 17"
                )
        else:
            since = onnx.defs.get_schema(op, opset, "").since_version
            if since > PARSER_MAX_OPSET and op not in _TYPES_ONLY:
                raise EdgeBiformerError(
                    f"{op} node {node.name!r} is the opset-{since} version of the op, which TensorRT 8's "
                    "parser (opset <= 17) does not import; export with --opset 17 and --target-trt"
                )
            continue
        changed[op] = changed.get(op, 0) + 1
    _remove_unused(model, orphans)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = PARSER_MAX_OPSET
    model.ir_version = min(model.ir_version, 8)  # the IR of opset 17 (onnx 1.12/1.13)
    ops = ", ".join(f"{n} {op}" for op, n in sorted(changed.items()))
    return [f"opset {opset} -> {PARSER_MAX_OPSET} for TensorRT 8's ONNX parser ({ops or 'no node changed'})"]


def _remove_unused(model: onnx.ModelProto, names: set[str]) -> None:
    """Drop the initializers and Constant nodes of ``names`` that no node reads any more."""
    graph = model.graph
    unused = names - {i for n in graph.node for i in n.input} - {o.name for o in graph.output}
    if not unused:
        return
    initializers = [i for i in graph.initializer if i.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    nodes = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] in unused)]
    del graph.node[:]
    graph.node.extend(nodes)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({i.name: i.data_type for i in graph.initializer})
    return types


def decompose_layer_normalization(model: onnx.ModelProto) -> int:
    """Replace every ``LayerNormalization`` of ``model`` (in place) by its definition; returns the count.

    ``Y = (X - mean) / sqrt(var + epsilon) * scale + B`` over the axes ``axis..-1``, computed in float32
    (``stash_type`` 1, the default) and cast back for float16 inputs, exactly as the ONNX function of the
    op. A node whose ``Mean``/``InvStdDev`` outputs are used is refused.
    """
    graph = model.graph
    nodes = [n for n in graph.node if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")]
    if not nodes:
        return 0
    types = _elem_types(model)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    axes_as_input = _opset(model) >= 18
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for node in nodes:
        if any(o and o in used for o in node.output[1:]):
            raise EdgeBiformerError(f"LayerNormalization {node.name!r}: its Mean/InvStdDev outputs are used")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis = int(attrs.get("axis", -1))
        if axis >= 0:
            raise EdgeBiformerError(
                f"LayerNormalization {node.name!r} has axis={axis}; only negative axes (counted from the "
                "last dim, as torch exports them) are decomposed"
            )
        eps = float(attrs.get("epsilon", 1e-5))
        dtype = types.get(node.input[0], TensorProto.FLOAT)
        if dtype not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            raise EdgeBiformerError(
                f"LayerNormalization {node.name!r}: input type {dtype} is not float32/float16"
            )
        base = (node.name or node.output[0]) + "/decomposed"
        new: list[onnx.NodeProto] = []

        def name(part: str, base: str = base) -> str:
            return f"{base}/{part}"

        def add(op: str, inputs: list[str], part: str, new: list[onnx.NodeProto] = new, **kw: object) -> str:
            out = name(part)
            new.append(helper.make_node(op, inputs, [out], name=out, **kw))
            return out

        def as_float(tensor: str, part: str, dtype: int = dtype) -> str:
            return add("Cast", [tensor], part, to=TensorProto.FLOAT) if dtype != TensorProto.FLOAT else tensor

        axes = list(range(axis, 0))
        if axes_as_input:
            axes_name = name("axes")
            graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
            reduce = {"inputs": [axes_name], "attrs": {}}
        else:
            reduce = {"inputs": [], "attrs": {"axes": axes}}
        eps_name = name("epsilon")
        graph.initializer.append(numpy_helper.from_array(np.array(eps, np.float32), eps_name))
        x = as_float(node.input[0], "x")
        mean = add("ReduceMean", [x, *reduce["inputs"]], "mean", keepdims=1, **reduce["attrs"])
        centered = add("Sub", [x, mean], "centered")
        square = add("Mul", [centered, centered], "square")
        var = add("ReduceMean", [square, *reduce["inputs"]], "var", keepdims=1, **reduce["attrs"])
        std = add("Sqrt", [add("Add", [var, eps_name], "var_eps")], "std")
        y = add(
            "Mul", [add("Div", [centered, std], "normalized"), as_float(node.input[1], "scale")], "scaled"
        )
        if len(node.input) > 2 and node.input[2]:
            y = add("Add", [y, as_float(node.input[2], "bias")], "shifted")
        last = new[-1]
        if dtype != TensorProto.FLOAT:
            last = helper.make_node("Cast", [y], [node.output[0]], name=name("y"), to=dtype)
            new.append(last)
        else:
            last.output[0] = node.output[0]
        replaced[id(node)] = new
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        kept.extend(replaced.get(id(node), [node]))
    del graph.node[:]
    graph.node.extend(kept)
    return len(nodes)


def tensorrt8_graph(model: onnx.ModelProto, version: tuple[int, ...]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` that the ONNX parser of TensorRT ``version`` (8.5 or 8.6) imports as intended."""
    model = copy.deepcopy(model)
    notes = lower_to_opset17(model)
    if tuple(version[:2]) < (8, 6):
        count = decompose_layer_normalization(model)
        if count:
            notes.append(f"{count} LayerNormalization written as primitive ops (TensorRT 8.5 has no such op)")
    return model, notes
