"""What the quantize stage accepts, checked before nvidia-modelopt sees it, and how it calibrates.

The source must be a readable, valid, float32 plain export (not yet converted, quantized or
rewritten) with finite weights and one ``N x 3 x H x W`` float32 image input; anything else gets one
clear error naming the file and the fix (modelopt's own errors about such graphs are tracebacks
from deep inside it). :func:`calibration_batches` decides the calibration batch: modelopt cuts the
calibration array into equal batches of a fixed size, so the batch must fit the graph's static
batch dimension, and images beyond the last whole batch would be dropped without a word.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from edge_biformer.check.finite import require_finite_initializers
from edge_biformer.onnx_io import graph_inputs, graph_kind, load_model, validate
from edge_biformer.quantize.toolkit import QuantizationError

__all__ = ["CalibrationBatches", "calibration_batches", "load_source", "write_private_copy"]

_WHAT_IT_IS = {
    "plugin": "already rewritten (it has BiLevelRoutingAttention plugin nodes)",
    "qdq": "already quantized to INT8 (it has Q/DQ nodes)",
    "fp16": "already converted to float16",
}


def load_source(path: str | os.PathLike[str], precision: str) -> onnx.ModelProto:
    """The plain float32 export at ``path``, checked (external data loaded)."""
    path = Path(path)
    model = load_model(path, check=False, error=QuantizationError)
    kind = graph_kind(model)
    if kind in _WHAT_IT_IS:
        raise QuantizationError(
            f"{path} is {_WHAT_IT_IS[kind]}: --precision {precision} starts from the plain export (float32, "
            "the output of `edge-biformer export`, before quantize and rewrite); quantize that, then "
            "rewrite the result"
        )
    custom = sorted({n.domain for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise QuantizationError(
            f"{path} has nodes of the custom domain(s) {', '.join(custom)}, which onnxruntime cannot run for "
            "calibration: quantize the graph before adding custom ops"
        )
    validate(model, path, QuantizationError)
    require_finite_initializers(model, path, QuantizationError)
    inputs = graph_inputs(model)
    if len(inputs) != 1 or len(inputs[0].dims) != 4 or inputs[0].elem_type != onnx.TensorProto.FLOAT:
        described = ", ".join(
            f"{i.name} {list(i.dims)} ({onnx.TensorProto.DataType.Name(i.elem_type)})" for i in inputs
        )
        raise QuantizationError(
            f"{path} has the inputs {described or 'none'}; quantize calibrates a graph with one float32 "
            "image input N x 3 x H x W (as `edge-biformer export` writes)"
        )
    return model


@dataclass(frozen=True)
class CalibrationBatches:
    """How the calibration set is fed: ``usable`` tensors in batches of ``batch``; ``note`` says why."""

    batch: int
    usable: int
    note: str | None = None


def calibration_batches(model: onnx.ModelProto, requested: int, count: int) -> CalibrationBatches:
    """The calibration batch for ``count`` tensors: the graph's static batch, else ``requested``.

    With a dynamic batch the largest batch <= ``requested`` that divides ``count`` (not below half
    of it) keeps every image; otherwise the images after the last whole batch are left out, and
    ``note`` says how many and why.
    """
    static = graph_inputs(model)[0].dims[0]
    if isinstance(static, int):
        if count < static:
            raise QuantizationError(
                f"the graph's input has a static batch of {static} and there are only {count} calibration "
                f"images: give at least {static} (a few hundred are usual), or export with a dynamic batch"
            )
        batch = static
    else:
        batch = max(1, min(requested, count))
        divisor = next(d for d in range(batch, 0, -1) if count % d == 0)
        if divisor >= max(1, batch // 2):
            batch = divisor
    usable = count // batch * batch
    note = None
    if usable < count:
        note = (
            f"{count - usable} of {count} calibration images left out: modelopt calibrates in whole batches "
            f"of {batch}{' (the static batch of the graph)' if isinstance(static, int) else ''}; give a "
            f"multiple of {batch} to use all"
        )
    return CalibrationBatches(batch, usable, note)


def write_private_copy(model: onnx.ModelProto, folder: str | os.PathLike[str]) -> Path:
    """``model`` as ``folder/model.onnx``, external data inlined (or beside it, over 2 GiB).

    modelopt writes its intermediate graphs beside its input: in a private folder they never
    appear beside the user's files, and a source with external data is readable there too.
    """
    path = Path(folder) / "model.onnx"
    if model.ByteSize() > 2**31 - 2**20:  # protobuf's limit for one file
        onnx.save(model, str(path), save_as_external_data=True, location="model.onnx.data")
    else:
        onnx.save(model, str(path))
    return path


def private_folder() -> tempfile.TemporaryDirectory[str]:
    """A private working folder for modelopt (removed on exit, on Ctrl-C too)."""
    return tempfile.TemporaryDirectory(prefix="edge_biformer_q_")
