"""Routing fidelity: does an artifact route each query region to the same top-k regions as FP32?

BRA's accuracy hangs on a discrete decision per query region: which ``topk`` regions it attends
to. A rounding error near a tie between the k-th and the (k+1)-th routing logit swaps a whole
region of keys and values; the final-output comparison only sees that blurred through the rest of
the network. This module measures it per BRA block:

* the routing of a graph is read from its ``TopK`` nodes (the anchors of BRA: TopKs whose indices
  drive the routed K/V gather, or, in a rewritten graph, the plugin nodes' ``r_idx``), run on a
  copy of the graph with the TopK indices (and, for the reference, the routing logits) as extra
  outputs: never the artifact itself;
* blocks of two graphs are paired by the TopK node's name (export, quantization and rewrite keep
  it), else by their order;
* per block: the fraction of (image, query region) pairs whose top-k **set** is identical (order
  inside a set does not matter: the op is order-invariant), the mean overlap ``|A & B| / k``, and
  the FP32 routing margin (k-th minus (k+1)-th logit) of the pairs that flipped and of those that
  did not.

The reference routing is the plain FP32 export in onnxruntime (the same weights as the FP32
PyTorch reference, equal to it within 1e-6 on the logits). TensorRT engines are not measured here:
that needs a check engine with the TopK indices marked as outputs, built on the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from edge_biformer.onnx_io import graph_interface

__all__ = [
    "WARN_BELOW",
    "BlockRouting",
    "RoutingTap",
    "compare_routing",
    "routing_taps",
    "run_routing",
    "tie_flips",
]

#: Routing agreement below this gets a warning (and fails with ``--min-routing-agreement``).
WARN_BELOW = 0.99
#: Index arithmetic between a routing TopK's indices and the gather (or plugin node) they drive.
_INDEX_OPS = frozenset(
    {
        "Add",
        "Cast",
        "Concat",
        "Expand",
        "Flatten",
        "Identity",
        "Mul",
        "Reshape",
        "Squeeze",
        "Tile",
        "Transpose",
        "Unsqueeze",
    }
)


@dataclass(frozen=True)
class RoutingTap:
    """The routing of one BRA block in one graph: its TopK node and the tensors to read."""

    name: str  # the TopK node's name: the key that pairs blocks of two graphs
    index: int  # position among the graph's BRA TopKs (graph order)
    indices: str  # TopK's indices output
    logits: str  # TopK's data input (the routing logits)


@dataclass
class BlockRouting:
    """One block's routing in an artifact against the FP32 reference."""

    block: str
    index: int
    regions: int
    topk: int
    pairs: int
    identical: int
    mean_overlap: float
    margin_flipped: dict[str, float] = field(default_factory=dict)
    margin_kept: dict[str, float] = field(default_factory=dict)

    @property
    def agreement(self) -> float:
        """Fraction of (image, query region) pairs whose top-k set is the reference's."""
        return self.identical / self.pairs if self.pairs else 1.0

    @property
    def flipped(self) -> int:
        """Pairs whose top-k set differs from the reference's."""
        return self.pairs - self.identical

    def to_dict(self) -> dict[str, Any]:
        """JSON form (report.json)."""
        return {**asdict(self), "agreement": self.agreement, "flipped": self.flipped}


def _bra_topk_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The TopK nodes that are BRA routing anchors, in graph order.

    A routing anchor (the first rule of :mod:`edge_biformer.rewrite.match`) is a TopK whose indices
    reach, through index arithmetic only, the indices input of a Gather/GatherElements (the routed
    K/V gather of a graph not yet rewritten) or an input of a plugin node (its ``r_idx``). This is
    found here directly, without the full matcher, so that any graph's routing can be read.
    """
    from edge_biformer.ops import find_op

    nodes = list(model.graph.node)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches_gather(tensor: str, depth: int = 0) -> bool:
        for node in consumers.get(tensor, []):
            if find_op(node) is not None:
                return True
            if node.op_type in ("Gather", "GatherElements", "GatherND") and tensor in node.input[1:]:
                return True
            if (
                node.op_type in _INDEX_OPS
                and depth < 12
                and any(reaches_gather(o, depth + 1) for o in node.output)
            ):
                return True
        return False

    return [n for n in nodes if n.op_type == "TopK" and len(n.output) > 1 and reaches_gather(n.output[1])]


def routing_taps(model: onnx.ModelProto) -> list[RoutingTap]:
    """The routing taps of every BRA block of ``model`` (empty for a graph without BRA)."""
    return [
        RoutingTap(n.name or f"TopK_{i}", i, n.output[1], n.input[0])
        for i, n in enumerate(_bra_topk_nodes(model))
    ]


def _tapped(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``names`` as extra graph outputs (element types from the graph)."""
    from edge_biformer.rewrite.graph import GraphInfo

    types = GraphInfo.from_model(model).elem_types
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            elem_type = types.get(name, onnx.TensorProto.UNDEFINED)
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
            present.add(name)
    return copy


def run_routing(
    model: onnx.ModelProto, batches: Sequence[np.ndarray], *, with_logits: bool = False
) -> dict[str, dict[str, np.ndarray]]:
    """The routing of ``model`` on ``batches``: per TopK name, ``indices`` (and ``logits``).

    Arrays are ``[samples, query regions, k]`` (indices, int64) and ``[samples, query regions,
    regions]`` (logits, float32). Graphs with plugin nodes run in :func:`edge_biformer.cpu_session`,
    others in onnxruntime with the check's session options.
    """
    from edge_biformer.runtime.cpu import cpu_session

    taps = routing_taps(model)
    if not taps:
        return {}
    names = [t.indices for t in taps] + ([t.logits for t in taps] if with_logits else [])
    input_name = graph_interface(model).input.name
    session = cpu_session(_tapped(model, names))
    collected: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in batches:
        values = session.run(names, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        for name, value in zip(names, values, strict=True):
            collected[name].append(np.asarray(value))
    out: dict[str, dict[str, np.ndarray]] = {}
    for t in taps:
        entry = {"indices": _regions_last(np.concatenate(collected[t.indices]))}
        if with_logits:
            entry["logits"] = _regions_last(np.concatenate(collected[t.logits])).astype(np.float32)
        out[t.name] = entry
    return out


def _regions_last(array: np.ndarray) -> np.ndarray:
    """``[N, ..., R, last]`` -> ``[N, R', last]`` (a per-image routing table)."""
    return array.reshape(array.shape[0], -1, array.shape[-1])


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {
        "min": float(values.min()),
        "p10": float(np.percentile(values, 10)),
        "median": float(np.median(values)),
        "max": float(values.max()),
    }


def compare_routing(
    reference: dict[str, dict[str, np.ndarray]], actual: dict[str, dict[str, np.ndarray]]
) -> list[BlockRouting]:
    """Per block of ``reference``: the artifact's routing agreement (paired by name, else order)."""
    results = []
    for index, (ref_name, act_name) in enumerate(_paired(reference, actual)):
        if act_name is None:
            continue
        ref_idx, act_idx = reference[ref_name]["indices"], actual[act_name]["indices"]
        if ref_idx.shape != act_idx.shape:
            continue
        k = ref_idx.shape[-1]
        a, b = np.sort(ref_idx, axis=-1), np.sort(act_idx, axis=-1)
        identical = np.all(a == b, axis=-1)
        # |A & B| per pair: each index of B that is in A (indices within a set are distinct)
        overlap = (b[..., :, None] == a[..., None, :]).any(-1).sum(-1) / k
        logits = reference[ref_name].get("logits")
        regions = int(logits.shape[-1]) if logits is not None else int(ref_idx.max()) + 1
        flipped_margin = kept_margin = np.zeros(0)
        if logits is not None and k < logits.shape[-1]:
            ordered = -np.sort(-logits, axis=-1)
            margin = ordered[..., k - 1] - ordered[..., k]
            flipped_margin, kept_margin = margin[~identical], margin[identical]
        results.append(
            BlockRouting(
                block=ref_name,
                index=index,
                regions=regions,
                topk=int(k),
                pairs=int(identical.size),
                identical=int(identical.sum()),
                mean_overlap=float(overlap.mean()),
                margin_flipped=_stats(flipped_margin),
                margin_kept=_stats(kept_margin),
            )
        )
    return results


def _paired(
    reference: dict[str, dict[str, np.ndarray]], actual: dict[str, dict[str, np.ndarray]]
) -> list[tuple[str, str | None]]:
    """The reference's blocks in graph order, each with the artifact's block (by name, else order)."""
    ref_names, act_names = list(reference), list(actual)
    pairs: list[tuple[str, str | None]] = [(r, r if r in actual else None) for r in ref_names]
    if any(a is None for _, a in pairs) and len(ref_names) == len(act_names):
        pairs = list(zip(ref_names, act_names, strict=True))
    return pairs


def tie_flips(
    reference: dict[str, dict[str, np.ndarray]], actual: dict[str, dict[str, np.ndarray]], tie: float
) -> tuple[np.ndarray, list[str]]:
    """Which samples' routing flipped first at a tie: a decision the artifact's precision cannot make.

    For each sample, the first block (graph order) whose top-k set differs from the reference's
    decides: when every flipped query region there has an FP32 margin (k-th minus (k+1)-th routing
    logit) of at most ``tie`` times the spread of its routing logits (max minus min), the sample is
    tie-flipped; the flips of later blocks follow from that one. A flip at a wider margin, or a
    sample whose routing is the reference's, is not. Needs the reference's ``logits``.

    Returns the per-sample mask and the blocks where the tie-flipped samples first flipped.
    """
    decided: np.ndarray | None = None
    tied: np.ndarray | None = None
    blocks: list[str] = []
    for ref_name, act_name in _paired(reference, actual):
        logits = reference[ref_name].get("logits")
        if act_name is None or logits is None:
            continue
        ref_idx, act_idx = reference[ref_name]["indices"], actual[act_name]["indices"]
        k = ref_idx.shape[-1]
        if ref_idx.shape != act_idx.shape or k >= logits.shape[-1]:
            continue  # not comparable, or a TopK of every region (no decision to flip)
        if decided is None:
            decided = np.zeros(ref_idx.shape[0], dtype=bool)
            tied = np.zeros(ref_idx.shape[0], dtype=bool)
        assert tied is not None
        flipped = ~np.all(np.sort(ref_idx, axis=-1) == np.sort(act_idx, axis=-1), axis=-1)  # [N, R]
        ordered = -np.sort(-logits.astype(np.float64), axis=-1)
        spread = np.maximum(ordered[..., 0] - ordered[..., -1], 1e-30)
        at_tie = (ordered[..., k - 1] - ordered[..., k]) <= tie * spread
        first = flipped.any(axis=-1) & ~decided
        here = first & np.all(at_tie | ~flipped, axis=-1)
        if here.any():
            blocks.append(ref_name)
        tied |= here
        decided |= first
    if tied is None:
        return np.zeros(0, dtype=bool), []
    return tied, blocks
