"""Numerical checks of a rewrite: each matched block on real activations, and the whole graph.

* :func:`check_blocks` runs the *original* graph once in onnxruntime with the matched q/k/v
  sources, TopK indices and attention outputs as extra outputs, and compares each block's
  attention output with the op's reference (:func:`edge_biformer.ops.routed_attention_reference`)
  computed from those activations. A block whose matched subgraph computes something else (an
  unusual layout, a different head split...) fails here and is reported, instead of being replaced
  by a node that would compute something different.
* :func:`compare_outputs` compares the graph outputs of the original (onnxruntime) and the rewritten
  graph (:func:`edge_biformer.cpu_session`) on the same inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.surgery.graph import GraphInfo
from edge_biformer.surgery.match import BraMatch, Source

__all__ = [
    "BlockCheck",
    "OutputCheck",
    "bypass_qdq",
    "check_blocks",
    "compare_outputs",
    "make_feeds",
    "run_with_taps",
]

#: max |o - reference| / max |o| allowed for a float32 block / graph.
FLOAT32_TOLERANCE = 1e-4
#: The bound for float16 graphs (the original attention runs in float16, the op in float32).
REDUCED_PRECISION_TOLERANCE = 2e-2


@dataclass
class BlockCheck:
    """One block's attention output against the op's reference on the same activations."""

    index: int
    max_abs_diff: float
    max_rel_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_rel_diff <= self.tolerance)


@dataclass
class OutputCheck:
    """The rewritten graph's outputs against the original graph's."""

    input_shapes: dict[str, list[int]]
    max_abs_diff: float
    max_rel_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(self.max_rel_diff <= self.tolerance)


def _np_type(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def make_feeds(
    model: onnx.ModelProto,
    input_shapes: Mapping[str, Sequence[int]] | None,
    default_side: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input.

    Static dims are kept; ``input_shapes`` overrides whole shapes by input name; otherwise a
    dynamic first dim becomes 2 (the batch) and any other dynamic dim ``default_side``.

    Raises:
        EdgeBiformerError: an input of a type we cannot invent values for, or an unknown name.
    """
    input_shapes = dict(input_shapes or {})
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    unknown = sorted(set(input_shapes) - {i.name for i in inputs})
    if unknown:
        raise EdgeBiformerError(
            f"--input-shape names {', '.join(unknown)}, but the graph's inputs are "
            f"{', '.join(i.name for i in inputs)}"
        )
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for value_info in inputs:
        tensor_type = value_info.type.tensor_type
        if value_info.name in input_shapes:
            shape = [int(d) for d in input_shapes[value_info.name]]
        else:
            shape = []
            for axis, dim in enumerate(tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value > 0:
                    shape.append(dim.dim_value)
                else:
                    shape.append(2 if axis == 0 else default_side)
        elem_type = tensor_type.elem_type
        if elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
            feeds[value_info.name] = rng.standard_normal(shape).astype(_np_type(elem_type))
        else:
            raise EdgeBiformerError(
                f"graph input '{value_info.name}' is of type {TensorProto.DataType.Name(elem_type)}; the "
                "verification can only invent float inputs. Run with --no-verify"
            )
    return feeds


def bypass_qdq(model: onnx.ModelProto, uses: Sequence[tuple[str, str, str]]) -> onnx.ModelProto:
    """A copy of ``model`` in which the given readers of Q/DQ pairs read the unquantized tensor.

    ``uses`` holds ``(Q input, DQ output, first output of the reading node)``: exactly the Q/DQ
    pairs inside the replaced attentions, which the rewrite removes (the op computes in float).
    Other readers of the same pairs (routing, LCE) keep reading the DQ output, as in the rewrite.
    """
    if not uses:
        return model
    rewire: dict[str, dict[str, str]] = {}
    for q_in, dq_out, reader in uses:
        rewire.setdefault(reader, {})[dq_out] = q_in
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        mapping = rewire.get(node.output[0]) if node.output else None
        if mapping:
            for i, name in enumerate(node.input):
                if name in mapping:
                    node.input[i] = mapping[name]
    return copy


def run_with_taps(
    model: onnx.ModelProto,
    taps: Sequence[str],
    feeds: Mapping[str, np.ndarray],
    info: GraphInfo,
) -> dict[str, np.ndarray]:
    """Run ``model`` in onnxruntime (CPU) with the tensors ``taps`` as extra outputs."""
    import onnxruntime as ort

    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    present = {o.name for o in tapped.graph.output}
    for name in dict.fromkeys(taps):
        if name in present:
            continue
        elem_type = info.elem_types.get(name, TensorProto.UNDEFINED)
        tapped.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
        present.add(name)
    from edge_biformer.runtime.cpu import session_options

    session = ort.InferenceSession(
        tapped.SerializeToString(), session_options(model), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, dict(feeds))
    return dict(zip(names, values, strict=True))


def _op_input(value: np.ndarray, source: Source, n_win: int) -> np.ndarray:
    """What the plugin node will read: the channel range, as an NHWC map."""
    x = value[..., source.start : source.stop]
    if source.form == "regions":
        n, regions, h, w, c = x.shape
        if regions != n_win * n_win:
            raise ValueError(f"region tensor has {regions} regions, expected {n_win * n_win}")
        x = (
            x.reshape(n, n_win, n_win, h, w, c)
            .transpose(0, 1, 3, 2, 4, 5)
            .reshape(n, n_win * h, n_win * w, c)
        )
    return x


def check_blocks(matches: Sequence[BraMatch], values: Mapping[str, np.ndarray]) -> list[BlockCheck]:
    """Compare each block's attention output with the reference op on the tapped activations."""
    import torch

    from edge_biformer.ops.bra_reference import routed_attention_reference

    results: list[BlockCheck] = []
    for match in matches:
        reduced = match.elem_type == TensorProto.FLOAT16
        tolerance = REDUCED_PRECISION_TOLERANCE if reduced else FLOAT32_TOLERANCE
        try:
            q = _op_input(values[match.q.tensor.name], match.q, match.n_win)
            k = _op_input(values[match.k.tensor.name], match.k, match.n_win)
            v = _op_input(values[match.v.tensor.name], match.v, match.n_win)
            r_idx = values[match.indices.name].astype(np.int32)
            with torch.inference_mode():
                ref = routed_attention_reference(
                    torch.from_numpy(np.ascontiguousarray(q)).float(),
                    torch.from_numpy(np.ascontiguousarray(k)).float(),
                    torch.from_numpy(np.ascontiguousarray(v)).float(),
                    torch.from_numpy(r_idx),
                    num_heads=match.num_heads,
                    scale=match.scale,
                ).numpy()
            actual = values[match.output.name].astype(np.float32)
            if actual.shape != ref.shape:
                results.append(BlockCheck(match.index, math.inf, math.inf, tolerance))
                continue
            diff = float(np.abs(actual - ref).max()) if actual.size else 0.0
            rel = diff / max(float(np.abs(actual).max()) if actual.size else 0.0, 1e-12)
            results.append(BlockCheck(match.index, diff, rel, tolerance))
        except (ValueError, RuntimeError):
            results.append(BlockCheck(match.index, math.inf, math.inf, tolerance))
    return results


def compare_outputs(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    input_shapes: dict[str, list[int]],
    tolerance: float,
) -> OutputCheck:
    """``max|actual - expected| / max|expected|`` over all float outputs (integers must be equal)."""
    max_abs, max_ref = 0.0, 0.0
    for name, ref in expected.items():
        out = actual[name]
        if out.shape != ref.shape:
            return OutputCheck(input_shapes, math.inf, math.inf, tolerance)
        if np.issubdtype(ref.dtype, np.floating):
            if ref.size:
                max_abs = max(max_abs, float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max()))
                max_ref = max(max_ref, float(np.abs(ref).max()))
        elif not np.array_equal(out, ref):
            return OutputCheck(input_shapes, math.inf, math.inf, tolerance)
    return OutputCheck(input_shapes, max_abs, max_abs / max(max_ref, 1e-12), tolerance)
