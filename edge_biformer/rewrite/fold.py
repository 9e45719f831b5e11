"""Fold a graph's shape arithmetic on its static dims, so that the matcher sees the shapes it implies.

The torchscript exporter writes ``x.chunk(3, dim=1)``, ``x.view(B, M, C // M, ...)`` and friends as
``Shape -> Gather -> Add -> Div -> Mul -> Slice`` chains. ONNX shape inference does not propagate
values through ``Div`` (and a few other ops), so every tensor after such a chain has unknown dims even
when the graph input is static, and the matcher cannot read the region count, the channel split or
the region sizes. :func:`fold_shapes` evaluates these chains wherever the dims they read are static
(also in graphs with a dynamic batch: ``Shape -> Gather(1)`` of an ``[N, C, H, W]`` tensor is ``C``),
then runs shape inference again with the folded values as constants, until nothing new is learnt.

The model is not changed: the result is the folded values by tensor name and the inferred model
(a copy) that :class:`~edge_biformer.rewrite.graph.GraphInfo` reads dims and types from. Values are
exact wherever they are given (they depend only on static dims), so the matcher may treat them as
constants.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edge_biformer.onnx_io import constant_node_value

__all__ = ["FoldResult", "fold_shapes", "infer_shapes", "symbolic_shapes"]

#: Only tensors up to this many elements are evaluated (shape vectors, scalars, small index tables).
MAX_ELEMENTS = 4096
#: Initializers up to this many elements are read as values; larger ones only by their shape.
MAX_INITIALIZER = 4096

_UNKNOWN = None


@dataclass
class FoldResult:
    """What folding learnt: ``values`` (fully known tensors by name) and the inferred ``model``.

    ``symbolic`` is the same folded copy after onnxruntime's symbolic shape inference (None where it
    could not run): it carries dims through reshapes whose targets depend on a dynamic batch
    (``x.view(B, ...)`` with ``B`` read from the input), which ONNX shape inference leaves unknown.
    """

    values: dict[str, np.ndarray] = field(default_factory=dict)
    model: onnx.ModelProto | None = None
    symbolic: onnx.ModelProto | None = None
    rounds: int = 0


def _only_batch_dynamic(model: onnx.ModelProto) -> bool:
    """Whether every graph input is static except (perhaps) its first dim."""
    for value in model.graph.input:
        dims = _dims(value)
        if dims is None or any(d is None for d in dims[1:]):
            return False
    return True


def symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic shape inference of ``model`` (None if it is absent, fails, or would be slow).

    Run only on graphs whose inputs are static but for the batch: with a dynamic height and width
    its sympy expressions grow with the depth of the network (seconds per graph) and the matcher does
    not need them (BiFormer's auto_pad graphs keep their channels last, which the walks assume).
    """
    if not _only_batch_dynamic(model):
        return None
    try:
        from onnxruntime.tools import symbolic_shape_infer
    except ImportError:
        return None
    log = logging.getLogger(symbolic_shape_infer.__name__)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with _scratch_cwd():
            return symbolic_shape_infer.SymbolicShapeInference.infer_shapes(
                model, auto_merge=True, guess_output_rank=False
            )
    except Exception:
        return None
    finally:
        log.setLevel(level)


_CWD_LOCK = threading.Lock()


@contextlib.contextmanager
def _scratch_cwd() -> Iterator[None]:
    """Run in a temporary working directory, removed afterwards.

    onnxruntime's symbolic shape inference saves ``sym_shape_infer_temp.onnx`` and an external-data
    file with a generated name into the *current* directory when its inference is incomplete (it
    is on DeBiFormer graphs), which would leave them in the user's folder (or a repository). The
    lock keeps two threads of this module from changing the directory under each other.
    """
    with _CWD_LOCK, tempfile.TemporaryDirectory(prefix="edge-biformer-shapes-") as scratch:
        previous = os.getcwd()
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference with data propagation, falling back to plain inference, then to the model."""
    for data_prop in (True, False):
        try:
            return onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
        except Exception:
            continue
    return model


def _light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large initializers are replaced by graph inputs of the same type and shape.

    Shape inference needs only their shapes; this keeps the repeated inference cheap on big models.
    """
    copy = onnx.ModelProto()
    copy.ir_version = model.ir_version
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    graph = copy.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    declared = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if int(np.prod(init.dims, dtype=np.int64)) <= MAX_INITIALIZER:
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return copy


def _dims(info: onnx.ValueInfoProto) -> list[int | None] | None:
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim
    ]


# -- partial values --------------------------------------------------------------------------------
# A partial value is an object ndarray whose entries are Python numbers or None (unknown), for small
# integer/float tensors. Shape(x) of a tensor with one unknown dim is such a value.


def _partial(value: np.ndarray) -> np.ndarray:
    out = np.empty(value.shape, dtype=object)
    flat = value.reshape(-1)
    out.reshape(-1)[:] = [v.item() for v in flat]
    return out


def _known(value: np.ndarray) -> bool:
    return all(v is not None for v in value.reshape(-1))


def _elementwise(fn: Callable[..., object], *args: np.ndarray) -> np.ndarray:
    def apply(*xs: object) -> object:
        return None if any(x is None for x in xs) else fn(*xs)

    return np.asarray(np.frompyfunc(apply, len(args), 1)(*args), dtype=object)


def _int_div(a: object, b: object) -> object:
    if isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)):
        if b == 0:
            return None
        q = abs(int(a)) // abs(int(b))  # ONNX integer Div truncates toward zero
        return q if (a >= 0) == (b >= 0) else -q
    return None if b == 0 else a / b


_BINARY: dict[str, Callable[[object, object], object]] = {
    "Add": lambda a, b: a + b,
    "Sub": lambda a, b: a - b,
    "Mul": lambda a, b: a * b,
    "Div": _int_div,
    "Mod": lambda a, b: None if b == 0 else a % b,
    "Max": max,
    "Min": min,
    "Equal": lambda a, b: a == b,
    "Less": lambda a, b: a < b,
    "Greater": lambda a, b: a > b,
    "LessOrEqual": lambda a, b: a <= b,
    "GreaterOrEqual": lambda a, b: a >= b,
    "And": lambda a, b: bool(a) and bool(b),
    "Or": lambda a, b: bool(a) or bool(b),
}
_UNARY: dict[str, Callable[[object], object]] = {
    "Neg": lambda a: -a,
    "Abs": abs,
    "Not": lambda a: not a,
    "Floor": lambda a: float(np.floor(a)),
    "Ceil": lambda a: float(np.ceil(a)),
    "Sqrt": lambda a: float(np.sqrt(a)),
    "Identity": lambda a: a,
}


def _ints(value: np.ndarray | None) -> list[int] | None:
    if value is None or not _known(value):
        return None
    return [int(v) for v in value.reshape(-1)]


def _cast(value: np.ndarray, to: int) -> np.ndarray:
    np_type = onnx.helper.tensor_dtype_to_np_dtype(to)
    if np.issubdtype(np_type, np.integer):
        return _elementwise(lambda a: int(a), value)
    if np.issubdtype(np_type, np.floating):
        return _elementwise(lambda a: float(a), value)
    if np_type == np.bool_:
        return _elementwise(lambda a: bool(a), value)
    raise ValueError("unsupported cast")


def _evaluate(
    node: onnx.NodeProto,
    ins: list[np.ndarray | None],
    dims_of: Callable[[str], list[int | None] | None],
) -> list[np.ndarray | None] | None:
    """The partial outputs of ``node`` from partial inputs (None: cannot evaluate)."""
    op = node.op_type
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if op == "Shape":
        dims = dims_of(node.input[0])
        if dims is None:
            return None
        start, end = int(attrs.get("start", 0)), attrs.get("end")
        sel = dims[start:] if end is None else dims[start : int(end)]
        return [np.array(sel, dtype=object).reshape(-1)]
    if op == "Size":
        dims = dims_of(node.input[0])
        if dims is None or any(d is None for d in dims):
            return None
        return [np.array(int(np.prod(dims, dtype=np.int64)), dtype=object)]
    if op == "Constant":
        return None  # read by the caller
    required = ins[:1] if op in ("Gather", "Slice", "Unsqueeze", "Squeeze") else ins
    if not ins or any(v is None for v in required):
        return None
    if op in _BINARY and len(ins) == 2:
        return [_elementwise(_BINARY[op], ins[0], ins[1])]  # type: ignore[arg-type]
    if op in _UNARY:
        return [_elementwise(_UNARY[op], ins[0])]  # type: ignore[arg-type]
    if op == "Cast":
        return [_cast(ins[0], int(attrs["to"]))]  # type: ignore[arg-type]
    if op == "Gather":
        indices = ins[1]
        data = ins[0]
        if indices is None or not _known(indices) or data is None or int(attrs.get("axis", 0)) != 0:
            return None
        idx = np.asarray([int(i) for i in indices.reshape(-1)]).reshape(indices.shape)
        return [np.take(data, idx, axis=0)]
    if op == "Slice":
        data = ins[0]
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts or [])))
        steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts or [])
        if data is None or starts is None or ends is None or axes is None or steps is None:
            return None
        index = [slice(None)] * data.ndim
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            index[axis % data.ndim] = slice(start, end, step)
        return [data[tuple(index)]]
    if op == "Transpose":
        perm = attrs.get("perm")
        return [np.transpose(ins[0], None if perm is None else [int(p) for p in perm])]  # type: ignore[arg-type]
    if op == "Concat":
        if any(v is None for v in ins):
            return None
        return [np.concatenate([np.asarray(v, dtype=object).reshape(-1) for v in ins])]  # type: ignore[union-attr]
    if op in ("Unsqueeze", "Squeeze", "Reshape", "Flatten"):
        data = ins[0]
        assert data is not None
        if op == "Reshape":
            shape = _ints(ins[1])
            if shape is None:
                return None
            return [data.reshape([d if d != 0 else data.shape[i] for i, d in enumerate(shape)])]
        if op == "Flatten":
            return [data.reshape(-1)]
        axes = _ints(ins[1]) if len(ins) > 1 and ins[1] is not None else attrs.get("axes")
        if op == "Unsqueeze":
            if axes is None:
                return None
            out = data
            for axis in sorted(int(a) % (data.ndim + len(axes)) for a in axes):
                out = np.expand_dims(out, axis)
            return [out]
        return [data.squeeze() if axes is None else data.squeeze(tuple(int(a) for a in axes))]
    if op == "Where":
        if any(v is None for v in ins):
            return None
        return [_elementwise(lambda c, a, b: a if c else b, ins[0], ins[1], ins[2])]  # type: ignore[arg-type]
    if op == "ConstantOfShape":
        shape = _ints(ins[0])
        if shape is None or int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
            return None
        fill = attrs.get("value")
        fill_value = numpy_helper.to_array(fill).reshape(-1)[0].item() if fill is not None else 0.0
        out = np.empty(shape, dtype=object)
        out.reshape(-1)[:] = [fill_value] * out.size
        return [out]
    if op == "Range":
        values = [_ints(v) for v in ins]
        if any(v is None or len(v) != 1 for v in values):
            return None
        start, limit, delta = (v[0] for v in values)  # type: ignore[index]
        if delta == 0 or abs((limit - start) // delta) > MAX_ELEMENTS:
            return None
        return [np.array(list(range(start, limit, delta)), dtype=object)]
    if op == "ReduceProd" and ins[0] is not None and _known(ins[0]) and ins[0].ndim <= 1:
        if len(ins) > 1 or "axes" in attrs:
            return None
        keep = int(attrs.get("keepdims", 1))
        prod = int(np.prod([int(v) for v in ins[0].reshape(-1)], dtype=np.int64))
        return [np.array([prod] if keep else prod, dtype=object)]
    return None


def fold_shapes(model: onnx.ModelProto, max_rounds: int = 4) -> FoldResult:
    """Fold the shape arithmetic of ``model`` on its static dims (the model is not changed).

    Returns the fully known values (by tensor name, numpy arrays of the tensors' element types) and
    the shape-inferred copy with those values as initializers.
    """
    light = _light_copy(model)
    result = FoldResult()
    inferred = infer_shapes(light)
    values: dict[str, np.ndarray] = {}
    for _ in range(max_rounds):
        result.rounds += 1
        dims = {v.name: _dims(v) for v in (*inferred.graph.input, *inferred.graph.value_info)}
        dims.update({v.name: _dims(v) for v in inferred.graph.output})
        types = {
            v.name: v.type.tensor_type.elem_type
            for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)
        }
        partial: dict[str, np.ndarray] = {}
        for init in light.graph.initializer:
            if int(np.prod(init.dims, dtype=np.int64)) <= MAX_ELEMENTS:
                partial[init.name] = _partial(numpy_helper.to_array(init))
            dims[init.name] = list(init.dims)
            types[init.name] = init.data_type
        for name, value in values.items():
            partial[name] = _partial(value)
        for node in light.graph.node:
            if node.op_type == "Constant":
                array = constant_node_value(node)
                if array is not None and array.size <= MAX_ELEMENTS:
                    partial[node.output[0]] = _partial(array)
                continue
            if all(o in partial for o in node.output if o):
                continue
            ins = [partial.get(name) if name else None for name in node.input]
            try:
                outs = _evaluate(node, ins, dims.get)
            except Exception:  # an op we read wrongly folds nothing, it must not stop the analysis
                outs = None
            if outs is None:
                continue
            for name, value in zip(node.output, outs, strict=False):
                if value is None:
                    continue
                value = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object)
                if value.size <= MAX_ELEMENTS:
                    partial[name] = value.astype(object)
        new: dict[str, np.ndarray] = {}
        producers = {o: n for n in light.graph.node for o in n.output}
        for name, value in partial.items():
            if name in values or not _known(value) or name not in producers:
                continue
            if producers[name].op_type == "Constant":
                continue
            elem = types.get(name) or TensorProto.INT64
            try:
                np_type = onnx.helper.tensor_dtype_to_np_dtype(elem)
                new[name] = np.array(value.tolist(), dtype=np_type).reshape(value.shape)
            except (TypeError, ValueError):
                continue
        if not new:
            break
        values.update(new)
        # Shape inference again, with the folded tensors as constants (their producers removed).
        folded = onnx.ModelProto()
        folded.CopyFrom(light)
        keep = [n for n in folded.graph.node if not (n.output and all(o in values for o in n.output if o))]
        del folded.graph.node[:]
        folded.graph.node.extend(keep)
        del folded.graph.value_info[:]
        for name, value in values.items():
            folded.graph.initializer.append(numpy_helper.from_array(value, name))
        inferred = infer_shapes(folded)
        light = folded
    result.values = values
    result.model = inferred
    if any(_dims(v) is None or None in (_dims(v) or []) for v in inferred.graph.value_info):
        result.symbolic = symbolic_shapes(light)
    return result
