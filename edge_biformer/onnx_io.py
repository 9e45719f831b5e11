"""ONNX files in one place: loading with clear errors, atomic saving with provenance, and inspection.

Every stage and command reads and writes graphs through this module, so a missing, empty,
truncated or invalid file gives the same one-paragraph error everywhere, every written graph
carries its provenance in ``metadata_props`` (see :mod:`edge_biformer.manifest`), and questions
about a graph (what kind of graph is it, what is its image input) have one answer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.ops import find_op
from edge_biformer.utils import atomic_output

__all__ = [
    "GRAPH_KINDS",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "GraphInterface",
    "TensorInfo",
    "constant_node_value",
    "constant_value",
    "feature_output_name",
    "graph_inputs",
    "graph_interface",
    "graph_kind",
    "graph_outputs",
    "graph_precision",
    "image_size",
    "load_model",
    "metadata",
    "save_model",
    "validate",
]

#: The interface of the graphs ``edge-biformer export`` writes: one image input, one output.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: Dense backbones (``--features-only``) have one output per stage of ``out_indices`` instead:
#: ``feat0`` .. ``feat3``, named by stage index (stride 4, 8, 16, 32).
FEATURE_OUTPUT_PREFIX = "feat"


def feature_output_name(stage: int) -> str:
    """The graph output name of a dense backbone's stage ``stage`` (0-3): ``feat{stage}``."""
    return f"{FEATURE_OUTPUT_PREFIX}{stage}"


#: What a graph holds: ``plugin`` (custom ops of the rewrite), ``qdq`` (INT8 Q/DQ), ``fp16``
#: (float16 compute) or ``plain`` (a float32 export).
GRAPH_KINDS = ("plain", "fp16", "qdq", "plugin")
#: Prefix of the provenance keys in ``metadata_props``.
METADATA_PREFIX = "edge_biformer."


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value of a ``Constant`` node (tensor, int(s) or float(s) attribute), else ``None``."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_int", "value_ints"):
            return np.asarray(onnx.helper.get_attribute_value(attr), dtype=np.int64)
        if attr.name in ("value_float", "value_floats"):
            return np.asarray(onnx.helper.get_attribute_value(attr), dtype=np.float32)
    return None


def constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of the tensor ``name`` when an initializer or a ``Constant`` node holds it, else ``None``."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            return constant_node_value(node)
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load_model(
    path: str | os.PathLike[str],
    *,
    check: bool = True,
    load_external_data: bool = True,
    error: type[EdgeBiformerError] = EdgeBiformerError,
) -> onnx.ModelProto:
    """Load an ONNX file; one clear ``error`` for missing, empty, truncated, non-ONNX or invalid files."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: no such file; give the path of an .onnx file (edge-biformer export writes one)")
    if path.is_dir():
        raise error(f"{path} is a directory; give the path of an .onnx file")
    if path.stat().st_size == 0:
        raise error(f"{path} is empty (0 bytes); export the model again")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as err:
        raise error(
            f"{path} is not a readable ONNX model ({_first_line(err)}); the file is probably truncated or "
            "not ONNX: export it again or copy it completely"
        ) from err
    if not model.graph.node:
        raise error(
            f"{path} has no graph nodes: it is not an ONNX model (or it is truncated); export it again"
        )
    if check:
        validate(model, path, error)
    return model


def validate(
    model: onnx.ModelProto, path: str | os.PathLike[str], error: type[EdgeBiformerError] = EdgeBiformerError
) -> None:
    """``onnx.checker`` on a loaded model, as one clear ``error`` naming ``path``."""
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise error(
            f"{path} is not a valid ONNX model ({_first_line(err)}); export it again or fix the graph first"
        ) from err


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    provenance: Mapping[str, str] | None = None,
    check: bool = False,
    error: type[EdgeBiformerError] = EdgeBiformerError,
) -> Path:
    """Write ``model`` atomically (nothing half-written is left on failure); return the path.

    ``provenance`` becomes ``metadata_props`` entries ``edge_biformer.<key>`` (replacing earlier
    ones), so the graph tells where it comes from even without its side-car manifest. ``check``
    runs ``onnx.checker`` on the written file.
    """
    if provenance:
        stamp(model, provenance)
    with atomic_output(path, suffix=".onnx") as tmp:
        try:
            onnx.save(model, str(tmp))
        except ValueError as err:  # > 2 GB protobuf
            raise error(
                f"{path}: the graph is too large for one ONNX file ({err}); graphs over 2 GB are not "
                "supported"
            ) from err
        if check:
            onnx.checker.check_model(str(tmp))
    return Path(path)


def stamp(model: onnx.ModelProto, provenance: Mapping[str, str]) -> None:
    """Set ``metadata_props`` ``edge_biformer.<key> = value`` on ``model`` (in place)."""
    keys = {METADATA_PREFIX + k for k in provenance}
    kept = [p for p in model.metadata_props if p.key not in keys]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in provenance.items():
        model.metadata_props.add(key=METADATA_PREFIX + key, value=str(value))


def metadata(model: onnx.ModelProto | str | os.PathLike[str]) -> dict[str, str]:
    """The ``edge_biformer.*`` provenance entries of a graph (without the prefix)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    n = len(METADATA_PREFIX)
    return {p.key[n:]: p.value for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def graph_kind(model: onnx.ModelProto | str | os.PathLike[str]) -> str:
    """``plugin`` (already rewritten), ``qdq`` (quantized), ``fp16`` (converted) or ``plain``."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    if any(find_op(n) is not None for n in model.graph.node):
        return "plugin"
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "qdq"
    if any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "plain"


def graph_precision(model: onnx.ModelProto | str | os.PathLike[str]) -> str:
    """The precision a graph was converted to, plugin nodes or not: ``int8`` (Q/DQ), ``fp16`` or ``fp32``."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node):
        return "int8"
    if any(i.data_type == TensorProto.FLOAT16 for i in graph.initializer) or any(
        v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in (*graph.input, *graph.value_info)
    ):
        return "fp16"
    return "fp32"


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, element type and dims (``int``, a ``str`` name, or ``None``)."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...]

    @property
    def static(self) -> bool:
        """Whether every dim is a known positive integer."""
        return all(isinstance(d, int) and d > 0 for d in self.dims)


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | str | None, ...]:
    out: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or None)
    return tuple(out)


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """The inputs a caller feeds (initializers listed as inputs by old exporters are left out)."""
    initializers = {i.name for i in model.graph.initializer}
    return [
        TensorInfo(i.name, i.type.tensor_type.elem_type, _dims(i))
        for i in model.graph.input
        if i.name not in initializers
    ]


def graph_outputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """The graph outputs."""
    return [TensorInfo(o.name, o.type.tensor_type.elem_type, _dims(o)) for o in model.graph.output]


def image_size(
    path: str | os.PathLike[str], error: type[EdgeBiformerError] = EdgeBiformerError
) -> tuple[int, int] | None:
    """Static (H, W) of the graph's image input ``N x C x H x W``, or ``None`` if H or W is dynamic."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise error(f"cannot read the ONNX model {path}: {err}") from None
    inputs = graph_inputs(model)
    if not inputs:
        raise error(f"{path} has no graph inputs; export the model again")
    dims = inputs[0].dims
    if len(dims) != 4:
        raise error(f"{path}: expected an N x 3 x H x W image input, got rank {len(dims)}")
    h, w = dims[2], dims[3]
    return (h, w) if isinstance(h, int) and isinstance(w, int) else None


@dataclass(frozen=True)
class GraphInterface:
    """What a graph takes and gives: one image input ``N x C x H x W`` and its outputs, in order.

    Every stage reads a graph's interface from here (``edge-biformer export`` writes ``input`` ->
    ``logits``; a graph of one's own has its own names, static or dynamic dims, several outputs).
    """

    input: TensorInfo
    outputs: tuple[TensorInfo, ...]

    @property
    def static_batch(self) -> int | None:
        """The input's batch size when the graph fixes it, else ``None``."""
        n = self.input.dims[0]
        return n if isinstance(n, int) else None

    @property
    def channels(self) -> int:
        """The input's channel count (static: checked by :func:`graph_interface`)."""
        c = self.input.dims[1]
        assert isinstance(c, int)
        return c

    @property
    def image_size(self) -> tuple[int, int] | None:
        """Static (H, W), or ``None`` when H or W is dynamic."""
        h, w = self.input.dims[2], self.input.dims[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    @property
    def output_names(self) -> list[str]:
        """The output names, in graph order."""
        return [o.name for o in self.outputs]

    def to_manifest(self) -> dict[str, object]:
        """``input`` and ``outputs`` records of a manifest (dynamic dims by name, ``N`` for the batch)."""

        def dims(t: TensorInfo, batch: bool) -> list[int | str]:
            out: list[int | str] = []
            for i, d in enumerate(t.dims):
                out.append(d if isinstance(d, int) else ("N" if i == 0 and batch else (d or "?")))
            return out

        return {
            "input": {"name": self.input.name, "dtype": _DTYPES.get(self.input.elem_type, "?"),
                      "shape": dims(self.input, True)},
            "outputs": [
                {"name": o.name, "dtype": _DTYPES.get(o.elem_type, "?"), "shape": dims(o, True),
                 "kind": output_kind(o)}
                for o in self.outputs
            ],
        }  # fmt: skip


_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT64: "int64",
           TensorProto.INT32: "int32", TensorProto.BOOL: "bool", TensorProto.UINT8: "uint8"}  # fmt: skip


def output_kind(output: TensorInfo) -> str:
    """``classifier`` for a rank-2 ``[N, classes]`` output (logits, scores), else ``dense`` (feature
    maps, detection heads, segmentation maps): what the check measures on it (docs/build.md)."""
    return "classifier" if len(output.dims) == 2 else "dense"


def graph_interface(
    model: onnx.ModelProto | str | os.PathLike[str], error: type[EdgeBiformerError] = EdgeBiformerError
) -> GraphInterface:
    """The image input and the outputs of a graph, with one clear ``error`` for what the toolkit cannot feed.

    The graph must have exactly one input, a float ``N x C x H x W`` image with a static channel count.
    """
    where = "the graph" if isinstance(model, onnx.ModelProto) else str(model)
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model), load_external_data=False)
        except Exception as err:
            raise error(f"cannot read the ONNX model {where}: {_first_line(err)}") from None
    inputs = graph_inputs(model)
    if not inputs:
        raise error(
            f"{where} has no graph inputs (every value is a constant): there is nothing to feed images to; "
            "export the model with its image input (torch.onnx.export(model, example_input, ...))"
        )
    if len(inputs) > 1:
        names = ", ".join(f"'{i.name}' {list(i.dims)}" for i in inputs)
        raise error(
            f"{where} has {len(inputs)} inputs ({names}); the toolkit feeds one image input N x C x H x W: "
            "export the model with the image as its only input (fold the other inputs into constants)"
        )
    image = inputs[0]
    if len(image.dims) != 4:
        raise error(
            f"{where}: the input '{image.name}' has rank {len(image.dims)} ({list(image.dims)}); the toolkit "
            "feeds images N x C x H x W: export the model with a 4-D image input"
        )
    if image.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise error(
            f"{where}: the input '{image.name}' is of type {_DTYPES.get(image.elem_type, image.elem_type)}; "
            "the toolkit feeds float images (preprocessing inside the graph on uint8 is not supported): "
            "export the model with a float32 input"
        )
    if not isinstance(image.dims[1], int):
        raise error(
            f"{where}: the channel count of the input '{image.name}' is dynamic; export it with a static "
            "channel dimension (e.g. 3)"
        )
    outputs = tuple(graph_outputs(model))
    if not outputs:
        raise error(f"{where} has no graph outputs; export the model again")
    return GraphInterface(image, outputs)
