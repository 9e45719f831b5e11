"""Run graphs that hold the package's custom ops (the TensorRT plugin nodes) in onnxruntime on the CPU.

Mechanism: an onnxruntime-extensions Python custom op per op of :data:`edge_biformer.ops.OPS`,
declared from its contract (inputs, outputs, attribute types). onnxruntime-extensions registers
its Python ops in its own domain ``ai.onnx.contrib`` (fixed by the library) and its Python op API has
no float16, so :func:`cpu_session` prepares an in-memory copy of the model for the session:

* each custom node keeps its op type, inputs, outputs and attributes; only its domain is changed
  (``trt.plugins`` -> ``ai.onnx.contrib``);
* for a float16 node, ``Cast`` nodes convert its float inputs to float32 and its float outputs back
  to float16. For ``BiLevelRoutingAttention`` this is exactly the op's precision contract (float32
  math, output rounded to float16) because float16 values are exact in float32.

The file on disk is never changed, and graphs without custom nodes are passed to onnxruntime
unchanged.

onnxruntime-extensions aborts the whole process if a Python op raises. The op bodies therefore
never raise: they record the error, return NaNs, and :meth:`CpuSession.run` raises the recorded
error (:class:`BraOpError`) instead of returning outputs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.ops import OPS, Op, find_op

__all__ = [
    "CUSTOM_DOMAIN",
    "BraOpError",
    "CpuSession",
    "cpu_session",
    "prepare_for_cpu",
    "runs_unoptimized",
    "session_options",
]

#: The domain onnxruntime-extensions registers its Python custom ops in.
CUSTOM_DOMAIN = "ai.onnx.contrib"

_REGISTER_LOCK = threading.Lock()
_REGISTERED = False
_ERRORS_LOCK = threading.Lock()
_RUN_LOCK = threading.Lock()
_ERRORS: list[str] = []


class BraOpError(RuntimeError):
    """A custom node failed inside onnxruntime (inputs that break the op contract)."""


def _ort_ext_type(dt: Any, element_type: str) -> Any:
    return {"float32": dt.dt_float, "float16": dt.dt_float, "int32": dt.dt_int32}[element_type]


def _body(op: Op) -> Any:
    """The Python op body of ``op``: never raises (see the module docstring)."""

    def body(*inputs: np.ndarray, **attrs: Any) -> Any:
        try:
            outputs = op.cpu_kernel(*inputs, **attrs)
        except BaseException as err:  # raising here would abort the process
            with _ERRORS_LOCK:
                _ERRORS.append(f"{op.contract.op_type}: {err}")
            try:
                shapes = op.cpu_output_shapes(*inputs)
            except Exception:
                shapes = [(1,)] * len(op.contract.outputs)
            outputs = [np.full(s, np.nan, dtype=np.float32) for s in shapes]
            return outputs[0] if len(outputs) == 1 else tuple(outputs)
        return outputs

    body.__name__ = f"{op.contract.op_type}_cpu"
    return body


def _register_python_ops() -> str:
    """Register every op of :data:`OPS` with onnxruntime-extensions (once); return its library path."""
    global _REGISTERED
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise EdgeBiformerError(
            "running the plugin ops on the CPU needs onnxruntime-extensions: "
            "pip install 'onnxruntime-extensions>=0.12,<0.16'"
        ) from err
    with _REGISTER_LOCK:
        if not _REGISTERED:
            dt = PyCustomOpDef
            attr_types = {"string": dt.dt_string, "int": dt.dt_int64, "float": dt.dt_float}
            for op in OPS:
                c = op.contract
                onnx_op(
                    op_type=c.op_type,
                    inputs=[_ort_ext_type(dt, c.element_types(t)[0]) for t in c.inputs],
                    outputs=[_ort_ext_type(dt, c.element_types(t)[0]) for t in c.outputs],
                    attrs={a.name: attr_types[a.type] for a in c.attributes},
                )(_body(op))
            _REGISTERED = True
    return get_library_path()


class CpuSession(ort.InferenceSession):
    """An ``onnxruntime.InferenceSession`` whose :meth:`run` re-raises errors of the custom ops."""

    def run(self, output_names, input_feed, run_options=None):  # type: ignore[override]
        """As :meth:`onnxruntime.InferenceSession.run`; raises :class:`BraOpError` if a custom node failed."""
        # One run at a time: the ops record their errors in one process-wide list (a Python op
        # holds the GIL anyway, so this costs no parallelism).
        with _RUN_LOCK:
            with _ERRORS_LOCK:
                _ERRORS.clear()
            failure: Exception | None = None
            try:
                outputs = super().run(output_names, input_feed, run_options)
            except Exception as err:  # a NaN stand-in output can upset a later node
                failure = err
            with _ERRORS_LOCK:
                errors = list(dict.fromkeys(_ERRORS))
                _ERRORS.clear()
        if errors:
            raise BraOpError("; ".join(errors)) from failure
        if failure is not None:
            raise failure
        return outputs


def _iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _iter_graphs(sub)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor whose type onnx can infer (names across all graphs)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is only used to find float16 custom-op inputs
        inferred = model
    types: dict[str, int] = {}
    for graph in _iter_graphs(inferred.graph):
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                types[info.name] = info.type.tensor_type.elem_type
        for init in graph.initializer:
            types[init.name] = init.data_type
    return types


def _prepare_node(op: Op, node: onnx.NodeProto, types: dict[str, int], where: str) -> list[onnx.NodeProto]:
    """The nodes that replace one custom node for the CPU session (casts around a float16 node)."""
    c = op.contract
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    c.check_node(attrs, len(node.input), len(node.output), where, node.name)
    node.domain = CUSTOM_DOMAIN
    float_inputs = [i for i, t in enumerate(c.inputs) if "float16" in c.element_types(t)]
    first_type = (
        types.get(node.input[float_inputs[0]], TensorProto.FLOAT) if float_inputs else TensorProto.FLOAT
    )
    if first_type in (TensorProto.FLOAT, TensorProto.UNDEFINED):
        return [node]
    if first_type != TensorProto.FLOAT16:
        raise EdgeBiformerError(
            f"{where}: {c.op_type} node {node.name!r} takes {c.inputs[float_inputs[0]].name} of type "
            f"{TensorProto.DataType.Name(first_type)}; the op is defined for float32 and float16"
        )
    base = node.name or node.output[0]
    nodes: list[onnx.NodeProto] = []
    for i in float_inputs:
        cast_out = f"{base}/cpu_cast_in{i}"
        nodes.append(
            helper.make_node(
                "Cast", [node.input[i]], [cast_out], name=f"{base}/CpuCastIn{i}", to=TensorProto.FLOAT
            )
        )
        node.input[i] = cast_out
    nodes.append(node)
    for i, t in enumerate(c.outputs):
        if "float16" not in c.element_types(t):
            continue
        out_name = node.output[i]
        node.output[i] = f"{base}/cpu_out{i}_float"
        nodes.append(
            helper.make_node(
                "Cast", [node.output[i]], [out_name], name=f"{base}/CpuCastOut{i}", to=TensorProto.FLOAT16
            )
        )
    return nodes


def prepare_for_cpu(model: onnx.ModelProto, where: str = "model") -> tuple[onnx.ModelProto, int]:
    """Return (a copy of ``model`` that onnxruntime can run with the Python ops, custom node count).

    ``where`` names the model in error messages. The input model is not modified; a model
    without custom nodes is returned as is (count 0).
    """
    count = sum(1 for g in _iter_graphs(model.graph) for n in g.node if find_op(n) is not None)
    if count == 0:
        return model, 0
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    types = _elem_types(prepared)
    for graph in _iter_graphs(prepared.graph):
        new_nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            op = find_op(node)
            new_nodes.extend([node] if op is None else _prepare_node(op, node, types, where))
        del graph.node[:]
        graph.node.extend(new_nodes)
    if CUSTOM_DOMAIN not in {o.domain for o in prepared.opset_import}:
        prepared.opset_import.append(helper.make_opsetid(CUSTOM_DOMAIN, 1))
    return prepared, count


def runs_unoptimized(model: onnx.ModelProto) -> bool:
    """Whether onnxruntime must run ``model`` without graph optimizations to compute it correctly.

    onnxruntime 1.31's CPU graph optimizations (ORT_ENABLE_BASIC and above) corrupt Q/DQ graphs
    whose float part is float16: the reduced test model's INT8 graph scored 49 % top-1 instead of
    99 %, and modelopt's own ``high_precision_dtype="fp16"`` output does the same. Graphs with
    float16 tensors therefore run unoptimized. Float32 graphs, Q/DQ ones included, keep the
    defaults (onnxruntime then runs Q/DQ pairs as integer ops, as TensorRT does).
    """
    graph = model.graph
    if any(init.data_type == TensorProto.FLOAT16 for init in graph.initializer):
        return True
    values = [*graph.input, *graph.output, *graph.value_info]
    if any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in values):
        return True
    return any(
        node.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in node.attribute)
        for node in graph.node
    )


def session_options(model: onnx.ModelProto) -> ort.SessionOptions:
    """CPU session options for ``model``: quiet logs; no graph optimizations if :func:`runs_unoptimized`."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if runs_unoptimized(model):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def cpu_session(onnx_path: str | os.PathLike[str] | onnx.ModelProto, **kwargs: Any) -> ort.InferenceSession:
    """An ``onnxruntime.InferenceSession`` (CPU) that also runs the package's custom (plugin) nodes.

    Args:
        onnx_path: path of an ONNX file (or a loaded ``onnx.ModelProto``), with or without plugin nodes.
        **kwargs: passed to ``onnxruntime.InferenceSession`` (e.g. ``sess_options``); ``providers``
            defaults to ``["CPUExecutionProvider"]``. A given ``sess_options`` gets the custom-op
            library registered on it; without one, :func:`session_options` chooses them (graph
            optimizations off for float16 graphs).

    Returns:
        the session; inputs and outputs are those of the graph.

    Raises:
        EdgeBiformerError: the file is missing or not a valid ONNX model, or a plugin node is of
            another version/namespace or type than this package implements.
    """
    if isinstance(onnx_path, onnx.ModelProto):
        model, where = onnx_path, "the given model"
    else:
        from edge_biformer.onnx_io import load_model

        model, where = load_model(onnx_path, check=False), str(onnx_path)
    prepared, count = prepare_for_cpu(model, where)
    options = kwargs.pop("sess_options", None) or session_options(model)
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    if count:
        options.register_custom_ops_library(_register_python_ops())
        return CpuSession(prepared.SerializeToString(), options, **kwargs)
    if isinstance(onnx_path, onnx.ModelProto):
        return ort.InferenceSession(model.SerializeToString(), options, **kwargs)
    return ort.InferenceSession(str(Path(onnx_path)), options, **kwargs)
