"""Which nodes of a BiFormer graph get INT8 Q/DQ, and which stay FP32 under the FP16 conversion.

Default policy for a vision transformer: the weight-bearing ops (Conv, Gemm and MatMul with a
constant weight: qkv, output and MLP projections, patch embeddings, head) get INT8 Q/DQ;
LayerNorm, Softmax, GELU, the routing (region means, routing MatMul, TopK) and the token
attention (activation x activation MatMuls, later the plugin) stay in high precision. Under the
FP16 conversion LayerNormalization and the routing chain stay FP32 (LayerNorm's variance overflows
FP16 at transformer activation ranges; the routing logits decide a discrete TopK, so their
rounding changes which regions are attended).

DeBiFormer adds GridSample (deformable agents and the relative-position bias). TensorRT has no
INT8 GridSample, and the sampling positions are sensitive: an FP16 offset of 1e-3 in normalised
coordinates moves an agent by 1/36 pixel at 56x56 and reads the bias table 1/20 cell off. The
*sampling chain* (:func:`sampling_nodes`: every GridSample, its grid, and the offset network that
computes the grid from q, back to the q channel slice) gets no INT8 Q/DQ and stays FP32 under the
FP16 conversion; it is a few small tensors per DBRA (measured in ``docs/debiformer.md``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from edge_biformer.quantize.toolkit import QuantizationError

__all__ = [
    "FP32_OP_TYPES",
    "NodePolicy",
    "exclude_patterns",
    "fp32_nodes_after",
    "node_policy",
    "routing_nodes",
    "sampling_nodes",
]

#: Op types kept in FP32 by the FP16 conversion (see the module docstring).
FP32_OP_TYPES = ("LayerNormalization", "TopK", "GridSample")
#: Where the walk back from a GridSample grid stops (not included): the q projection and its
#: channel slice, shape arithmetic.
_SAMPLING_STOPS = frozenset({"MatMul", "Gemm", "Split", "Slice", "Shape", "Constant", "QuantizeLinear"})


@dataclass
class NodePolicy:
    """Which nodes get INT8 Q/DQ and which stay in FP32 under the FP16 conversion."""

    int8: list[str]
    fp32: list[str]
    excluded_by_user: list[str] = field(default_factory=list)
    attention_matmuls: list[str] = field(default_factory=list)
    routing: list[str] = field(default_factory=list)
    sampling: list[str] = field(default_factory=list)


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def routing_nodes(graph: onnx.GraphProto, max_depth: int = 8) -> list[str]:
    """The routing chain of every BRA: TopK and its ancestors back to the region means.

    Walks up from each TopK through its data input (not its ``k`` input) and stops at
    ReduceMean (the region mean of q or k, included) or after ``max_depth`` nodes.
    """
    producers = _producers(graph)
    found: list[str] = []
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type != "TopK":
            continue
        stack = [(node, 0)]
        while stack:
            current, depth = stack.pop()
            if current.name in seen:
                continue
            seen.add(current.name)
            found.append(current.name)
            if current.op_type == "ReduceMean" or depth >= max_depth:
                continue
            inputs = current.input[:1] if current.op_type in ("TopK", "Reshape", "Slice") else current.input
            for name in inputs:
                parent = producers.get(name)
                if parent is not None and parent.op_type not in ("Constant", "Shape"):
                    stack.append((parent, depth + 1))
    return found


def sampling_nodes(graph: onnx.GraphProto, max_depth: int = 24) -> list[str]:
    """The sampling chain of every DBRA: each GridSample and the ancestors of its grid input.

    Walks up from each GridSample's grid (input 1) through every input, stopping before the q
    projection and its channel slice (``MatMul``/``Gemm``/``Split``/``Slice``), shape arithmetic
    and constants, or after ``max_depth`` nodes: the reference points, the clamp, the offset
    network (depthwise conv, LayerNorm, GELU, 1x1 conv) and the displacement of the bias grid.
    Empty for graphs without GridSample (BiFormer).
    """
    producers = _producers(graph)
    found: list[str] = []
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type != "GridSample":
            continue
        if node.name not in seen:
            seen.add(node.name)
            found.append(node.name)
        stack = [(producers.get(node.input[1]), 1)]
        while stack:
            current, depth = stack.pop()
            if current is None or current.name in seen or current.op_type in _SAMPLING_STOPS:
                continue
            seen.add(current.name)
            found.append(current.name)
            if depth >= max_depth:
                continue
            stack.extend((producers.get(name), depth + 1) for name in current.input if name)
    return found


def exclude_patterns(exclude: Sequence[str]) -> list[re.Pattern[str]]:
    """Compile ``--exclude`` node-name patterns, with a clear error for an invalid one."""
    try:
        return [re.compile(p) for p in exclude]
    except re.error as err:
        raise QuantizationError(
            f"--exclude pattern {err.pattern!r} is not a valid regular expression: {err}"
        ) from None


def node_policy(model: onnx.ModelProto, exclude: Sequence[str] = ()) -> NodePolicy:
    """The default INT8/FP32 policy for a BiFormer or DeBiFormer graph, minus the user's ``exclude``.

    ``exclude`` holds Python regular expressions matched (``re.search``) against node names.
    """
    graph = model.graph
    constants = _constant_names(graph)
    patterns = exclude_patterns(exclude)
    routing = routing_nodes(graph)
    sampling = sampling_nodes(graph)
    routing_set = set(routing) | set(sampling)
    int8: list[str] = []
    attention: list[str] = []
    user: list[str] = []
    for node in graph.node:
        weighted = node.op_type in ("Conv", "Gemm") or (
            node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in constants
        )
        if node.op_type == "MatMul" and not weighted:
            attention.append(node.name)
        if not weighted or node.name in routing_set:
            continue
        if any(p.search(node.name) for p in patterns):
            user.append(node.name)
            continue
        int8.append(node.name)
    fp32 = [n.name for n in graph.node if n.op_type in FP32_OP_TYPES or n.name in routing_set]
    return NodePolicy(
        int8=int8,
        fp32=sorted(set(fp32)),
        excluded_by_user=user,
        attention_matmuls=attention,
        routing=routing,
        sampling=sampling,
    )


def fp32_nodes_after(model: onnx.ModelProto, policy: NodePolicy) -> list[str]:
    """The policy's FP32 nodes that exist in ``model`` (a conversion may rename or drop some)."""
    names = {n.name for n in model.graph.node}
    return [n for n in policy.fp32 if n in names]
