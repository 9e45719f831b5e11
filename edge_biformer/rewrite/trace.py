"""The walks of the matcher: from a BRA's routing anchor to its attention, its q/k/v sources and its output.

:func:`index_path` follows TopK's indices to the gathers they index; :func:`attention_matmuls`,
:func:`logits_to_softmax` and :func:`softmax_to_matmul` find the token attention the gathered data
feeds; :func:`trace_back` walks from an attention operand back through data-movement ops (layout
ops, constant scalings, Q/DQ pairs, float Casts, channel Split/Slice/Concat, the gathers) and
:func:`pick_source` chooses the tensor the op will read; :func:`forward_chain` walks from the
attention to its NHWC output. :class:`MatchFailure` carries why a candidate matches only in part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from edge_biformer.rewrite.graph import (
    FLOAT_TYPES,
    LAYOUT_OPS,
    GraphInfo,
    attr_int,
    const_scalar,
    data_consumers,
    last_axis_slice,
    producer,
    qdq_after,
    skip_qdq_back,
    split_sizes,
)

__all__ = [
    "INDEX_OPS",
    "MatchFailure",
    "QdqUse",
    "Source",
    "Trace",
    "attention_matmuls",
    "describe_stop",
    "forward_chain",
    "index_path",
    "logits_to_softmax",
    "pick_source",
    "softmax_to_matmul",
    "trace_back",
]

#: Index arithmetic allowed between TopK's indices and the gather.
INDEX_OPS = frozenset({"Add", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Cast", "Identity"})
#: A Q/DQ pair on a path: (Q input, DQ output, first output of the node that reads the DQ output).
QdqUse = tuple[str, str, str]


class MatchFailure(Exception):
    """Raised inside the analysis of one candidate block: it matches only in part."""

    def __init__(self, reason: str, nodes: list[gs.Node] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.nodes = [n.name for n in nodes or []]


@dataclass
class Source:
    """An input of the op: channels ``[start, stop)`` of the last axis of ``tensor``.

    ``form`` is ``"nhwc"`` (``tensor`` is ``[N, H, W, C]``) or ``"regions"`` (``[N, S*S, h, w, C]``).
    """

    tensor: gs.Variable
    start: int
    stop: int
    channels: int
    form: str

    @property
    def width(self) -> int:
        """Number of channels the op reads."""
        return self.stop - self.start

    @property
    def is_full(self) -> bool:
        """Whether the op reads every channel of ``tensor``."""
        return self.start == 0 and self.stop == self.channels


# -- the walks -------------------------------------------------------------------------------------


@dataclass
class Trace:
    """A backward walk from an attention operand to the tensor it is computed from."""

    visited: list[tuple[gs.Tensor, int, int | None]]
    scale: float = 1.0
    gathers: list[gs.Node] = field(default_factory=list)
    #: Q/DQ pairs passed: (index in ``visited`` of the Q input, the pair as a :data:`QdqUse`).
    qdq: list[tuple[int, QdqUse]] = field(default_factory=list)
    blocker: gs.Node | None = None

    @property
    def end(self) -> gs.Tensor:
        return self.visited[-1][0]


def trace_back(
    tensor: gs.Tensor,
    consumer: gs.Node,
    info: GraphInfo,
    index_tensors: set[str],
    *,
    allow_scale: bool,
    allow_gather: bool,
) -> Trace:
    """Walk back from input ``tensor`` of ``consumer`` through data-movement ops.

    Records every tensor with its channel range, and the Q/DQ pairs passed with the node that
    read their output on this path.
    """
    start, stop = 0, None
    trace = Trace(visited=[(tensor, start, stop)])
    while True:
        node = producer(tensor)
        if node is None:
            break
        op = node.op
        nxt: gs.Tensor | None = None
        if op in LAYOUT_OPS or op == "Expand":
            nxt = node.inputs[0]
        elif op == "DequantizeLinear":
            nxt = skip_qdq_back(tensor)
            if nxt is not None:
                trace.qdq.append((len(trace.visited), (nxt.name, tensor.name, consumer.outputs[0].name)))
        elif op == "Cast":
            if int(node.attrs.get("to", 0)) in FLOAT_TYPES and info.elem_type(node.inputs[0]) in (
                *FLOAT_TYPES,
                None,
            ):
                nxt = node.inputs[0]
        elif op in ("Mul", "Div"):
            a, b = node.inputs[0], node.inputs[1]
            sa, sb = const_scalar(a), const_scalar(b)
            if allow_scale and op == "Mul" and (sa is not None or sb is not None):
                trace.scale *= sb if sb is not None else sa  # type: ignore[operator]
                nxt = a if sb is not None else b
            elif allow_scale and op == "Div" and sb is not None and sb != 0:
                trace.scale /= sb
                nxt = a
            elif sa is None and sb is None:
                trace.blocker = node
        elif op == "Split":
            source = node.inputs[0]
            if info.is_last_axis(source, attr_int(node, "axis", 0) or 0):
                sizes = split_sizes(node, info)
                out_index = next(i for i, o in enumerate(node.outputs) if o is tensor)
                if sizes is not None and out_index < len(sizes):
                    offset = sum(sizes[:out_index])
                    width = sizes[out_index]
                    start, stop = offset + start, offset + (stop if stop is not None else width)
                    nxt = source
        elif op == "Slice":
            nxt, start, stop = _through_slice(node, info, start, stop)
        elif op == "Concat":
            nxt, start, stop = _through_concat(node, tensor, info, start, stop)
        elif (
            op in ("Gather", "GatherElements")
            and allow_gather
            and len(node.inputs) > 1
            and node.inputs[1].name in index_tensors
            and node.inputs[0] is not tensor
        ):
            trace.gathers.append(node)
            nxt = node.inputs[0]
        if nxt is None:
            break
        consumer = node
        tensor = nxt
        trace.visited.append((tensor, start, stop))
    return trace


def _through_slice(
    node: gs.Node, info: GraphInfo, start: int, stop: int | None
) -> tuple[gs.Tensor | None, int, int | None]:
    bounds = last_axis_slice(node, info)
    if bounds is None:
        return None, start, stop
    begin, end = bounds
    return node.inputs[0], begin + start, (end if stop is None else begin + stop)


def _through_concat(
    node: gs.Node, tensor: gs.Tensor, info: GraphInfo, start: int, stop: int | None
) -> tuple[gs.Tensor | None, int, int | None]:
    if not info.is_last_axis(tensor, attr_int(node, "axis", 0) or 0):
        return None, start, stop
    widths = [info.static_dim(t, -1) for t in node.inputs]
    if any(w is None for w in widths):
        return None, start, stop
    offset = 0
    for i, (source, width) in enumerate(zip(node.inputs, widths, strict=True)):
        assert width is not None
        end = offset + width
        last = i == len(node.inputs) - 1
        if offset <= start < end and ((stop is None and last) or (stop is not None and stop <= end)):
            return source, start - offset, None if stop is None else stop - offset
        offset = end
    return None, start, stop


def forward_chain(tensor: gs.Tensor, info: GraphInfo) -> tuple[gs.Tensor, list[QdqUse]]:
    """Follow single-consumer layout ops (and Q/DQ pairs, float Casts) forward from ``tensor``.

    Returns the last tensor and the Q/DQ pairs passed on the way. Trailing Q/DQ pairs are not
    passed: they quantize the attention output and stay after the plugin node.
    """
    path: list[tuple[gs.Tensor, tuple[str, str] | None]] = [(tensor, None)]
    uses: list[QdqUse] = []
    pending: tuple[str, str] | None = None
    while True:
        users = data_consumers(tensor)
        if len(users) != 1 or tensor.name in info.graph_outputs:
            break
        node = users[0]
        is_layout = node.op in LAYOUT_OPS and node.inputs[0] is tensor
        if is_layout or (node.op == "Cast" and int(node.attrs.get("to", 0)) in FLOAT_TYPES):
            if pending is not None:
                uses.append((*pending, node.outputs[0].name))
                pending = None
            tensor = node.outputs[0]
            path.append((tensor, None))
        elif (dq_out := qdq_after(tensor)) is not None:
            pending = (tensor.name, dq_out.name)
            path.append((dq_out, pending))
            tensor = dq_out
        else:
            break
    while len(path) > 1 and path[-1][1] is not None:
        path.pop()
    return path[-1][0], uses


def _over_qdq(tensor: gs.Tensor) -> tuple[gs.Tensor, tuple[str, str] | None]:
    """Step over a Q/DQ pair that follows ``tensor``: (the tensor after it, (Q input, DQ output))."""
    dq_out = qdq_after(tensor)
    return (tensor, None) if dq_out is None else (dq_out, (tensor.name, dq_out.name))


def logits_to_softmax(matmul: gs.Node, info: GraphInfo) -> tuple[gs.Node, float, list[QdqUse]] | None:
    """From the ``Q @ K^T`` MatMul forward through constant scalings to a last-axis Softmax."""
    tensor = matmul.outputs[0]
    scale = 1.0
    uses: list[QdqUse] = []
    while True:
        tensor, pair = _over_qdq(tensor)
        users = data_consumers(tensor)
        if len(users) != 1:
            return None
        node = users[0]
        if pair is not None:
            uses.append((*pair, node.outputs[0].name))
        if node.op == "Softmax":
            axis = attr_int(node, "axis", -1)
            ok = info.is_last_axis(tensor, axis if axis is not None else -1)
            return (node, scale, uses) if ok else None
        if node.op in ("Mul", "Div"):
            other = node.inputs[1] if node.inputs[0] is tensor else node.inputs[0]
            value = const_scalar(other)
            if value is None or (node.op == "Div" and (node.inputs[1] is not other or value == 0)):
                return None
            scale = scale * value if node.op == "Mul" else scale / value
        elif not (node.op == "Cast" and int(node.attrs.get("to", 0)) in FLOAT_TYPES):
            return None
        tensor = node.outputs[0]


def softmax_to_matmul(softmax: gs.Node, uses: list[QdqUse]) -> gs.Node | None:
    """The ``P @ V`` MatMul that takes the softmax (through Cast / Q-DQ) as its first operand."""
    tensor = softmax.outputs[0]
    while True:
        tensor, pair = _over_qdq(tensor)
        users = data_consumers(tensor)
        if len(users) != 1:
            return None
        node = users[0]
        if pair is not None:
            uses.append((*pair, node.outputs[0].name))
        if node.op == "MatMul" and node.inputs[0] is tensor:
            return node
        if node.op == "Cast" and int(node.attrs.get("to", 0)) in FLOAT_TYPES:
            tensor = node.outputs[0]
        else:
            return None


# -- candidates ------------------------------------------------------------------------------------


def index_path(topk: gs.Node) -> tuple[set[str], list[gs.Node]]:
    """Tensors derived from TopK's indices by index arithmetic, and the gathers they index."""
    tensors: set[str] = set()
    gathers: list[gs.Node] = []
    stack = [topk.outputs[1]]
    while stack:
        tensor = stack.pop()
        if tensor.name in tensors:
            continue
        tensors.add(tensor.name)
        for node in data_consumers(tensor):
            if node.op in ("Gather", "GatherElements") and len(node.inputs) > 1 and node.inputs[1] is tensor:
                if node not in gathers:
                    gathers.append(node)
            elif node.op in INDEX_OPS:
                stack.extend(node.outputs)
    return tensors, gathers


def attention_matmuls(gather: gs.Node) -> list[gs.Node]:
    """MatMuls reached forward from a gather's output through data-movement ops (as 2nd operand)."""
    found: list[gs.Node] = []
    seen: set[int] = set()
    stack = list(gather.outputs)
    passthrough = LAYOUT_OPS | {
        "Expand",
        "Split",
        "Slice",
        "Cast",
        "QuantizeLinear",
        "DequantizeLinear",
        "Mul",
        "Div",
    }
    while stack:
        tensor = stack.pop()
        for node in data_consumers(tensor):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.op == "MatMul" and len(node.inputs) > 1 and node.inputs[1] is tensor:
                found.append(node)
            elif node.op in passthrough:
                stack.extend(node.outputs)
    return found


def pick_source(
    trace: Trace, info: GraphInfo, n_win: int, what: str, nodes: list[gs.Node]
) -> tuple[Source, list[QdqUse]]:
    """Choose the tensor the op reads, and the Q/DQ pairs that the rewrite removes with the attention.

    The candidate is the furthest-back NHWC map or region tensor of the walk. From there the choice
    moves towards the attention over steps that keep exactly the op's channels: a Q/DQ pair (the op
    then reads the DQ output, as the original attention did) or a Split/Slice output that holds
    exactly the channels. Q/DQ pairs beyond the chosen tensor (towards the attention) are removed.
    """
    for position in range(len(trace.visited) - 1, -1, -1):
        tensor, start, stop = trace.visited[position]
        rank = info.rank(tensor)
        if rank not in (4, 5):
            continue
        channels = info.static_dim(tensor, -1)
        if channels is None:
            continue
        end = channels if stop is None else stop
        if not 0 <= start < end <= channels:
            continue
        form = "nhwc" if rank == 4 else "regions"
        if form == "regions":
            regions = info.static_dim(tensor, 1)
            if regions is not None and regions != n_win * n_win:
                continue
        pair_at = {index: use for index, use in trace.qdq}
        while position > 0:
            nxt, n_start, n_stop = trace.visited[position - 1]
            n_channels = info.static_dim(nxt, -1)
            over_qdq = position in pair_at and pair_at[position][1] == nxt.name
            node = producer(nxt)
            exact_split = (
                node is not None
                and node.op in ("Split", "Slice")
                and node.inputs[0] is tensor
                and n_start == 0
                and n_channels is not None
                and (n_stop is None or n_stop == n_channels)
                and n_channels == end - start
            )
            if not (over_qdq or exact_split):
                break
            position -= 1
            tensor = nxt
            if exact_split:
                assert n_channels is not None
                start, end, channels = 0, n_channels, n_channels
        removed = [use for index, use in trace.qdq if index <= position]
        source = Source(tensor=tensor, start=start, stop=end, channels=channels, form=form)
        return source, removed
    raise MatchFailure(
        f"the {what} of the attention could not be traced back to an NHWC map [N, H, W, C] or a region "
        f"tensor [N, {n_win * n_win}, h, w, C] with a known channel count (the walk stopped at "
        f"{describe_stop(trace)})",
        nodes,
    )


def describe_stop(trace: Trace) -> str:
    tensor = trace.end
    node = producer(tensor)
    if node is None:
        return f"tensor '{tensor.name}'"
    return f"{node.op} node '{node.name}' (output '{tensor.name}')"
