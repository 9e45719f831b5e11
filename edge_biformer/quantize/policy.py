"""Which nodes of a BiFormer graph get INT8 Q/DQ, and which stay FP32 under the FP16 conversion.

Default policy for a vision transformer: the weight-bearing ops (Conv, Gemm and MatMul with a
constant weight: qkv, output and MLP projections, patch embeddings, head) get INT8 Q/DQ;
LayerNorm, Softmax, GELU, the routing (region means, routing MatMul, TopK) and the token
attention (activation x activation MatMuls, later the plugin) stay in high precision. Under the
FP16 conversion LayerNormalization and the routing chain stay FP32 (LayerNorm's variance overflows
FP16 at transformer activation ranges; the routing logits decide a discrete TopK, so their
rounding changes which regions are attended).

Routing protection (``--protect-routing``), on top of the routing path above:

* ``path``: nothing more; every projection upstream of the routing is INT8.
* ``top1`` (default): every weighted node upstream of a routing that selects a **single** region
  (topk 1: the first stage of BiFormer-T/S/B and DeBiFormer) stays out of INT8 (FP16). One flip
  of such a routing replaces every key and value a query region attends to, where a flip of a
  topk-k routing replaces 1/k of them. The same reasoning keeps a mixture-of-experts router's
  decisions in high precision.
* ``inputs``: every weighted node upstream of any routing that makes a decision (topk smaller than
  the number of regions; a TopK of all regions selects everything in any order) stays out of INT8.

Measured (docs/routing.md): INT8 with ``path`` routes 96.8-97.1 % of the reduced BiFormer's query
regions as FP32 does, because the INT8 error of everything upstream moves near-tied routing logits,
not the routing path itself; ``inputs`` routes 99.9-100 % as FP32 does at the cost of INT8 in the
routed stages. On the reduced DeBiFormer one flipped topk-1 region turned an image's logits to cosine
0.973 under ``path``; ``top1`` keeps its worst image at 0.997.

Dense outputs (detection heads, segmentation maps, feature maps: any graph output that is not a
rank-2 ``[N, classes]`` classifier output) add two rules, for graphs of one's own
(``build --onnx``): the **output heads** (the last weighted op on each path to such an output: a
detector's box/class convs, a segmenter's final classifier conv) stay out of INT8, since their
rounding lands directly in box coordinates and per-pixel scores; and the **output tail** (every op
after the last weighted op: a detection head's decode with its grids and strides, sigmoid, concat,
an upsampling to the input size) stays FP32 under the FP16 conversion, because box coordinates of
hundreds of pixels lose whole fractions of a pixel in FP16. A classifier's head is judged by its
top-1 and keeps INT8.

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

from edge_biformer.onnx_io import constant_value
from edge_biformer.quantize.toolkit import QuantizationError

__all__ = [
    "DEFAULT_ROUTING_PROTECTION",
    "FP32_OP_TYPES",
    "ROUTING_PROTECTIONS",
    "NodePolicy",
    "exclude_patterns",
    "fp32_nodes_after",
    "node_policy",
    "output_tail",
    "protected_topks",
    "routing_nodes",
    "sampling_nodes",
]

#: Op types kept in FP32 by the FP16 conversion (see the module docstring).
FP32_OP_TYPES = ("LayerNormalization", "TopK", "GridSample")
#: Where the walk back from a GridSample grid stops (not included): the q projection and its
#: channel slice, shape arithmetic.
_SAMPLING_STOPS = frozenset({"MatMul", "Gemm", "Split", "Slice", "Shape", "Constant", "QuantizeLinear"})
#: ``--protect-routing`` choices and the default (see the module docstring).
ROUTING_PROTECTIONS = ("path", "top1", "inputs")
DEFAULT_ROUTING_PROTECTION = "top1"


@dataclass
class NodePolicy:
    """Which nodes get INT8 Q/DQ and which stay in FP32 under the FP16 conversion."""

    int8: list[str]
    fp32: list[str]
    excluded_by_user: list[str] = field(default_factory=list)
    attention_matmuls: list[str] = field(default_factory=list)
    routing: list[str] = field(default_factory=list)
    routing_protection: str = DEFAULT_ROUTING_PROTECTION
    routing_inputs: list[str] = field(default_factory=list)  # kept out of INT8 by ``top1``/``inputs``
    output_heads: list[str] = field(default_factory=list)  # dense outputs' last weighted ops
    output_tail: list[str] = field(default_factory=list)  # after them: FP32 under the FP16 conversion
    sampling: list[str] = field(default_factory=list)  # DeBiFormer's sampling chains (FP32, no INT8)

    def describe(self) -> dict[str, object]:
        """What the manifest and the report record about the policy."""
        return {
            "int8_nodes": len(self.int8),
            "routing_nodes_high_precision": len(self.routing),
            "routing_protection": self.routing_protection,
            "routing_inputs_high_precision": len(self.routing_inputs),
            "excluded_by_user": len(self.excluded_by_user),
            "output_heads_high_precision": len(self.output_heads),
            "output_tail_fp32": len(self.output_tail),
            "sampling_nodes_fp32": len(self.sampling),
        }


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


def _constant_int(graph: onnx.GraphProto, name: str) -> int | None:
    """The value of a one-element integer constant (initializer or Constant node), else ``None``."""
    value = constant_value(graph, name)
    return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _last_dims(model: onnx.ModelProto) -> dict[str, int]:
    """The static last dimension of every tensor shape inference can tell (empty if it fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # a graph shape inference cannot take: regions unknown, every TopK decides
        return {}
    dims: dict[str, int] = {}
    for info in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        shape = info.type.tensor_type.shape.dim
        if shape and shape[-1].HasField("dim_value"):
            dims[info.name] = shape[-1].dim_value
    return dims


def protected_topks(model: onnx.ModelProto, routing_protection: str) -> list[str]:
    """The routing TopKs whose inputs ``routing_protection`` keeps out of INT8 (module docstring).

    ``top1``: TopKs with a constant k of 1. ``inputs``: TopKs that decide, i.e. whose k is not the
    (static) number of regions they choose from; a TopK of unknown k or width counts as deciding.
    """
    graph = model.graph
    topks = [n for n in graph.node if n.op_type == "TopK" and len(n.input) > 1]
    if routing_protection == "path":
        return []
    ks = {n.name: _constant_int(graph, n.input[1]) for n in topks}
    if routing_protection == "top1":
        return [n.name for n in topks if ks[n.name] == 1]
    widths = _last_dims(model)
    return [n.name for n in topks if ks[n.name] is None or ks[n.name] != widths.get(n.input[0])]


def _ancestors(graph: onnx.GraphProto, names: Sequence[str]) -> set[str]:
    """Names of every node upstream of the nodes ``names`` (the data inputs of each, transitively)."""
    producers = _producers(graph)
    by_name = {n.name: n for n in graph.node}
    seen: set[str] = set()
    stack = [by_name[n] for n in names if n in by_name]
    while stack:
        node = stack.pop()
        for tensor in node.input:
            parent = producers.get(tensor)
            if parent is not None and parent.name not in seen:
                seen.add(parent.name)
                stack.append(parent)
    return seen


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


def node_policy(
    model: onnx.ModelProto,
    exclude: Sequence[str] = (),
    routing_protection: str = DEFAULT_ROUTING_PROTECTION,
) -> NodePolicy:
    """The default INT8/FP32 policy for a BiFormer or DeBiFormer graph, minus the user's ``exclude``.

    ``exclude`` holds Python regular expressions matched (``re.search``) against node names;
    ``routing_protection`` is one of :data:`ROUTING_PROTECTIONS` (module docstring).
    """
    if routing_protection not in ROUTING_PROTECTIONS:
        raise QuantizationError(
            f"--protect-routing must be one of {', '.join(ROUTING_PROTECTIONS)}, got {routing_protection!r}"
        )
    graph = model.graph
    constants = _constant_names(graph)
    patterns = exclude_patterns(exclude)
    routing = routing_nodes(graph)
    sampling = sampling_nodes(graph)
    routing_set = set(routing) | set(sampling)
    upstream = _ancestors(graph, protected_topks(model, routing_protection))
    heads, tail = output_tail(model, constants)
    protected: list[str] = []
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
        if node.name in upstream:
            protected.append(node.name)
            continue
        if node.name in heads:
            continue
        if any(p.search(node.name) for p in patterns):
            user.append(node.name)
            continue
        int8.append(node.name)
    fp32 = [
        n.name for n in graph.node if n.op_type in FP32_OP_TYPES or n.name in routing_set or n.name in tail
    ]
    return NodePolicy(
        int8=int8,
        fp32=sorted(set(fp32)),
        excluded_by_user=user,
        attention_matmuls=attention,
        routing=routing,
        routing_protection=routing_protection,
        routing_inputs=protected,
        output_heads=sorted(heads),
        output_tail=sorted(tail),
        sampling=sampling,
    )


def _weighted(node: onnx.NodeProto, constants: set[str]) -> bool:
    return node.op_type in ("Conv", "Gemm", "ConvTranspose") or (
        node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in constants
    )


def output_tail(model: onnx.ModelProto, constants: set[str] | None = None) -> tuple[set[str], set[str]]:
    """The output heads and tail of a graph's dense outputs (module docstring): ``(heads, tail)``.

    Walking back from each dense output (rank != 2), the tail is every node reached before a
    weighted node, the heads are the weighted nodes where the walk stops. Classifier outputs have
    neither.
    """
    graph = model.graph
    constants = _constant_names(graph) if constants is None else constants
    producers = _producers(graph)
    heads: set[str] = set()
    tail: set[str] = set()
    dense = [o.name for o in graph.output if len(o.type.tensor_type.shape.dim) != 2]
    stack = [producers[name] for name in dense if name in producers]
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if _weighted(node, constants):
            heads.add(node.name)
            continue
        tail.add(node.name)
        stack += [producers[i] for i in node.input if i in producers]
    return heads, tail


def fp32_nodes_after(model: onnx.ModelProto, policy: NodePolicy) -> list[str]:
    """The policy's FP32 nodes that exist in ``model`` (a conversion may rename or drop some)."""
    names = {n.name for n in model.graph.node}
    return [n for n in policy.fp32 if n in names]
