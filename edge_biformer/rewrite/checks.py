"""Numerical checks of a rewrite: each matched block on real activations, and the whole graph.

* :func:`check_blocks` runs the *original* graph once in onnxruntime with the matched q/k/v
  sources, TopK indices and attention outputs as extra outputs, and compares each block's
  attention output with the op's reference (:func:`edge_biformer.ops.bra.routed_attention_reference`)
  computed from those activations. A block whose matched subgraph computes something else (an
  unusual layout, a different head split...) fails here and is reported, instead of being replaced
  by a node that would compute something different.
  Each block check also measures whether it could fail: the op computed with every key paired with
  the value of its neighbouring token (a wrong rewrite) is compared with the original as well
  (:attr:`BlockCheck.wrong_pairing`). Where that wrong pairing matches too (within
  :data:`DISCRIMINATION` times the tolerance) the inputs do not exercise the attention
  (near-uniform weights, vanishing values): the check is reported as *inconclusive* (a warning in
  the log and the manifest), the block is not refused for it.
* Real activations of a detection or segmentation graph often do not exercise an attention: after
  SPPF's max pools a small map is nearly flat, every region routes to the same regions and every
  pairing of keys and values gives the same output. Both checks therefore run a second time with
  the matched q/k/v source tensors *overridden* by seeded random values of their recorded shapes
  and spread (:func:`override_tensors`, :func:`exercise_feeds`); there a wrong pairing of keys and
  values, a wrong head split or a misread layout changes every attention output.
* :func:`check_graph` compares the rewritten graph (:func:`edge_biformer.cpu_session`) with the
  original (onnxruntime) on the same inputs, output by output, and every replaced attention's output
  in place (the plugin node's output tensor keeps the name of the attention output it replaces):
  a detection graph whose outputs barely depend on one attention still fails on a wrong node.

Both judge with :func:`edge_biformer.check.compare` and the ``rewrite.*`` entries of the tolerance table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from edge_biformer.check import Comparison, compare
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.rewrite.graph import GraphInfo
from edge_biformer.rewrite.match import BraMatch
from edge_biformer.rewrite.trace import Source

__all__ = [
    "DISCRIMINATION",
    "BlockCheck",
    "GraphCheck",
    "bypass_fake_quant",
    "bypass_qdq",
    "check_blocks",
    "check_graph",
    "exercise_feeds",
    "make_feeds",
    "override_tensors",
    "run_with_taps",
    "tolerance_name",
]


#: A block check is conclusive when a wrong pairing of keys and values differs from the original by
#: more than this many times the check's tolerance.
DISCRIMINATION = 3.0


def tolerance_name(kind: str, reduced: bool) -> str:
    """The tolerance entry of a ``block`` or ``graph`` check (float16 attentions get the reduced one)."""
    return f"rewrite.{kind}.{'float16' if reduced else 'float32'}"


@dataclass
class _Judged:
    """A comparison of the rewrite, with its numbers at hand."""

    comparison: Comparison

    @property
    def passed(self) -> bool:
        return self.comparison.passed

    @property
    def max_abs_diff(self) -> float:
        return self.comparison.max_abs_diff

    @property
    def max_rel_diff(self) -> float:
        return self.comparison.max_rel_diff

    @property
    def tolerance(self) -> float:
        """The bound on the max relative difference."""
        return self.comparison.limits["max_rel"]


@dataclass
class BlockCheck(_Judged):
    """One block's attention output (original graph) against the op's reference on the same activations.

    ``wrong_pairing`` is the max relative difference between the original output and the op computed
    with each key paired with a neighbouring token's value: how far a wrong rewrite would be. Below
    ``DISCRIMINATION`` times the tolerance the check is ``inconclusive`` (reported, not failed).
    """

    index: int = -1
    wrong_pairing: float = math.inf
    #: The same check with the q/k/v sources overridden by random values (None: not run).
    exercised: BlockCheck | None = None

    @property
    def passed(self) -> bool:
        """Both the check on real activations and the one on random q/k/v (where run) pass."""
        return self.comparison.passed and (self.exercised is None or self.exercised.passed)

    @property
    def inconclusive(self) -> bool:
        """Whether no run of the check exercised the attention enough for it to mean anything."""
        runs = [self] if self.exercised is None else [self, self.exercised]
        return all(r.wrong_pairing <= DISCRIMINATION * r.tolerance for r in runs)


@dataclass
class GraphCheck(_Judged):
    """The rewritten graph's outputs against the original graph's, on inputs of ``input_shapes``.

    In a graph with Q/DQ pairs the judged comparison runs both graphs with fake quantization off
    (``fake_quant_bypassed`` pairs bypassed on each side): INT8 rounding would otherwise turn the
    op's float32-versus-float16 difference (~4e-4 of a block's output) into whole quantization
    steps downstream, a few percent of the logits, and hide a real wiring error in that noise.
    ``quantized`` is the comparison with fake quantization on, reported (the build's accuracy
    check judges the quantized artifacts against FP32 PyTorch with the int8 tolerance).
    """

    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    fake_quant_bypassed: int = 0
    quantized: Comparison | None = None
    #: The same comparison with the matched q/k/v overridden by random values (judged; None: not run).
    exercised: Comparison | None = None

    @property
    def passed(self) -> bool:
        """Both comparisons (real inputs, and random q/k/v where run) pass."""
        return self.comparison.passed and (self.exercised is None or self.exercised.passed)

    def to_dict(self) -> dict:
        """The rewrite manifest's ``verification`` record."""
        record = {
            "input_shapes": self.input_shapes,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "outputs": self.comparison.outputs,
            "fake_quant_bypassed": self.fake_quant_bypassed,
        }
        if self.exercised is not None:
            record["with_random_qkv"] = {
                "max_abs_diff": self.exercised.max_abs_diff,
                "max_rel_diff": self.exercised.max_rel_diff,
                "passed": self.exercised.passed,
                "outputs": self.exercised.outputs,
            }
        if self.quantized is not None:
            record["with_fake_quant"] = {
                "max_abs_diff": self.quantized.max_abs_diff,
                "max_rel_diff": self.quantized.max_rel_diff,
                "mean_abs_diff": self.quantized.mean_abs_diff,
                "outputs": self.quantized.outputs,
            }
        return record

    def describe(self) -> str:
        """One line for the log."""
        text = (
            f"max abs diff {self.max_abs_diff:.3e}, max rel diff {self.max_rel_diff:.3e} "
            f"(tolerance {self.tolerance:.0e}"
        )
        if self.fake_quant_bypassed:
            text += f", {self.fake_quant_bypassed} Q/DQ pairs bypassed on both sides"
        text += f"): {'PASS' if self.comparison.passed else 'FAIL'}"
        if self.exercised is not None:
            e = self.exercised
            text += (
                f"; with random q/k/v: max rel diff {e.max_rel_diff:.3e}: {'PASS' if e.passed else 'FAIL'}"
            )
        if self.quantized is not None:
            q = self.quantized
            text += f"; with Q/DQ: max rel diff {q.max_rel_diff:.2e}, mean abs diff {q.mean_abs_diff:.2e}"
        return text


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
    from edge_biformer.onnx_io import graph_inputs

    input_shapes = dict(input_shapes or {})
    inputs = graph_inputs(model)
    unknown = sorted(set(input_shapes) - {i.name for i in inputs})
    if unknown:
        raise EdgeBiformerError(
            f"--input-shape names {', '.join(unknown)}, but the graph's inputs are "
            f"{', '.join(i.name for i in inputs)}"
        )
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for info in inputs:
        if info.name in input_shapes:
            shape = [int(d) for d in input_shapes[info.name]]
        else:
            shape = [
                d if isinstance(d, int) else (2 if axis == 0 else default_side)
                for axis, d in enumerate(info.dims)
            ]
        if info.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE):
            feeds[info.name] = rng.standard_normal(shape).astype(_np_type(info.elem_type))
        else:
            raise EdgeBiformerError(
                f"graph input '{info.name}' is of type {TensorProto.DataType.Name(info.elem_type)}; the "
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


def bypass_fake_quant(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` in which every ``QuantizeLinear -> DequantizeLinear`` pair is bypassed.

    Every reader of such a DQ output reads the Q input instead (fake quantization off; weights
    stored as integers behind a lone DequantizeLinear stay as they are). Returns the copy and the
    number of pairs bypassed (the model itself when there is none).
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    rewire = {
        node.output[0]: producers[node.input[0]].input[0]
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in producers
        and producers[node.input[0]].op_type == "QuantizeLinear"
    }
    if not rewire:
        return model, 0
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        for i, name in enumerate(node.input):
            if name in rewire:
                node.input[i] = rewire[name]
    outputs = {o.name for o in copy.graph.output} & set(rewire)
    for node in copy.graph.node:  # a graph output behind a Q/DQ pair: the DQ gives up its name ...
        if node.op_type == "DequantizeLinear" and node.output[0] in outputs:
            node.output[0] += "/fake_quant_bypassed"
    for name in sorted(outputs):  # ... to an Identity of the float value
        copy.graph.node.append(onnx.helper.make_node("Identity", [rewire[name]], [name]))
    return copy, len(rewire)


def run_with_taps(
    model: onnx.ModelProto,
    taps: Sequence[str],
    feeds: Mapping[str, np.ndarray],
    info: GraphInfo,
) -> dict[str, np.ndarray]:
    """Run ``model`` in onnxruntime (CPU) with the tensors ``taps`` as extra outputs."""
    import onnxruntime as ort

    from edge_biformer.runtime.cpu import session_options

    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    present = {o.name for o in tapped.graph.output}
    for name in dict.fromkeys(taps):
        if name in present:
            continue
        elem_type = info.elem_types.get(name, TensorProto.UNDEFINED)
        tapped.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
        present.add(name)
    session = ort.InferenceSession(
        tapped.SerializeToString(), session_options(model), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, dict(feeds))
    return dict(zip(names, values, strict=True))


def override_tensors(model: onnx.ModelProto, examples: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` in which the tensors named in ``examples`` are graph inputs, not node outputs.

    Their producers keep running (into a renamed, unread output), so everything else of the graph,
    shape arithmetic included, is as before; only the readers of those tensors see the fed values
    (of the type and shape of the example arrays). Names that are no node's output (graph inputs,
    initializers) are left as they are.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    done: set[str] = set()
    for node in copy.graph.node:
        for i, out in enumerate(node.output):
            if out in examples and out not in done:
                done.add(out)
                node.output[i] = f"{out}/edge_biformer_overridden"
    for name in sorted(done):
        value = examples[name]
        elem_type = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        copy.graph.input.append(onnx.helper.make_tensor_value_info(name, elem_type, list(value.shape)))
    kept = [v for v in copy.graph.value_info if v.name not in done]
    del copy.graph.value_info[:]
    copy.graph.value_info.extend(kept)
    return copy


def exercise_feeds(
    recorded: Mapping[str, np.ndarray], names: Sequence[str], seed: int = 1
) -> dict[str, np.ndarray]:
    """Seeded random values for the tensors ``names``: their recorded shape, dtype and spread.

    Each tensor gets standard-normal values times the standard deviation of its recorded values
    (1 where those are constant), so scales stay those the graph works at while every token, head
    and region differs from its neighbours.
    """
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name in dict.fromkeys(names):
        value = recorded[name]
        spread = float(np.std(value.astype(np.float64))) if value.size else 1.0
        spread = spread if math.isfinite(spread) and spread > 0 else 1.0
        feeds[name] = (rng.standard_normal(value.shape) * spread).astype(value.dtype)
    return feeds


def _op_input(value: np.ndarray, source: Source, n_win: int) -> np.ndarray:
    """What the plugin node will read: the channel range, as an NHWC map."""
    axis = source.axis if source.axis >= 0 else value.ndim + source.axis
    x = np.take(value, np.arange(source.start, source.stop), axis=axis)
    if source.form == "nchw":
        return x.transpose(0, 2, 3, 1)
    if source.form == "region_batch":
        batch, c, h, w = x.shape
        if batch % (n_win * n_win):
            raise ValueError(
                f"a pooled table of {batch} regions does not hold whole images of {n_win}x{n_win}"
            )
        return (
            x.reshape(-1, n_win, n_win, c, h, w)
            .transpose(0, 1, 4, 2, 5, 3)
            .reshape(-1, n_win * h, n_win * w, c)
        )
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


def _failed(name: str, reason: str) -> Comparison:
    result = Comparison(tolerance=name, max_abs_diff=math.inf, max_rel_diff=math.inf)
    from edge_biformer.check import TOLERANCES

    result.limits = {"max_rel": float(TOLERANCES[name].max_rel)}  # type: ignore[arg-type]
    result.fail(reason)
    return result


def _reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, r_idx: np.ndarray, match: BraMatch) -> np.ndarray:
    """The op's torch reference on numpy NHWC maps, in float32."""
    import torch

    from edge_biformer.ops.bra import routed_attention_reference

    with torch.inference_mode():
        return routed_attention_reference(
            *(torch.from_numpy(np.ascontiguousarray(t)).float() for t in (q, k, v)),
            torch.from_numpy(r_idx),
            num_heads=match.num_heads,
            scale=match.scale,
        ).numpy()


def check_blocks(matches: Sequence[BraMatch], values: Mapping[str, np.ndarray]) -> list[BlockCheck]:
    """Compare each block's attention output with the reference op on the tapped activations.

    Each check also records how far a wrong pairing of keys and values would be
    (:attr:`BlockCheck.wrong_pairing`; :attr:`BlockCheck.inconclusive` where it is within reach).
    """
    results: list[BlockCheck] = []
    for match in matches:
        name = tolerance_name("block", match.elem_type == TensorProto.FLOAT16)
        try:
            q = _op_input(values[match.q.tensor.name], match.q, match.n_win)
            k = _op_input(values[match.k.tensor.name], match.k, match.n_win)
            v = _op_input(values[match.v.tensor.name], match.v, match.n_win)
            r_idx = values[match.indices.name].astype(np.int32)
            ref, wrong = (_reference(q, k, vv, r_idx, match) for vv in (v, _shifted(v)))
        except (ValueError, RuntimeError) as err:
            results.append(BlockCheck(_failed(name, f"the op reference cannot run: {err}"), match.index))
            continue
        actual = values[match.output.name].astype(np.float32)
        if match.output_form == "nchw":
            actual = actual.transpose(0, 2, 3, 1)
        # The op must reproduce what the original attention computed: the original is the expected side.
        judged = compare(ref, actual, name)
        wrong_pairing = compare(wrong, actual, name).max_rel_diff
        results.append(BlockCheck(judged, match.index, wrong_pairing))
    return results


def _shifted(v: np.ndarray) -> np.ndarray:
    """``v`` with every token moved to its right neighbour (keys then meet the wrong values)."""
    axis = 2 if v.shape[2] > 1 else 1
    return np.roll(v, 1, axis=axis)


def check_graph(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    input_shapes: dict[str, list[int]],
    reduced: bool,
    *,
    fake_quant_bypassed: int = 0,
    quantized: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]] | None = None,
    labels: Mapping[str, str] | None = None,
) -> GraphCheck:
    """The rewritten graph's tensors (``actual``) against the original's, each judged on its own.

    ``expected`` holds the graph outputs and the replaced attentions' outputs by tensor name;
    ``labels`` names the latter for the messages (``block 0 (name)``). Each tensor must be within the
    tolerance relative to its own range, so a small output next to a large one is judged as strictly.
    ``quantized``: (expected, actual) with fake quantization on, when ``expected``/``actual`` were
    computed with ``fake_quant_bypassed`` Q/DQ pairs bypassed (recorded, not judged).
    """
    name = tolerance_name("graph", reduced)
    comparison = compare(actual, expected, name)
    _judge_each(comparison, labels or {})
    record = None
    if quantized is not None:
        record = compare(quantized[1], quantized[0], name)
    return GraphCheck(comparison, input_shapes, fake_quant_bypassed=fake_quant_bypassed, quantized=record)


def _judge_each(comparison: Comparison, labels: Mapping[str, str]) -> None:
    """Fail ``comparison`` for every tensor whose own relative difference exceeds the bound."""
    bound = comparison.limits.get("max_rel")
    if bound is None:
        return
    for tensor, numbers in comparison.outputs.items():
        rel = numbers.get("max_rel_diff", 0.0)
        if rel > bound:
            what = labels.get(tensor, f"output '{tensor}'")
            comparison.fail(f"{what}: max relative difference {rel:.3g} > {bound:.0e}")
