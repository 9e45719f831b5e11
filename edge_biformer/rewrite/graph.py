"""Small onnx-graphsurgeon helpers for the matcher: constants, shapes, producers and consumers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

__all__ = [
    "FLOAT_TYPES",
    "LAYOUT_OPS",
    "GraphInfo",
    "attr_int",
    "axis_slice",
    "const_scalar",
    "const_value",
    "consumers",
    "data_consumers",
    "einsum_perm",
    "is_layout",
    "last_axis_slice",
    "permutation",
    "producer",
    "qdq_after",
    "skip_qdq_back",
    "split_sizes",
]

#: Ops that only move data around (no arithmetic): the walks pass through them. A single-input
#: ``Einsum`` that only permutes axes (the official NCHW module's ``einsum('bmdhpwq->bmhwpqd')``) is
#: one too (:func:`is_layout`).
LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that produces ``tensor`` (None for graph inputs and constants)."""
    return tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """Distinct consumer nodes of ``tensor`` in graph order of discovery."""
    seen: dict[int, gs.Node] = {}
    for node in tensor.outputs:
        seen.setdefault(id(node), node)
    return list(seen.values())


def data_consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """Consumers that read the values of ``tensor`` (``Shape``/``Size`` only read its shape)."""
    return [n for n in consumers(tensor) if n.op not in ("Shape", "Size")]


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer, ``Constant`` node, or Identity/Cast of one)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "Constant":
        attrs = node.attrs
        if "value" in attrs:
            value = attrs["value"]
            return np.asarray(value.values if isinstance(value, gs.Constant) else value)
        for key, dtype in (
            ("value_float", np.float32),
            ("value_floats", np.float32),
            ("value_int", np.int64),
            ("value_ints", np.int64),
        ):
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
        return None
    if node.op == "Identity":
        return const_value(node.inputs[0])
    if node.op == "QuantizeLinear":  # a constant quantized in the graph (Q/DQ of a scale, say)
        values = [const_value(t) if t.name else None for t in node.inputs]
        if len(values) < 2 or values[0] is None or values[1] is None or values[1].size != 1:
            return None
        zero = values[2] if len(values) > 2 and values[2] is not None else np.uint8(0)
        info = np.iinfo(zero.dtype) if np.issubdtype(np.asarray(zero).dtype, np.integer) else None
        if info is None:
            return None
        q = np.rint(values[0].astype(np.float32) / values[1].astype(np.float32)) + np.asarray(
            zero, np.float32
        )
        return np.clip(q, info.min, info.max).astype(np.asarray(zero).dtype)
    if node.op == "DequantizeLinear":  # a quantized constant (e.g. a scale in a Q/DQ graph)
        values = [const_value(t) if t.name else None for t in node.inputs]
        if len(values) < 2 or values[0] is None or values[1] is None:
            return None
        x, scale = values[0].astype(np.float32), values[1].astype(np.float32)
        zero = values[2].astype(np.float32) if len(values) > 2 and values[2] is not None else np.float32(0)
        if scale.size > 1:  # per-axis: broadcast along `axis`
            axis = int(node.attrs.get("axis", 1)) % max(x.ndim, 1)
            shape = [1] * x.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zero = np.asarray(zero).reshape(shape) if np.asarray(zero).size > 1 else zero
        return (x - zero) * scale
    if node.op == "Cast":
        value = const_value(node.inputs[0])
        if value is None:
            return None
        return value.astype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    return None


def const_scalar(tensor: gs.Tensor) -> float | None:
    """A constant with exactly one element, as a float (None otherwise)."""
    value = const_value(tensor)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(-1)[0])


def attr_int(node: gs.Node, name: str, default: int | None = None) -> int | None:
    """An integer attribute of ``node`` (``default`` if absent)."""
    value = node.attrs.get(name, default)
    return None if value is None else int(value)


def einsum_perm(node: gs.Node) -> list[int] | None:
    """The axis permutation of a single-input ``Einsum`` that only transposes (None otherwise).

    ``'bmdhpwq->bmhwpqd'`` is ``Transpose(perm=[0, 1, 3, 5, 4, 6, 2])``: output axis ``j`` is input
    axis ``perm[j]``. Equations with repeated letters (diagonals), sums, ellipses or several inputs
    are not permutations.
    """
    if node.op != "Einsum" or len(node.inputs) != 1:
        return None
    equation = node.attrs.get("equation")
    if isinstance(equation, bytes):
        equation = equation.decode()
    if not isinstance(equation, str) or "->" not in equation or "." in equation:
        return None
    lhs, rhs = (part.strip() for part in equation.replace(" ", "").split("->"))
    if len(set(lhs)) != len(lhs) or sorted(lhs) != sorted(rhs) or not lhs.isalpha():
        return None
    return [lhs.index(letter) for letter in rhs]


def permutation(node: gs.Node, rank: int | None) -> list[int] | None:
    """The axis permutation of a ``Transpose`` (default: reversed axes) or a permuting ``Einsum``."""
    if node.op == "Transpose":
        perm = node.attrs.get("perm")
        if perm is not None:
            return [int(p) for p in perm]
        return None if rank is None else list(range(rank - 1, -1, -1))
    return einsum_perm(node)


def is_layout(node: gs.Node) -> bool:
    """Whether ``node`` only moves data (a layout op, or an Einsum that is a transpose)."""
    return node.op in LAYOUT_OPS or einsum_perm(node) is not None


def skip_qdq_back(tensor: gs.Tensor) -> gs.Tensor | None:
    """If ``tensor`` is ``DequantizeLinear(QuantizeLinear(x))``, return ``x``; else None."""
    dq = producer(tensor)
    if dq is None or dq.op != "DequantizeLinear":
        return None
    q = producer(dq.inputs[0])
    if q is None or q.op != "QuantizeLinear":
        return None
    return q.inputs[0]


def qdq_after(tensor: gs.Tensor) -> gs.Tensor | None:
    """If the only data consumer of ``tensor`` is a ``QuantizeLinear`` -> ``DequantizeLinear`` pair
    (nothing else reads the quantized values), return the DequantizeLinear output; else None."""
    users = data_consumers(tensor)
    if len(users) != 1 or users[0].op != "QuantizeLinear" or users[0].inputs[0] is not tensor:
        return None
    dq_users = data_consumers(users[0].outputs[0])
    if len(dq_users) != 1 or dq_users[0].op != "DequantizeLinear":
        return None
    return dq_users[0].outputs[0]


def _better_dim(known: int | str | None, other: int | str | None) -> int | str | None:
    """The more informative of two readings of one dim: a static int, then a named symbol."""
    if isinstance(known, int) and known > 0:
        return known
    if isinstance(other, int) and other > 0:
        return other
    if isinstance(known, str) and known and not known.startswith("unk__"):
        return known
    return other if other else known


@dataclass
class GraphInfo:
    """What the matcher needs to know beyond the graph's structure.

    ``elem_types`` and ``dims`` of tensors come from onnx shape inference: ``dims`` entries are
    ints (static), strings (symbolic) or None (unknown); a missing entry means the rank is unknown.
    ``scopes`` maps node names to the PyTorch module path that the dynamo exporter records
    (``pkg.torch.onnx.name_scopes``), used only to name blocks in logs.
    """

    elem_types: dict[str, int]
    dims: dict[str, list[int | str | None]]
    graph_outputs: frozenset[str] = frozenset()
    scopes: dict[str, str] = field(default_factory=dict)
    #: Values of non-constant tensors that the graph's shape arithmetic fixes (see :mod:`.fold`).
    values: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> GraphInfo:
        """Fold the shape arithmetic on static dims, run shape inference on a copy, collect the results.

        Folding (:func:`edge_biformer.rewrite.fold.fold_shapes`) gives the dims that ONNX shape
        inference alone loses behind ``Shape -> ... -> Div`` chains (torchscript exports of
        ``chunk``/``view`` with sizes read from the input).
        """
        from edge_biformer.rewrite.fold import fold_shapes, infer_shapes

        symbolic: onnx.ModelProto | None = None
        try:
            folded = fold_shapes(model)
            inferred = folded.model if folded.model is not None else infer_shapes(model)
            values, symbolic = folded.values, folded.symbolic
        except Exception:  # folding is an aid; plain inference still works
            inferred, values = infer_shapes(model), {}
        elem_types: dict[str, int] = {}
        dims: dict[str, list[int | str | None]] = {}
        graph = inferred.graph
        for info in (*graph.input, *graph.output, *graph.value_info):
            tensor_type = info.type.tensor_type
            if tensor_type.elem_type:
                elem_types[info.name] = tensor_type.elem_type
            if tensor_type.HasField("shape"):
                dims[info.name] = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tensor_type.shape.dim
                ]
        if symbolic is not None:  # fill in what ONNX inference left unknown
            for info in (*symbolic.graph.output, *symbolic.graph.value_info):
                tensor_type = info.type.tensor_type
                if not tensor_type.HasField("shape"):
                    continue
                better = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tensor_type.shape.dim
                ]
                known = dims.get(info.name)
                if known is None or len(known) != len(better):
                    dims[info.name] = better
                else:
                    dims[info.name] = [_better_dim(a, b) for a, b in zip(known, better, strict=True)]
                if tensor_type.elem_type and info.name not in elem_types:
                    elem_types[info.name] = tensor_type.elem_type
        for init in (*graph.initializer, *model.graph.initializer):
            elem_types[init.name] = init.data_type
            dims[init.name] = list(init.dims)
        for name, value in values.items():
            dims[name] = list(value.shape)
            elem_types[name] = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        scopes: dict[str, str] = {}
        for node in model.graph.node:
            for prop in node.metadata_props:
                if prop.key == "pkg.torch.onnx.name_scopes":
                    parts = [p.strip(" '\"") for p in prop.value.strip("[]").split(",")]
                    parts = [p for p in parts if p]
                    if parts:
                        scopes[node.name] = "/".join(parts)
        return cls(elem_types, dims, frozenset(o.name for o in model.graph.output), scopes, values)

    def value(self, tensor: gs.Tensor) -> np.ndarray | None:
        """The value of ``tensor`` if it is a constant or fixed by folded shape arithmetic."""
        if isinstance(tensor, gs.Variable) and tensor.name in self.values:
            return self.values[tensor.name]
        return const_value(tensor)

    def scalar(self, tensor: gs.Tensor) -> float | None:
        """:meth:`value` with exactly one element, as a float."""
        value = self.value(tensor)
        if value is None or value.size != 1:
            return None
        return float(value.reshape(-1)[0])

    def static_shape(self, tensor: gs.Tensor) -> list[int] | None:
        """All dims of ``tensor`` if every one is a known positive int."""
        shape = self.shape(tensor)
        if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
            return None
        return [int(d) for d in shape]

    def axis(self, tensor: gs.Tensor, axis: int) -> int | None:
        """``axis`` of ``tensor`` as a non-negative index (None if negative and the rank is unknown)."""
        if axis >= 0:
            return axis
        rank = self.rank(tensor)
        return None if rank is None else axis + rank

    def rank(self, tensor: gs.Tensor) -> int | None:
        """Rank of ``tensor`` if known."""
        if isinstance(tensor, gs.Constant):
            return len(tensor.shape)
        shape = self.dims.get(tensor.name)
        if shape is None and tensor.shape is not None:
            return len(tensor.shape)
        return None if shape is None else len(shape)

    def shape(self, tensor: gs.Tensor) -> list[int | str | None] | None:
        """Dims of ``tensor`` if its rank is known."""
        if isinstance(tensor, gs.Constant):
            return list(tensor.shape)
        shape = self.dims.get(tensor.name)
        if shape is None and tensor.shape is not None:
            shape = [d if isinstance(d, (int, str)) else None for d in tensor.shape]
        return None if shape is None else list(shape)

    def static_dim(self, tensor: gs.Tensor, axis: int) -> int | None:
        """Dim ``axis`` (negative counts from the end) if it is a known positive int."""
        shape = self.shape(tensor)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        value = shape[axis]
        return value if isinstance(value, int) and value > 0 else None

    def elem_type(self, tensor: gs.Tensor) -> int | None:
        """ONNX element type of ``tensor`` if known."""
        if isinstance(tensor, gs.Constant):
            return onnx.helper.np_dtype_to_tensor_dtype(np.asarray(tensor.values).dtype)
        if tensor.name in self.elem_types:
            return self.elem_types[tensor.name]
        if tensor.dtype is not None:
            try:
                return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
            except TypeError:
                return None
        return None

    def is_last_axis(self, tensor: gs.Tensor, axis: int) -> bool:
        """Whether ``axis`` of ``tensor`` is its last axis."""
        if axis == -1:
            return True
        rank = self.rank(tensor)
        return rank is not None and axis == rank - 1


def split_sizes(node: gs.Node, info: GraphInfo) -> list[int] | None:
    """Output sizes of a ``Split`` (from its input, attribute, or an equal split of a static dim)."""
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = info.value(node.inputs[1])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    if "split" in node.attrs:
        return [int(v) for v in node.attrs["split"]]
    total = info.static_dim(node.inputs[0], attr_int(node, "axis", 0) or 0)
    parts = attr_int(node, "num_outputs") or len(node.outputs)
    if total is None:
        return None
    chunk = -(-total // parts)
    return [min(chunk, total - i * chunk) for i in range(parts)]


def axis_slice(node: gs.Node, info: GraphInfo) -> tuple[int, int, int | None] | None:
    """``(axis, begin, end)`` of a ``Slice`` that cuts one axis of its input with step 1.

    ``axis`` is non-negative where the rank is known (else as written, e.g. -1). Bounds are normalised
    against that axis's size when it is static; an open end (``INT64_MAX``) of an unknown size is
    returned as None. Returns None for any other Slice. Bounds computed by the graph's shape arithmetic
    count when folding fixed them (:attr:`GraphInfo.values`).
    """
    source = node.inputs[0]
    values = [info.value(t) if t.name else None for t in node.inputs[1:]]
    if len(values) < 2 or values[0] is None or values[1] is None:
        return None
    starts, ends = values[0].reshape(-1), values[1].reshape(-1)
    axes = values[2].reshape(-1) if len(values) > 2 and values[2] is not None else np.arange(len(starts))
    steps = values[3].reshape(-1) if len(values) > 3 and values[3] is not None else np.ones(len(starts))
    if len(starts) != 1 or len(ends) != 1 or int(steps[0]) != 1:
        return None
    axis = int(axes[0])
    normal = info.axis(source, axis)
    axis = normal if normal is not None else axis
    size = info.static_dim(source, axis)
    begin, end = int(starts[0]), int(ends[0])
    if size is not None:
        begin = max(0, min(size, begin + size if begin < 0 else begin))
        return axis, begin, max(0, min(size, end + size if end < 0 else end))
    if begin < 0 or end < 0:
        return None
    return axis, begin, (None if end >= 1 << 61 else end)


def last_axis_slice(node: gs.Node, info: GraphInfo) -> tuple[int, int | None] | None:
    """``(begin, end)`` of a ``Slice`` that cuts only the last axis of its input, with step 1.

    Bounds are normalised against the channel count when it is static; an open end (``INT64_MAX``)
    with an unknown channel count is returned as None. Returns None for any other Slice.
    """
    cut = axis_slice(node, info)
    if cut is None or not info.is_last_axis(node.inputs[0], cut[0]):
        return None
    return cut[1], cut[2]
