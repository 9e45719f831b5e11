"""The walks of the matcher: from a BRA's routing anchor to its attention, its q/k/v sources and its output.

:func:`index_path` follows TopK's indices to the gathers they index; :func:`attention_matmuls`,
:func:`logits_to_softmax` and :func:`softmax_to_matmul` find the token attention the gathered data
feeds; :func:`trace_back` walks from an attention operand back through data-movement ops (layout
ops, constant scalings, Q/DQ pairs, float Casts, channel Split/Slice/Concat, the gathers) and
:func:`pick_source` chooses the tensor the op will read; :func:`forward_chain` walks from the
attention to its NHWC output. :class:`MatchFailure` carries why a candidate matches only in part.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import onnx_graphsurgeon as gs

from edge_biformer.rewrite.graph import (
    FLOAT_TYPES,
    LAYOUT_OPS,
    GraphInfo,
    attr_int,
    axis_slice,
    const_scalar,
    data_consumers,
    is_layout,
    permutation,
    producer,
    qdq_after,
    skip_qdq_back,
    split_sizes,
)

__all__ = [
    "FORMS",
    "INDEX_OPS",
    "POOL_OPS",
    "MatchFailure",
    "QdqUse",
    "Source",
    "Step",
    "Trace",
    "attention_matmuls",
    "describe_stop",
    "forward_chain",
    "index_path",
    "logits_to_softmax",
    "map_axis",
    "map_dims",
    "operand_step",
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


#: Source layouts the op can read: what :class:`Source` ``form`` names.
FORMS = ("nhwc", "nchw", "regions", "region_batch")
#: Ops that reduce K/V per region (kv_downsample_mode != identity): their outputs are region tables.
POOL_OPS = frozenset(
    {"AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "ReduceMean", "ReduceMax"}
)


@dataclass
class Source:
    """An input of the op: channels ``[start, stop)`` of axis ``axis`` of ``tensor``.

    ``form`` says how ``tensor`` is laid out (``S = n_win``):

    * ``"nhwc"``: a map ``[N, H, W, C]`` (our exports, the legacy module's NHWC maps);
    * ``"nchw"``: a map ``[N, C, H, W]`` (the official NCHW module, 1x1-conv projections);
    * ``"regions"``: a region tensor ``[N, S*S, h, w, C]`` (the legacy module projects after
      patchifying);
    * ``"region_batch"``: per-region maps with the regions folded into the batch,
      ``[N*S*S, C, h, w]``: the pooled key/value tables of ``kv_downsample_mode != 'identity'``
      (``h x w`` pooled tokens per region).

    The op reads every form as an NHWC map (the rewrite converts it in front of the node).
    """

    tensor: gs.Variable
    start: int
    stop: int
    channels: int
    form: str
    axis: int = -1

    @property
    def width(self) -> int:
        """Number of channels the op reads."""
        return self.stop - self.start

    @property
    def is_full(self) -> bool:
        """Whether the op reads every channel of ``tensor``."""
        return self.start == 0 and self.stop == self.channels


def map_dims(source: Source, info: GraphInfo, n_win: int) -> tuple[int | str | None, ...]:
    """``(N, H, W)`` of ``source`` seen as the NHWC map the op reads (None or a symbol where dynamic)."""
    dims = info.shape(source.tensor) or [None] * 5

    def times(d: int | str | None, f: int) -> int | None:
        return d * f if isinstance(d, int) else None

    if source.form == "nhwc":
        return dims[0], dims[1], dims[2]
    if source.form == "nchw":
        return dims[0], dims[2], dims[3]
    if source.form == "regions":
        return dims[0], times(dims[2], n_win), times(dims[3], n_win)
    batch = dims[0] // (n_win * n_win) if isinstance(dims[0], int) else None  # region_batch
    return batch, times(dims[2], n_win), times(dims[3], n_win)


# -- the walks -------------------------------------------------------------------------------------


@dataclass
class Step:
    """One tensor of a walk and where the attention operand's channels are in it.

    ``axis`` is the tensor's channel axis (None: unknown, the last axis is assumed), ``inner`` the
    stride of the head's channels inside that axis (1 when the channels are its minor part, as in
    every head-major layout), ``atom`` the number of channels of one head (None: unknown) and
    ``[start, stop)`` the channel range of that axis the operand holds (``stop`` None: to the end).
    """

    tensor: gs.Tensor
    start: int = 0
    stop: int | None = None
    axis: int | None = None
    inner: int = 1
    atom: int | None = None

    @property
    def whole(self) -> bool:
        """Whether the operand holds the whole channel axis (no channel selection passed yet)."""
        return self.start == 0 and self.stop is None


def _strides(dims: list[int | str | None]) -> list[int | None]:
    """Row-major element strides of each axis (None where a dim to its right is unknown)."""
    strides: list[int | None] = [None] * len(dims)
    acc: int | None = 1
    for i in range(len(dims) - 1, -1, -1):
        strides[i] = acc
        d = dims[i]
        acc = acc * d if acc is not None and isinstance(d, int) and d > 0 else None
    return strides


def map_axis(
    src: list[int | str | None] | None,
    axis: int | None,
    inner: int,
    atom: int | None,
    dst: list[int | str | None] | None,
) -> tuple[int, int] | None:
    """Where the head channels at ``axis`` (stride ``inner`` inside it) of a tensor of dims ``src``
    are after a reshape to dims ``dst``: ``(axis, inner)`` there, or None if that cannot be told.

    Reshapes keep the row-major element order: the channels occupy flat strides ``[s, s * atom)``
    and land in the axis of ``dst`` whose stride range holds them.
    """
    if src is None or dst is None or axis is None or not 0 <= axis < len(src):
        return None
    s = _strides(src)[axis]
    if s is None:
        return None
    s *= inner
    span = s * (atom or 1)
    for b, (t, d) in enumerate(zip(_strides(dst), dst, strict=True)):
        if t is None or not isinstance(d, int) or d <= 0:
            continue
        if t <= s and s % t == 0 and span <= t * d:
            return b, s // t
    return None


@dataclass
class Trace:
    """A backward walk from an attention operand to the tensor it is computed from."""

    visited: list[Step]
    scale: float = 1.0
    gathers: list[gs.Node] = field(default_factory=list)
    #: Q/DQ pairs passed: (index in ``visited`` of the Q input, the pair as a :data:`QdqUse`).
    qdq: list[tuple[int, QdqUse]] = field(default_factory=list)
    blocker: gs.Node | None = None

    @property
    def end(self) -> gs.Tensor:
        return self.visited[-1].tensor


def operand_step(tensor: gs.Tensor, info: GraphInfo, channel_axis: int) -> Step:
    """The first step of a walk: the channels of the attention operand ``tensor`` at ``channel_axis``
    (``-1`` for queries and values ``[..., T, d]``, ``-2`` for the keys ``[..., d, T]``)."""
    axis = info.axis(tensor, channel_axis)
    atom = info.static_dim(tensor, channel_axis)
    return Step(tensor, 0, None, axis, 1, atom)


def _channel_axis(step: Step, info: GraphInfo) -> int | None:
    """The channel axis of ``step`` (the last one where it is unknown)."""
    if step.axis is not None:
        return step.axis
    rank = info.rank(step.tensor)
    return None if rank is None else rank - 1


def _is_channel_axis(step: Step, info: GraphInfo, tensor: gs.Tensor, axis: int) -> bool:
    """Whether ``axis`` of ``tensor`` (the current tensor) is the channel axis of ``step``."""
    normal = info.axis(tensor, axis)
    if step.axis is not None:
        return normal == step.axis
    return info.is_last_axis(tensor, axis)


def _back(step: Step, node: gs.Node, nxt: gs.Tensor, info: GraphInfo) -> Step | None:
    """``step`` moved from the output of ``node`` to its input ``nxt`` through a layout op."""
    out = step.tensor
    axis, inner = step.axis, step.inner
    op = node.op
    if axis is None:
        return Step(nxt, step.start, step.stop, None, inner, step.atom)
    perm = permutation(node, info.rank(out)) if op in ("Transpose", "Einsum") else None
    if perm is not None:
        return Step(nxt, step.start, step.stop, perm[axis] if axis < len(perm) else None, inner, step.atom)
    if op == "Expand":
        shift = (info.rank(out) or 0) - (info.rank(nxt) or 0)
        new = axis - shift if info.rank(out) is not None and info.rank(nxt) is not None else None
        return Step(
            nxt, step.start, step.stop, new if new is not None and new >= 0 else None, inner, step.atom
        )
    if op == "Identity":
        return Step(nxt, step.start, step.stop, axis, inner, step.atom)
    # Reshape, Flatten, Squeeze, Unsqueeze: by the element order.
    mapped = map_axis(info.shape(out), axis, inner, step.atom, info.shape(nxt))
    if mapped is None:  # dims unknown: follow the channels as the last axis, as BiFormer keeps them
        last = info.rank(out)
        if last is not None and axis != last - 1:
            return None
        return Step(nxt, step.start, step.stop, None, 1, step.atom)
    new_axis, new_inner = mapped
    if not step.whole and (
        new_inner != inner or info.static_dim(nxt, new_axis) != info.static_dim(out, axis)
    ):
        return None  # a channel range that this reshape cuts apart
    return Step(nxt, step.start, step.stop, new_axis, new_inner, step.atom)


def trace_back(
    tensor: gs.Tensor,
    consumer: gs.Node,
    info: GraphInfo,
    index_tensors: set[str],
    *,
    allow_scale: bool,
    allow_gather: bool,
    channel_axis: int = -1,
) -> Trace:
    """Walk back from input ``tensor`` of ``consumer`` through data-movement ops.

    Records every tensor with where the operand's channels are in it (:class:`Step`), and the Q/DQ
    pairs passed with the node that read their output on this path. The channel axis is followed
    through Transposes, permuting Einsums, Reshapes (by their static dims) and the gathers, so a
    channel Split/Slice/Concat is recognised on whichever axis holds the channels (NCHW 1x1-conv
    projections split axis 1).
    """
    step = operand_step(tensor, info, channel_axis)
    trace = Trace(visited=[step])
    while True:
        node = producer(tensor)
        if node is None:
            break
        op = node.op
        nxt: Step | None = None
        if is_layout(node) or op == "Expand":
            nxt = _back(step, node, node.inputs[0], info)
        elif op == "DequantizeLinear":
            source = skip_qdq_back(tensor)
            if source is not None:
                trace.qdq.append((len(trace.visited), (source.name, tensor.name, consumer.outputs[0].name)))
                nxt = replace(step, tensor=source)
        elif op == "Cast":
            if int(node.attrs.get("to", 0)) in FLOAT_TYPES and info.elem_type(node.inputs[0]) in (
                *FLOAT_TYPES,
                None,
            ):
                nxt = replace(step, tensor=node.inputs[0])
        elif op in ("Mul", "Div"):
            a, b = node.inputs[0], node.inputs[1]
            sa, sb = const_scalar(a), const_scalar(b)
            if allow_scale and op == "Mul" and (sa is not None or sb is not None):
                trace.scale *= sb if sb is not None else sa  # type: ignore[operator]
                nxt = replace(step, tensor=a if sb is not None else b)
            elif allow_scale and op == "Div" and sb is not None and sb != 0:
                trace.scale /= sb
                nxt = replace(step, tensor=a)
            elif sa is None and sb is None:
                trace.blocker = node
        elif op == "Split":
            source = node.inputs[0]
            axis = attr_int(node, "axis", 0) or 0
            if _is_channel_axis(step, info, source, axis):
                sizes = split_sizes(node, info)
                out_index = next(i for i, o in enumerate(node.outputs) if o is tensor)
                if sizes is not None and out_index < len(sizes):
                    offset = sum(sizes[:out_index])
                    width = sizes[out_index]
                    stop = offset + (step.stop if step.stop is not None else width)
                    nxt = Step(
                        source, offset + step.start, stop, info.axis(source, axis), step.inner, step.atom
                    )
        elif op == "Slice":
            nxt = _through_slice(node, step, info)
        elif op == "Concat":
            nxt = _through_concat(node, step, info)
        elif (
            op in ("Gather", "GatherElements")
            and allow_gather
            and len(node.inputs) > 1
            and node.inputs[1].name in index_tensors
            and node.inputs[0] is not tensor
        ):
            trace.gathers.append(node)
            nxt = _through_gather(node, step, info)
        if nxt is None:
            break
        consumer = node
        tensor = nxt.tensor
        step = nxt
        trace.visited.append(step)
    return trace


def _through_gather(node: gs.Node, step: Step, info: GraphInfo) -> Step:
    """``step`` from a gather's output back to its data input (the gathered axis is not the channels)."""
    data, indices = node.inputs[0], node.inputs[1]
    if step.axis is None:
        return replace(step, tensor=data)
    axis = info.axis(data, attr_int(node, "axis", 0) or 0)
    if node.op == "GatherElements" or axis is None:
        return replace(step, tensor=data, axis=step.axis if axis is not None and step.axis != axis else None)
    index_rank = info.rank(indices)
    if index_rank is None:
        return replace(step, tensor=data, axis=None)
    if step.axis < axis:
        return replace(step, tensor=data)
    if step.axis >= axis + index_rank:
        return replace(step, tensor=data, axis=step.axis - index_rank + 1)
    return replace(step, tensor=data, axis=None)


def _through_slice(node: gs.Node, step: Step, info: GraphInfo) -> Step | None:
    cut = axis_slice(node, info)
    if cut is None or not _is_channel_axis(step, info, node.inputs[0], cut[0]):
        return None
    axis, begin, end = cut
    stop = end if step.stop is None else begin + step.stop
    return Step(
        node.inputs[0], begin + step.start, stop, info.axis(node.inputs[0], axis), step.inner, step.atom
    )


def _through_concat(node: gs.Node, step: Step, info: GraphInfo) -> Step | None:
    tensor = step.tensor
    axis = attr_int(node, "axis", 0) or 0
    if not _is_channel_axis(step, info, tensor, axis):
        return None
    widths = [info.static_dim(t, axis) for t in node.inputs]
    if any(w is None for w in widths):
        return None
    offset = 0
    start, stop = step.start, step.stop
    for i, (source, width) in enumerate(zip(node.inputs, widths, strict=True)):
        assert width is not None
        end = offset + width
        last = i == len(node.inputs) - 1
        if offset <= start < end and ((stop is None and last) or (stop is not None and stop <= end)):
            new_stop = None if stop is None else stop - offset
            return Step(source, start - offset, new_stop, info.axis(source, axis), step.inner, step.atom)
        offset = end
    return None


def _forward(axis: int | None, inner: int, atom: int | None, node: gs.Node, info: GraphInfo):
    """The channel axis after the layout op ``node`` (forward; None: unknown)."""
    src, dst = node.inputs[0], node.outputs[0]
    if axis is None:
        return None, inner
    perm = permutation(node, info.rank(src)) if node.op in ("Transpose", "Einsum") else None
    if perm is not None:
        return (perm.index(axis) if axis in perm else None), inner
    if node.op == "Identity":
        return axis, inner
    mapped = map_axis(info.shape(src), axis, inner, atom, info.shape(dst))
    return (None, inner) if mapped is None else mapped


def forward_chain(tensor: gs.Tensor, info: GraphInfo) -> tuple[gs.Tensor, list[QdqUse], int | None]:
    """Follow single-consumer layout ops (and Q/DQ pairs, float Casts) forward from ``tensor``.

    Returns the last tensor, the Q/DQ pairs passed on the way and its channel axis (where the last
    axis of ``tensor``, the attention's head channels, ended up; None if a reshape of unknown dims hid
    it). Trailing Q/DQ pairs are not passed: they quantize the attention output and stay after the
    plugin node.
    """
    axis = info.axis(tensor, -1)
    inner, atom = 1, info.static_dim(tensor, -1)
    path: list[tuple[gs.Tensor, tuple[str, str] | None, int | None]] = [(tensor, None, axis)]
    uses: list[QdqUse] = []
    pending: tuple[str, str] | None = None
    while True:
        users = data_consumers(tensor)
        if len(users) != 1 or tensor.name in info.graph_outputs:
            break
        node = users[0]
        layout = is_layout(node) and node.inputs[0] is tensor
        if layout or (node.op == "Cast" and int(node.attrs.get("to", 0)) in FLOAT_TYPES):
            if pending is not None:
                uses.append((*pending, node.outputs[0].name))
                pending = None
            if layout:
                axis, inner = _forward(axis, inner, atom, node, info)
            tensor = node.outputs[0]
            path.append((tensor, None, axis))
        elif (dq_out := qdq_after(tensor)) is not None:
            pending = (tensor.name, dq_out.name)
            path.append((dq_out, pending, axis))
            tensor = dq_out
        else:
            break
    while len(path) > 1 and path[-1][1] is not None:
        path.pop()
    return path[-1][0], uses, path[-1][2]


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
        "Einsum",
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


def _form(step: Step, info: GraphInfo, n_win: int, pooled: bool, batch: int | str | None) -> str | None:
    """The layout of the tensor of ``step`` as an input of the op (a :data:`FORMS` name), or None.

    ``pooled``: the walk is on the keys/values side, where pooled region tables may appear;
    ``batch``: the batch dim of the query source, to tell an NCHW map from a region table.
    """
    tensor = step.tensor
    rank = info.rank(tensor)
    axis = _channel_axis(step, info)
    dims = info.shape(tensor)
    if rank is None or axis is None or dims is None:
        return None
    regions = n_win * n_win

    def divisible(*axes: int) -> bool:
        return all(not isinstance(dims[a], int) or dims[a] % n_win == 0 for a in axes)

    if rank == 5 and axis == 4:
        return "regions" if dims[1] in (regions, None) or isinstance(dims[1], str) else None
    if rank != 4:
        return None
    if axis == 3:
        return "nhwc" if divisible(1, 2) else None
    if axis != 1:
        return None
    node = producer(tensor)
    d0 = dims[0]
    table = pooled and node is not None and node.op in POOL_OPS
    if pooled and isinstance(d0, int) and isinstance(batch, int):
        table = d0 == batch * regions and d0 != batch
    elif isinstance(d0, str) and d0 == batch:
        table = False
    if table:
        return "region_batch" if not isinstance(d0, int) or d0 % regions == 0 else None
    return "nchw" if divisible(2, 3) else None


def pick_source(
    trace: Trace,
    info: GraphInfo,
    n_win: int,
    what: str,
    nodes: list[gs.Node],
    *,
    pooled: bool = False,
    batch: int | str | None = None,
) -> tuple[Source, list[QdqUse]]:
    """Choose the tensor the op reads, and the Q/DQ pairs that the rewrite removes with the attention.

    The candidate is the furthest-back tensor of the walk in one of the op's input layouts
    (:class:`Source`). From there the choice moves towards the attention over steps that keep exactly
    the op's channels: a Q/DQ pair (the op then reads the DQ output, as the original attention did) or
    a Split/Slice output that holds exactly the channels. Q/DQ pairs beyond the chosen tensor (towards
    the attention) are removed.
    """
    for position in range(len(trace.visited) - 1, -1, -1):
        step = trace.visited[position]
        form = _form(step, info, n_win, pooled, batch)
        axis = _channel_axis(step, info)
        if form is None or axis is None:
            continue
        tensor = step.tensor
        channels = info.static_dim(tensor, axis)
        if channels is None:
            continue
        start = step.start
        end = channels if step.stop is None else step.stop
        if not 0 <= start < end <= channels:
            continue
        pair_at = {index: use for index, use in trace.qdq}
        while position > 0:
            nxt = trace.visited[position - 1]
            n_axis = _channel_axis(nxt, info)
            n_channels = info.static_dim(nxt.tensor, n_axis) if n_axis is not None else None
            over_qdq = position in pair_at and pair_at[position][1] == nxt.tensor.name
            node = producer(nxt.tensor)
            exact_split = (
                node is not None
                and node.op in ("Split", "Slice")
                and node.inputs[0] is tensor
                and n_axis == axis
                and nxt.start == 0
                and n_channels is not None
                and (nxt.stop is None or nxt.stop == n_channels)
                and n_channels == end - start
            )
            if not (over_qdq or exact_split):
                break
            position -= 1
            tensor = nxt.tensor
            if exact_split:
                assert n_channels is not None
                start, end, channels = 0, n_channels, n_channels
        removed = [use for index, use in trace.qdq if index <= position]
        source = Source(tensor=tensor, start=start, stop=end, channels=channels, form=form, axis=axis)
        return source, removed
    raise MatchFailure(
        f"the {what} of the attention could not be traced back to a map [N, H, W, C] or [N, C, H, W], a "
        f"region tensor [N, {n_win * n_win}, h, w, C] or a pooled region table [N*{n_win * n_win}, C, h, w] "
        f"with a known channel count (the walk stopped at {describe_stop(trace)})",
        nodes,
    )


def describe_stop(trace: Trace) -> str:
    tensor = trace.end
    node = producer(tensor)
    if node is None:
        return f"tensor '{tensor.name}'"
    return f"{node.op} node '{node.name}' (output '{tensor.name}')"
