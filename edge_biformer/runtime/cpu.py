"""Run rewritten graphs (with ``BiLevelRoutingAttention`` plugin nodes) in onnxruntime on the CPU.

Mechanism: an onnxruntime-extensions Python custom op. onnxruntime-extensions registers its
Python ops in its own domain ``ai.onnx.contrib`` (fixed by the library) and its Python op API has
no float16, so :func:`cpu_session` prepares an in-memory copy of the model for the session:

* each plugin node keeps its op type, inputs, output and attributes; only its domain is changed
  from ``trt.plugins`` to ``ai.onnx.contrib``;
* for a float16 node, ``Cast`` nodes convert ``q``, ``k``, ``v`` to float32 and the output back to
  float16. This is exactly the op's precision contract (float32 math, output rounded to float16)
  because float16 values are exact in float32.

The op itself is :func:`edge_biformer.ops.routed_attention_reference`. The file on disk is never
changed, and graphs without plugin nodes are passed to onnxruntime unchanged.

onnxruntime-extensions aborts the whole process if a Python op raises. The op therefore never
raises: it records the error, returns NaNs, and :meth:`CpuSession.run` raises the recorded error
(:class:`BraOpError`) instead of returning outputs.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.surgery.contract import (
    OP_DOMAIN,
    OP_TYPE,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
)

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
    """A BiLevelRoutingAttention node failed inside onnxruntime (inputs that break the op contract)."""


def _register_python_op() -> str:
    """Register the Python implementation with onnxruntime-extensions (once); return its library path."""
    global _REGISTERED
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise EdgeBiformerError(
            "running BiLevelRoutingAttention nodes on the CPU needs onnxruntime-extensions: "
            "pip install 'onnxruntime-extensions>=0.12,<0.16'"
        ) from err
    with _REGISTER_LOCK:
        if not _REGISTERED:
            dt = PyCustomOpDef
            onnx_op(
                op_type=OP_TYPE,
                inputs=[dt.dt_float, dt.dt_float, dt.dt_float, dt.dt_int32],
                outputs=[dt.dt_float],
                attrs={
                    "plugin_version": dt.dt_string,
                    "plugin_namespace": dt.dt_string,
                    "n_win": dt.dt_int64,
                    "num_heads": dt.dt_int64,
                    "topk": dt.dt_int64,
                    "scale": dt.dt_float,
                },
            )(_run_bra)
            _REGISTERED = True
    return get_library_path()


def _run_bra(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    r_idx: np.ndarray,
    *,
    plugin_version: str,
    plugin_namespace: str,
    n_win: int,
    num_heads: int,
    topk: int,
    scale: float,
) -> np.ndarray:
    """The body of the custom op: check the attributes against the inputs, run the reference.

    Never raises (see the module docstring): an error is recorded for :meth:`CpuSession.run`.
    """
    try:
        import torch

        from edge_biformer.ops.bra_reference import routed_attention_reference

        if r_idx.ndim != 3 or r_idx.shape[1] != n_win * n_win or r_idx.shape[2] != topk:
            raise ValueError(
                f"r_idx has shape {tuple(r_idx.shape)}, the attributes say "
                f"[N, n_win*n_win={n_win * n_win}, topk={topk}]"
            )
        with torch.inference_mode():
            out = routed_attention_reference(
                torch.from_numpy(np.ascontiguousarray(q)),
                torch.from_numpy(np.ascontiguousarray(k)),
                torch.from_numpy(np.ascontiguousarray(v)),
                torch.from_numpy(np.ascontiguousarray(r_idx)),
                num_heads=int(num_heads),
                scale=float(scale),
            )
        return out.numpy()
    except BaseException as err:  # raising here would abort the process
        with _ERRORS_LOCK:
            _ERRORS.append(f"{OP_TYPE}: {err}")
        shape = (*q.shape[:3], v.shape[-1]) if q.ndim == 4 and v.ndim >= 1 else (1,)
        return np.full(shape, np.nan, dtype=np.float32)


class CpuSession(ort.InferenceSession):
    """An ``onnxruntime.InferenceSession`` whose :meth:`run` re-raises errors of the plugin op."""

    def run(self, output_names, input_feed, run_options=None):  # type: ignore[override]
        """As :meth:`onnxruntime.InferenceSession.run`; raises :class:`BraOpError` if a plugin node failed."""
        # One run at a time: the op records its errors in one process-wide list (the Python op
        # holds the GIL anyway, so this costs no parallelism).
        with _RUN_LOCK:
            with _ERRORS_LOCK:
                _ERRORS.clear()
            outputs = super().run(output_names, input_feed, run_options)
            with _ERRORS_LOCK:
                errors = list(dict.fromkeys(_ERRORS))
                _ERRORS.clear()
        if errors:
            raise BraOpError("; ".join(errors))
        return outputs


def _is_plugin(node: onnx.NodeProto) -> bool:
    return node.op_type == OP_TYPE and node.domain == OP_DOMAIN


def _iter_graphs(graph: onnx.GraphProto):
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
    except Exception:  # inference is only used to find float16 plugin inputs
        inferred = model
    types: dict[str, int] = {}
    for graph in _iter_graphs(inferred.graph):
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                types[info.name] = info.type.tensor_type.elem_type
        for init in graph.initializer:
            types[init.name] = init.data_type
    return types


def _check_attributes(node: onnx.NodeProto, where: str) -> None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    missing = [n for n in ("n_win", "num_heads", "topk", "scale") if n not in attrs]
    if missing:
        raise EdgeBiformerError(
            f"{where}: {OP_TYPE} node {node.name!r} lacks the attribute(s) {', '.join(missing)}; "
            "rewrite the original graph again with `edge-biformer rewrite`"
        )
    version = (
        attrs.get("plugin_version", b"").decode() if isinstance(attrs.get("plugin_version"), bytes) else ""
    )
    namespace = (
        attrs.get("plugin_namespace", b"").decode()
        if isinstance(attrs.get("plugin_namespace"), bytes)
        else ""
    )
    if version != PLUGIN_VERSION or namespace != PLUGIN_NAMESPACE:
        raise EdgeBiformerError(
            f"{where}: {OP_TYPE} node {node.name!r} asks for plugin version {version!r} in namespace "
            f"{namespace!r}; this edge-biformer implements version {PLUGIN_VERSION!r} in namespace "
            f"{PLUGIN_NAMESPACE!r}. Rewrite the graph with this version of edge-biformer"
        )
    if len(node.input) != 4 or len(node.output) != 1:
        raise EdgeBiformerError(
            f"{where}: {OP_TYPE} node {node.name!r} has {len(node.input)} inputs and {len(node.output)} "
            "outputs; the op takes q, k, v, r_idx and returns o"
        )


def prepare_for_cpu(model: onnx.ModelProto, where: str = "model") -> tuple[onnx.ModelProto, int]:
    """Return (a copy of ``model`` that onnxruntime can run with the Python op, plugin node count).

    ``where`` names the model in error messages. The input model is not modified; a model
    without plugin nodes is returned as is (count 0).
    """
    count = sum(1 for g in _iter_graphs(model.graph) for n in g.node if _is_plugin(n))
    if count == 0:
        return model, 0
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    types = _elem_types(prepared)
    for graph in _iter_graphs(prepared.graph):
        new_nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if not _is_plugin(node):
                new_nodes.append(node)
                continue
            _check_attributes(node, where)
            node.domain = CUSTOM_DOMAIN
            q_type = types.get(node.input[0], TensorProto.FLOAT)
            if q_type == TensorProto.FLOAT16:
                base = node.name or node.output[0]
                for i in range(3):
                    cast_out = f"{base}/cpu_cast_in{i}"
                    new_nodes.append(
                        helper.make_node(
                            "Cast",
                            [node.input[i]],
                            [cast_out],
                            name=f"{base}/CpuCastIn{i}",
                            to=TensorProto.FLOAT,
                        )
                    )
                    node.input[i] = cast_out
                out_name = node.output[0]
                node.output[0] = f"{base}/cpu_out_float"
                new_nodes.append(node)
                new_nodes.append(
                    helper.make_node(
                        "Cast",
                        [node.output[0]],
                        [out_name],
                        name=f"{base}/CpuCastOut",
                        to=TensorProto.FLOAT16,
                    )
                )
            elif q_type in (TensorProto.FLOAT, TensorProto.UNDEFINED):
                new_nodes.append(node)
            else:
                raise EdgeBiformerError(
                    f"{where}: {OP_TYPE} node {node.name!r} takes q of type "
                    f"{TensorProto.DataType.Name(q_type)}; the op is defined for float32 and float16"
                )
        del graph.node[:]
        graph.node.extend(new_nodes)
    domains = {o.domain for o in prepared.opset_import}
    if CUSTOM_DOMAIN not in domains:
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
    """An ``onnxruntime.InferenceSession`` (CPU) that also runs ``BiLevelRoutingAttention`` nodes.

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
        path = Path(onnx_path)
        where = str(path)
        if not path.is_file():
            raise EdgeBiformerError(f"{path}: no such ONNX file")
        try:
            model = onnx.load(str(path))
        except Exception as err:
            raise EdgeBiformerError(
                f"{path} is not a readable ONNX model ({type(err).__name__}: {err}); "
                "export it again (edge-biformer export) or check that the file was copied completely"
            ) from err
    prepared, count = prepare_for_cpu(model, where)
    options = kwargs.pop("sess_options", None) or session_options(model)
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    if count:
        options.register_custom_ops_library(_register_python_op())
        return CpuSession(prepared.SerializeToString(), options, **kwargs)
    if isinstance(onnx_path, onnx.ModelProto):
        return ort.InferenceSession(model.SerializeToString(), options, **kwargs)
    return ort.InferenceSession(str(onnx_path), options, **kwargs)
