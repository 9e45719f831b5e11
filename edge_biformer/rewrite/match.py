"""Find the routed attention of every BRA block in an ONNX graph, by the structure of the computation.

A BRA block is recognised from its data flow, never from node names:

1. **Routing anchor**: a ``TopK`` whose indices output reaches, through index arithmetic only
   (``Add`` of the batch offset, ``Reshape``, ``Unsqueeze``, ``Expand``, ``Cast``...), the
   *indices* input of a ``Gather`` (our index gather) or ``GatherElements`` (the official
   expand + gather) that reads floating-point data.
2. **Attention**: the gathered tensor reaches (through layout ops and channel splits) the second
   operand of a ``MatMul`` whose output, possibly scaled by constants, is the input of a
   ``Softmax`` over the last axis; the softmax is the first operand of a second ``MatMul`` whose
   second operand is again gathered data. A TopK that does not lead to this is not BRA (top-k
   in detection heads, for instance) and is ignored.
3. **Sources**: walking back from the three attention operands through layout ops
   (``Reshape``/``Transpose``/...), constant scalings, ``Q``/``DQ`` pairs, float ``Cast``,
   channel ``Split``/``Slice``/``Concat`` and the gathers gives the tensors that hold q, k and v
   with their channel ranges: NHWC maps (rank 4, our exports) or region tensors
   ``[N, S*S, h, w, C]`` (rank 5, the official module, which projects qkv after patchifying).
4. **Output**: walking forward from the second MatMul through layout ops gives the NHWC attention
   output ``o`` (before LCE is added and the output projection).

The attributes come from the graph: ``topk`` from TopK's constant K, ``n_win`` from the number
of regions (the routing logits are ``[N, S*S, S*S]``), ``num_heads`` from the attention operands,
``scale`` from the product of the constant scalings on the logits path.

Blocks that have the anchor and the attention but break a rule (routing weights multiplied into
K/V, pooled K/V, unexpected layouts...) are reported as partial matches with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from edge_biformer.rewrite.graph import FLOAT_TYPES, GraphInfo, attr_int, const_value, producer
from edge_biformer.rewrite.trace import (
    MatchFailure,
    QdqUse,
    Source,
    attention_matmuls,
    describe_stop,
    forward_chain,
    index_path,
    logits_to_softmax,
    map_dims,
    pick_source,
    softmax_to_matmul,
    trace_back,
)

__all__ = ["BraMatch", "MatchResult", "PartialMatch", "Source", "find_bra_blocks", "routing_key"]


@dataclass
class BraMatch:
    """One BRA block's routed attention, ready to be replaced by a plugin node."""

    index: int
    name: str
    topk_node: gs.Node
    q: Source
    k: Source
    v: Source
    output: gs.Variable
    n_win: int
    num_heads: int
    topk: int
    scale: float
    gather_kind: str
    gathers: list[gs.Node]
    attention: tuple[gs.Node, gs.Node, gs.Node]
    internal_qdq: list[QdqUse] = field(default_factory=list)
    elem_type: int | None = None
    stage_key: tuple = ()
    #: Layout of ``output``: ``"nhwc"`` ``[N, H, W, Cv]`` or ``"nchw"`` ``[N, Cv, H, W]``.
    output_form: str = "nhwc"
    #: Tokens per query region and per key/value region, ``(rows, cols)`` (None where dynamic).
    q_region: tuple[int | None, int | None] = (None, None)
    kv_region: tuple[int | None, int | None] = (None, None)

    @property
    def kv_pooled(self) -> bool:
        """Whether the keys/values are pooled per region (``kv_downsample_mode != 'identity'``)."""
        return self.k.form == "region_batch" or (
            None not in (*self.q_region, *self.kv_region) and self.q_region != self.kv_region
        )

    @property
    def layout(self) -> str:
        """The layouts the op reads and writes, e.g. ``"nchw q/k/v -> nchw o"``."""
        forms = dict.fromkeys((self.q.form, self.k.form, self.v.form))
        return f"{'/'.join(forms)} q/k/v -> {self.output_form} o"

    @property
    def indices(self) -> gs.Variable:
        """TopK's indices output (int64): the op's ``r_idx`` before the cast to int32."""
        return self.topk_node.outputs[1]

    def signature(self) -> tuple:
        """What identifies a stage: blocks of one stage share all of these."""
        return (self.n_win, self.q.width, self.v.width, self.num_heads, self.topk)

    def describe(self) -> str:
        """One line for logs."""
        pooled = (
            f", K/V pooled to {self.kv_region[0]}x{self.kv_region[1]} per region" if self.kv_pooled else ""
        )
        return (
            f"n_win={self.n_win} heads={self.num_heads} topk={self.topk} scale={self.scale:.6g} "
            f"Cqk={self.q.width} Cv={self.v.width} ({self.gather_kind} gather, {self.layout}{pooled})"
        )


@dataclass
class PartialMatch:
    """A block with the BRA routing and attention that cannot be replaced, and why."""

    index: int
    name: str
    reason: str
    nodes: list[str] = field(default_factory=list)
    stage_key: tuple = ()


@dataclass
class MatchResult:
    """All BRA blocks of a graph: the replaceable ones and the partial matches."""

    matches: list[BraMatch]
    partial: list[PartialMatch]

    @property
    def found(self) -> int:
        """Blocks recognised (replaceable or partial)."""
        return len(self.matches) + len(self.partial)


def _block_name(nodes: list[gs.Node] | list[str], fallback: str, info: GraphInfo | None = None) -> str:
    """A human hint for a block: the common scope of its node names or module paths (display only)."""
    names = [n if isinstance(n, str) else n.name for n in nodes]
    names = [n for n in names if n]
    from_scopes = bool(names) and info is not None and all(n in info.scopes for n in names)
    if from_scopes:
        assert info is not None
        names = [info.scopes[n] for n in names]
    if not names:
        return fallback
    parts = [name.strip("/").split("/") for name in names]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if all(p == level[0] for p in level):
            common.append(level[0])
        else:
            break
    if from_scopes:
        return common[-1] if common else fallback
    if len(names) == 1 and len(common) > 1:
        common = common[:-1]  # a single node: name its scope, not the node
    return "/".join(common) or names[0]


def _analyse(index: int, topk: gs.Node, info: GraphInfo) -> BraMatch | None:
    """Analyse one TopK: None if it is not a BRA routing, a match, or raise :class:`MatchFailure`."""
    index_tensors, gathers = index_path(topk)
    float_gathers = [g for g in gathers if info.elem_type(g.inputs[0]) in (*FLOAT_TYPES, None)]
    if not float_gathers:
        return None
    # The attention: a MatMul fed by gathered data whose output goes to a Softmax.
    scored: list[tuple[gs.Node, gs.Node, float, list[QdqUse]]] = []
    for gather in float_gathers:
        for mm in attention_matmuls(gather):
            hit = logits_to_softmax(mm, info)
            if hit is not None and all(mm is not s[0] for s in scored):
                scored.append((mm, hit[0], hit[1], hit[2]))
    if not scored:
        return None  # TopK + gather without attention: not BRA (e.g. a detection head)
    involved = [topk, *float_gathers]
    name = topk.name or f"block {index}"  # the fallback when the nodes name no common scope
    if len(scored) != 1:
        raise MatchFailure(
            f"the routed keys feed {len(scored)} attention MatMuls ({', '.join(s[0].name for s in scored)}); "
            "BRA has exactly one",
            involved,
        )
    logits_mm, softmax, logits_scale, internal_qdq = scored[0]
    pv_mm = softmax_to_matmul(softmax, internal_qdq)
    involved += [logits_mm, softmax]
    if pv_mm is None:
        raise MatchFailure(
            f"the Softmax '{softmax.name}' of the routed attention is not the first operand of exactly one "
            "MatMul (softmax @ V)",
            involved,
        )
    involved.append(pv_mm)

    # Attributes from the routing.
    k_value = const_value(topk.inputs[1]) if len(topk.inputs) > 1 else None
    if k_value is None and "k" in topk.attrs:
        k_value = np.asarray(topk.attrs["k"])
    if k_value is None or k_value.size != 1:
        raise MatchFailure(
            f"TopK '{topk.name}' has no constant K; the plugin needs topk at build time", involved
        )
    topk_k = int(k_value.reshape(-1)[0])
    logits = topk.inputs[0]
    axis = attr_int(topk, "axis", -1)
    if not info.is_last_axis(logits, axis if axis is not None else -1):
        raise MatchFailure(f"TopK '{topk.name}' does not select over the last axis (axis={axis})", involved)
    if info.rank(logits) not in (None, 3):
        raise MatchFailure(
            f"the routing logits '{logits.name}' have rank {info.rank(logits)}; BRA routes with "
            "[N, S*S, S*S] logits",
            involved,
        )
    regions = info.static_dim(logits, -1) or info.static_dim(topk.outputs[1], 1) or info.static_dim(logits, 1)
    if regions is None:
        raise MatchFailure(
            f"the number of regions (last dim of the routing logits '{logits.name}') is not static, so "
            "n_win cannot be read from the graph; export with a static input size (the number of regions "
            "of the official NCHW module depends on the input size: H // n_win-token regions) or with "
            "static region counts",
            involved,
        )
    n_win = math.isqrt(regions)
    if n_win * n_win != regions:
        raise MatchFailure(
            f"the routing logits '{logits.name}' have {regions} regions, not a square S*S: the module cuts "
            "its map into a region grid that is not S x S (the official NCHW module does so when "
            "H // n_win and W // n_win tokens per region give different region counts, e.g. for a "
            "non-square input); the op needs S x S regions. Export at a size whose region grid is square",
            involved,
        )
    if not 1 <= topk_k <= regions:
        raise MatchFailure(f"TopK K={topk_k} is outside [1, {regions}]", involved)

    # Operands: q from the logits MatMul's first input, k from its second, v from P@V's second.
    q_trace = trace_back(
        logits_mm.inputs[0], logits_mm, info, index_tensors, allow_scale=True, allow_gather=False
    )
    k_trace = trace_back(
        logits_mm.inputs[1],
        logits_mm,
        info,
        index_tensors,
        allow_scale=True,
        allow_gather=True,
        channel_axis=-2,
    )
    v_trace = trace_back(pv_mm.inputs[1], pv_mm, info, index_tensors, allow_scale=False, allow_gather=True)
    for what, trace in (("keys", k_trace), ("values", v_trace)):
        if trace.blocker is not None and not trace.gathers:
            blocker = f"{trace.blocker.op} '{trace.blocker.name}'"
            raise MatchFailure(
                f"the routed {what} are multiplied by a tensor (node {blocker}) between the gather and the "
                "attention, as soft routing (soft_routing=True, mul_weight='soft') does; the plugin "
                "implements hard routing, where the routing weights are unused",
                [*involved, trace.blocker],
            )
        if not trace.gathers:
            raise MatchFailure(
                f"the {what} of the attention do not come from the routed gather (the walk stopped at "
                f"{describe_stop(trace)})",
                involved,
            )
        if len(trace.gathers) != 1:
            raise MatchFailure(
                f"the routed {what} pass through {len(trace.gathers)} gathers; expected one", involved
            )
        # A walk that stops before the gather (in data flow) at a Mul/Div by a tensor only ends there:
        # the op reads the table the gather read (e.g. an adaptive pooling decomposed into sums
        # divided by per-bin counts, dynamo's export of a non-divisible ada_avgpool).
    if q_trace.gathers:
        raise MatchFailure("the queries of the attention pass through the routed gather", involved)
    if q_trace.blocker is not None and info.rank(q_trace.end) not in (4, 5):
        raise MatchFailure(
            f"the queries are multiplied by a tensor (node {q_trace.blocker.op} '{q_trace.blocker.name}') "
            "before the attention",
            [*involved, q_trace.blocker],
        )
    if v_trace.scale != 1.0:
        raise MatchFailure("the routed values are scaled by a constant; the op has no value scale", involved)
    gather_node = k_trace.gathers[0]
    involved.append(v_trace.gathers[0])
    gather_kind = "index" if gather_node.op == "Gather" else "expand"
    if gather_node.op == "Gather" and (attr_int(gather_node, "axis", 0) or 0) != 0:
        raise MatchFailure(
            f"Gather '{gather_node.name}' gathers on axis {gather_node.attrs.get('axis')}, not 0", involved
        )

    q, q_pairs = pick_source(q_trace, info, n_win, "queries", involved)
    batch = map_dims(q, info, n_win)[0]
    k, k_pairs = pick_source(k_trace, info, n_win, "keys", involved, pooled=True, batch=batch)
    v, v_pairs = pick_source(v_trace, info, n_win, "values", involved, pooled=True, batch=batch)
    if k.width != q.width:
        raise MatchFailure(f"queries have {q.width} channels but keys {k.width}", involved)
    types = {name: info.elem_type(src.tensor) for name, src in (("q", q), ("k", k), ("v", v))}
    if len({t for t in types.values() if t is not None}) > 1:
        raise MatchFailure(
            "q, k and v have different element types ("
            + ", ".join(
                f"{n}: {onnx.TensorProto.DataType.Name(t)}" for n, t in types.items() if t is not None
            )
            + "); the op takes all three in one type",
            involved,
        )
    q_region, kv_region = _geometry(q, k, v, info, n_win, involved)

    # num_heads from the attention operand (B, M, Tq, d), else from the head dim.
    q_operand = logits_mm.inputs[0]
    rank = info.rank(q_operand)
    head_dim = info.static_dim(q_operand, -1)
    heads = info.static_dim(q_operand, 1) if rank is not None and rank >= 4 else None
    if heads is not None and head_dim is not None and heads * head_dim != q.width:
        if rank == 4:
            raise MatchFailure(
                f"the attention operand '{q_operand.name}' has {heads} heads of {head_dim} channels, "
                f"but the queries have {q.width} channels",
                involved,
            )
        heads = None  # rank 5+: the heads need not be axis 1
    if heads is None:  # e.g. rank 3 with the heads folded into the batch: [B*M, T, d]
        heads = q.width // head_dim if head_dim and q.width % head_dim == 0 else None
    if heads is None:
        raise MatchFailure(
            f"the number of heads cannot be read from the attention operand '{q_operand.name}' "
            "(shape unknown)",
            involved,
        )
    if q.width % heads or v.width % heads:
        raise MatchFailure(f"Cqk={q.width} and Cv={v.width} are not divisible by {heads} heads", involved)

    output, out_pairs, out_axis = forward_chain(pv_mm.outputs[0], info)
    output_form = _output_form(output, out_axis, v.width, info)
    if output_form is None:
        raise MatchFailure(
            f"the attention output '{output.name}' is not a map [N, H, W, {v.width}] or [N, {v.width}, H, W] "
            f"(shape {info.shape(output)})",
            involved,
        )
    out_dims = info.shape(output) or [None] * 4
    out_hw = (out_dims[1], out_dims[2]) if output_form == "nhwc" else (out_dims[2], out_dims[3])
    q_hw = map_dims(q, info, n_win)[1:]
    if all(isinstance(d, int) for d in (*out_hw, *q_hw)) and tuple(out_hw) != tuple(q_hw):
        raise MatchFailure(
            f"the attention output '{output.name}' is a {out_hw[0]}x{out_hw[1]} map, but the queries a "
            f"{q_hw[0]}x{q_hw[1]} one; the op writes one output token per query",
            involved,
        )
    scale = float(q_trace.scale * k_trace.scale * logits_scale)
    name = _block_name([topk, logits_mm, softmax, pv_mm], name, info)
    return BraMatch(
        index=index,
        name=name,
        topk_node=topk,
        q=q,
        k=k,
        v=v,
        output=output,
        n_win=n_win,
        num_heads=int(heads),
        topk=topk_k,
        scale=scale,
        gather_kind=gather_kind,
        gathers=[gather_node, *(g for g in v_trace.gathers if g is not gather_node)],
        attention=(logits_mm, softmax, pv_mm),
        internal_qdq=list(dict.fromkeys([*internal_qdq, *q_pairs, *k_pairs, *v_pairs, *out_pairs])),
        elem_type=info.elem_type(q.tensor),
        output_form=output_form,
        q_region=q_region,
        kv_region=kv_region,
    )


def _output_form(output: gs.Tensor, axis: int | None, c_v: int, info: GraphInfo) -> str | None:
    """``"nhwc"`` or ``"nchw"``: where the attention output holds its ``c_v`` channels."""
    if info.rank(output) != 4:
        return None
    if axis is None:  # a reshape of unknown dims hid the channels: the last axis, as BiFormer has them
        return "nhwc" if info.static_dim(output, -1) in (None, c_v) else None
    if axis in (1, 3) and info.static_dim(output, axis) in (None, c_v):
        return "nhwc" if axis == 3 else "nchw"
    return None


def _geometry(
    q: Source, k: Source, v: Source, info: GraphInfo, n_win: int, involved: list[gs.Node]
) -> tuple[tuple[int | None, int | None], tuple[int | None, int | None]]:
    """Tokens per query region and per key/value region; refuses maps the op cannot cut into S x S."""
    sizes = {
        what: map_dims(src, info, n_win)[1:] for what, src in (("queries", q), ("keys", k), ("values", v))
    }
    for what, (height, width) in sizes.items():
        for side, size in (("height", height), ("width", width)):
            if isinstance(size, int) and size % n_win:
                raise MatchFailure(
                    f"the {what} map has {side} {size}, not a multiple of the {n_win} regions per side that "
                    "the routing uses; the op cuts every map into S x S equal regions",
                    involved,
                )
    kh, kw = sizes["keys"]
    vh, vw = sizes["values"]
    if all(isinstance(d, int) for d in (kh, kw, vh, vw)) and (kh, kw) != (vh, vw):
        raise MatchFailure(
            f"the keys are a {kh}x{kw} map but the values a {vh}x{vw} one; the op reads keys and values of "
            "the same regions",
            involved,
        )
    if k.form != v.form and "region_batch" in (k.form, v.form):
        raise MatchFailure(
            f"the keys are read as {k.form} and the values as {v.form}; pooled keys and values must come "
            "from the same per-region tables",
            involved,
        )

    def per_region(hw: tuple) -> tuple[int | None, int | None]:
        return tuple(d // n_win if isinstance(d, int) else None for d in hw)  # type: ignore[return-value]

    return per_region(sizes["queries"]), per_region(sizes["keys"])


def routing_key(topk: gs.Node, info: GraphInfo) -> tuple:
    """Blocks of one stage share this: (topk, regions, routing width), from the routing alone."""
    k_value = const_value(topk.inputs[1]) if len(topk.inputs) > 1 else None
    k = int(k_value.reshape(-1)[0]) if k_value is not None and k_value.size == 1 else None
    logits = topk.inputs[0]
    regions = info.static_dim(logits, -1)
    width = None
    node = producer(logits)
    if node is not None and node.op == "MatMul":
        width = info.static_dim(node.inputs[0], -1)
    return (k, regions, width)


def find_bra_blocks(graph: gs.Graph, info: GraphInfo) -> MatchResult:
    """Find every BRA routed attention of ``graph`` (toposorted), in graph order.

    Args:
        graph: the graph (not modified).
        info: shapes and types of its tensors (:meth:`GraphInfo.from_model` of the same model).
    """
    matches: list[BraMatch] = []
    partial: list[PartialMatch] = []
    index = 0
    claimed: set[str] = set()
    for node in graph.nodes:
        if node.op != "TopK" or len(node.outputs) < 2:
            continue
        try:
            match = _analyse(index, node, info)
        except MatchFailure as err:
            partial.append(
                PartialMatch(
                    index=index,
                    name=_block_name(err.nodes or [node], node.name or f"block {index}", info),
                    reason=err.reason,
                    nodes=err.nodes,
                    stage_key=routing_key(node, info),
                )
            )
            index += 1
            continue
        if match is None:
            continue
        match.stage_key = routing_key(node, info)
        if match.output.name in claimed:
            partial.append(
                PartialMatch(
                    index=index,
                    name=match.name,
                    reason=f"its attention output '{match.output.name}' is also produced for another block",
                    stage_key=routing_key(node, info),
                )
            )
        else:
            claimed.add(match.output.name)
            matches.append(match)
        index += 1
    return MatchResult(matches=matches, partial=partial)
