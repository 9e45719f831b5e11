"""Replace matched BRA blocks by ``BiLevelRoutingAttention`` plugin nodes (onnx-graphsurgeon).

For each :class:`~edge_biformer.rewrite.match.BraMatch`:

* ``r_idx`` = ``Cast(TopK.indices, to=int32)`` (the routing itself is left as it is);
* ``q``, ``k``, ``v`` = the matched source tensors. A channel range of a wider tensor reuses an
  existing ``Split``/``Slice`` output with exactly those channels (our exports split qkv into three,
  the official module slices k and v out of its kv tensor) or gets a new ``Slice``. Region
  tensors ``[N, S*S, h, w, C]`` (the official module projects after patchifying) are turned into NHWC
  maps with ``Reshape -> Transpose -> Reshape``, NCHW maps ``[N, C, H, W]`` (the official NCHW
  module) with a ``Transpose``, and pooled region tables ``[N*S*S, C, h, w]`` (pooled K/V) with
  ``Reshape -> Transpose -> Reshape`` into the ``[N, S*h, S*w, C]`` maps of the pooled tokens;
* the plugin node takes over the attention output tensor ``o`` (same name, same consumers; an NCHW
  ``o`` through a ``Transpose`` after the node), so LCE, the output projection, the crop of
  ``auto_pad`` and everything else stay untouched;
* the old gather/attention subgraph is then dead and removed by ``cleanup()``.

Nothing else is modified: Q/DQ nodes outside the replaced subgraph stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

from edge_biformer.ops.bra import CONTRACT
from edge_biformer.rewrite.graph import GraphInfo, attr_int, axis_slice, consumers, split_sizes
from edge_biformer.rewrite.match import BraMatch
from edge_biformer.rewrite.trace import Source

__all__ = ["RewriteOutcome", "export_rewritten", "replace_blocks"]


@dataclass
class RewriteOutcome:
    """What :func:`replace_blocks` did."""

    plugin_nodes: list[str]
    inserted_nodes: int
    removed_nodes: int
    kept_alive: list[str]


def _np_dtype(elem_type: int | None) -> np.dtype:
    if elem_type is None:
        return np.dtype(np.float32)
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


class _Builder:
    """Inserts nodes into ``graph`` with unique, block-scoped names."""

    def __init__(self, graph: gs.Graph, info: GraphInfo) -> None:
        self.graph = graph
        self.info = info
        self.inserted = 0
        self._names: set[str] = {t for t in graph.tensors()} | {n.name for n in graph.nodes if n.name}
        self._views: dict[tuple[str, int, int, str], gs.Variable] = {}

    def unique(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self._names:
            candidate = f"{name}_{i}"
            i += 1
        self._names.add(candidate)
        return candidate

    def node(
        self, op: str, prefix: str, inputs: list[gs.Tensor], attrs: dict | None = None, dtype=None, shape=None
    ) -> gs.Variable:
        out = gs.Variable(self.unique(f"{prefix}/{op}_output"), dtype=dtype, shape=shape)
        node = gs.Node(
            op=op, name=self.unique(f"{prefix}/{op}"), attrs=attrs or {}, inputs=inputs, outputs=[out]
        )
        self.graph.nodes.append(node)
        self.inserted += 1
        return out

    def const(self, prefix: str, values: list[int] | np.ndarray) -> gs.Constant:
        return gs.Constant(self.unique(f"{prefix}/const"), np.asarray(values, dtype=np.int64))

    # -- q/k/v ---------------------------------------------------------------------------------------
    def channel_view(self, tensor: gs.Variable, axis: int, start: int, stop: int, prefix: str) -> gs.Variable:
        """The tensor holding exactly channels ``[start, stop)`` of ``axis`` (reused if the graph has it)."""
        existing = _find_channel_view(tensor, axis, start, stop, self.info)
        if existing is not None:
            return existing
        return self.node(
            "Slice",
            prefix,
            [tensor, self.const(prefix, [start]), self.const(prefix, [stop]), self.const(prefix, [axis])],
            dtype=tensor.dtype,
        )

    def nhwc(self, source: Source, n_win: int, prefix: str) -> gs.Variable:
        """``source`` as an NHWC map (cached: k and v of a block may share the work)."""
        key = (source.tensor.name, source.start, source.stop, source.form)
        if key in self._views:
            return self._views[key]
        if source.form == "region_batch":  # k and v share one conversion of the pooled table
            whole = (source.tensor.name, 0, source.channels, source.form)
            if whole not in self._views:
                self._views[whole] = self._region_batch_to_nhwc(source, n_win, prefix)
            tensor = self._views[whole]
            if not source.is_full:
                tensor = self.channel_view(tensor, 3, source.start, source.stop, prefix)
        else:
            tensor = source.tensor
            if not source.is_full:
                axis = source.axis if source.axis >= 0 else (self.info.rank(tensor) or 0) + source.axis
                tensor = self.channel_view(tensor, axis, source.start, source.stop, prefix)
            if source.form == "regions":
                tensor = self._regions_to_nhwc(tensor, source, n_win, prefix)
            elif source.form == "nchw":
                tensor = self.node(
                    "Transpose", prefix, [tensor], attrs={"perm": [0, 2, 3, 1]}, dtype=tensor.dtype
                )
        self._views[key] = tensor
        return tensor

    def _region_batch_to_nhwc(self, source: Source, s: int, prefix: str) -> gs.Variable:
        """[N*S*S, C, h, w] -> [N, S*h, S*w, C] (region (j, i) = j*S + i of each image)."""
        tensor = source.tensor
        dims = self.info.shape(tensor) or [None] * 4
        h, w, c = dims[2], dims[3], source.channels
        dtype = tensor.dtype
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            target6: gs.Tensor = self.const(prefix, [-1, s, s, c, h, w])
            target4: gs.Tensor = self.const(prefix, [-1, s * h, s * w, c])
        else:
            shape = self.node("Shape", prefix, [tensor], dtype=np.int64, shape=[4])
            hw = self.node(
                "Slice", prefix, [shape, self.const(prefix, [2]), self.const(prefix, [4])], dtype=np.int64
            )
            hw_full = self.node("Mul", prefix, [hw, self.const(prefix, [s])], dtype=np.int64, shape=[2])
            target6 = self.node(
                "Concat",
                prefix,
                [self.const(prefix, [-1, s, s, c]), hw],
                attrs={"axis": 0},
                dtype=np.int64,
                shape=[6],
            )
            target4 = self.node(
                "Concat",
                prefix,
                [self.const(prefix, [-1]), hw_full, self.const(prefix, [c])],
                attrs={"axis": 0},
                dtype=np.int64,
                shape=[4],
            )
        grid = self.node("Reshape", prefix, [tensor, target6], dtype=dtype)
        rows = self.node("Transpose", prefix, [grid], attrs={"perm": [0, 1, 4, 2, 5, 3]}, dtype=dtype)
        return self.node("Reshape", prefix, [rows, target4], dtype=dtype)

    def _regions_to_nhwc(self, tensor: gs.Variable, source: Source, s: int, prefix: str) -> gs.Variable:
        """[N, S*S, h, w, C] -> [N, S*h, S*w, C] (region (j, i) = j*S + i)."""
        dims = self.info.shape(source.tensor) or [None] * 5
        h, w = dims[2], dims[3]
        c = source.width
        dtype = tensor.dtype
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            target6: gs.Tensor = self.const(prefix, [-1, s, s, h, w, c])
            target4: gs.Tensor = self.const(prefix, [-1, s * h, s * w, c])
        else:
            shape = self.node("Shape", prefix, [tensor], dtype=np.int64, shape=[5])
            batch = self.node(
                "Slice",
                prefix,
                [shape, self.const(prefix, [0]), self.const(prefix, [1])],
                dtype=np.int64,
                shape=[1],
            )
            hw = self.node(
                "Slice",
                prefix,
                [shape, self.const(prefix, [2]), self.const(prefix, [4])],
                dtype=np.int64,
                shape=[2],
            )
            hw_full = self.node("Mul", prefix, [hw, self.const(prefix, [s])], dtype=np.int64, shape=[2])
            target6 = self.node(
                "Concat",
                prefix,
                [batch, self.const(prefix, [s, s]), hw, self.const(prefix, [c])],
                attrs={"axis": 0},
                dtype=np.int64,
                shape=[6],
            )
            target4 = self.node(
                "Concat",
                prefix,
                [batch, hw_full, self.const(prefix, [c])],
                attrs={"axis": 0},
                dtype=np.int64,
                shape=[4],
            )
        grid = self.node("Reshape", prefix, [tensor, target6], dtype=dtype)
        rows = self.node("Transpose", prefix, [grid], attrs={"perm": [0, 1, 3, 2, 4, 5]}, dtype=dtype)
        return self.node("Reshape", prefix, [rows, target4], dtype=dtype)


def _find_channel_view(
    tensor: gs.Variable, axis: int, start: int, stop: int, info: GraphInfo
) -> gs.Variable | None:
    """An existing tensor equal to channels ``[start, stop)`` of ``axis`` (through Split/Slice of it)."""
    frontier: list[tuple[gs.Tensor, int]] = [(tensor, 0)]
    for _depth in range(3):
        nxt: list[tuple[gs.Tensor, int]] = []
        for current, offset in frontier:
            for node in consumers(current):
                if node.inputs[0] is not current:
                    continue
                if node.op == "Split" and info.axis(current, attr_int(node, "axis", 0) or 0) == axis:
                    sizes = split_sizes(node, info)
                    if sizes is None:
                        continue
                    begin = offset
                    for out, size in zip(node.outputs, sizes, strict=False):
                        if (begin, begin + size) == (start, stop):
                            return out
                        nxt.append((out, begin))
                        begin += size
                elif node.op == "Slice":
                    cut = axis_slice(node, info)
                    if cut is None or cut[2] is None or info.axis(current, cut[0]) != axis:
                        continue
                    begin, end = offset + cut[1], offset + cut[2]
                    if (begin, end) == (start, stop):
                        return node.outputs[0]
                    nxt.append((node.outputs[0], begin))
        frontier = nxt
    return None


def _plugin_output_shape(match: BraMatch, info: GraphInfo) -> list[int | str | None]:
    """``[N, Hq, Wq, Cv]`` of the node's output (dims of the attention output where known)."""
    dims = info.shape(match.output) or [None, None, None, None]
    if match.output_form == "nchw" and len(dims) == 4:
        dims = [dims[0], dims[2], dims[3], dims[1]]
    clean: list[int | str | None] = []
    for d in dims[:4]:
        if (isinstance(d, int) and d > 0) or (isinstance(d, str) and d and not d.startswith("unk__")):
            clean.append(d)
        else:
            clean.append(None)
    clean[3] = match.v.width
    return clean


def replace_blocks(graph: gs.Graph, matches: list[BraMatch], info: GraphInfo) -> RewriteOutcome:
    """Insert one plugin node per match into ``graph`` and remove the dead subgraphs (in place)."""
    builder = _Builder(graph, info)
    nodes_before = len(graph.nodes)
    plugin_names: list[str] = []
    for match in matches:
        prefix = f"bra{match.index}"
        q = builder.nhwc(match.q, match.n_win, f"{prefix}/q")
        k = builder.nhwc(match.k, match.n_win, f"{prefix}/k")
        v = builder.nhwc(match.v, match.n_win, f"{prefix}/v")
        indices = match.indices
        batch_dim = (info.shape(indices) or [None])[0]
        r_idx = builder.node(
            "Cast",
            f"{prefix}/r_idx",
            [indices],
            attrs={"to": TensorProto.INT32},
            dtype=np.int32,
            shape=[batch_dim if isinstance(batch_dim, int) else None, match.n_win * match.n_win, match.topk],
        )
        output = match.output
        output.inputs.clear()  # detach o from the old attention; the plugin produces it now
        shape = _plugin_output_shape(match, info)
        out_type = info.elem_type(output)
        cast = out_type is not None and match.elem_type is not None and out_type != match.elem_type
        o = output
        output.dtype = _np_dtype(out_type if cast else match.elem_type)
        if match.output_form == "nchw":  # the op writes NHWC; a Transpose makes the NCHW tensor
            output.shape = [shape[0], shape[3], shape[1], shape[2]]
            o = gs.Variable(builder.unique(f"{prefix}/o_nhwc"), dtype=output.dtype, shape=shape)
            graph.nodes.append(
                gs.Node(
                    op="Transpose",
                    name=builder.unique(f"{prefix}/o_nchw"),
                    attrs={"perm": [0, 3, 1, 2]},
                    inputs=[o],
                    outputs=[output],
                )
            )
            builder.inserted += 1
        else:
            output.shape = shape
        if cast:
            # A float Cast after the attention (e.g. kept in fp32 by --exclude): the op returns q's
            # type, a Cast restores the type the rest of the graph reads.
            typed = o
            o = gs.Variable(builder.unique(f"{prefix}/o"), dtype=_np_dtype(match.elem_type), shape=shape)
            graph.nodes.append(
                gs.Node(
                    op="Cast",
                    name=builder.unique(f"{prefix}/o_cast"),
                    attrs={"to": int(out_type)},
                    inputs=[o],
                    outputs=[typed],
                )
            )
            typed.dtype = _np_dtype(out_type)
        name = builder.unique(f"{prefix}/{CONTRACT.op_type}")
        attrs = CONTRACT.node_attributes(
            n_win=match.n_win,
            num_heads=match.num_heads,
            topk=match.topk,
            scale=float(np.float32(match.scale)),
        )
        graph.nodes.append(
            gs.Node(
                op=CONTRACT.op_type,
                name=name,
                domain=CONTRACT.domain,
                attrs=attrs,
                inputs=[q, k, v, r_idx],
                outputs=[o],
            )
        )
        builder.inserted += 1
        plugin_names.append(name)
    graph.cleanup().toposort()
    alive = {id(n) for n in graph.nodes}
    kept = [f"{m.name}: {g.op} '{g.name}'" for m in matches for g in m.gathers if id(g) in alive]
    return RewriteOutcome(
        plugin_nodes=plugin_names,
        inserted_nodes=builder.inserted,
        removed_nodes=nodes_before + builder.inserted - len(graph.nodes),
        kept_alive=kept,
    )


def export_rewritten(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` with the original model's IR version and metadata, plus the plugin domain."""
    model = gs.export_onnx(graph)
    model.ir_version = original.ir_version
    model.producer_name = original.producer_name
    model.producer_version = original.producer_version
    model.domain = original.domain
    model.model_version = original.model_version
    model.doc_string = original.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    imports = {o.domain: o for o in model.opset_import}
    for entry in original.opset_import:
        if entry.domain not in imports:
            model.opset_import.append(entry)
            imports[entry.domain] = entry
    uses_plugin = any(CONTRACT.is_node(n) for n in model.graph.node)
    if uses_plugin and CONTRACT.domain not in imports:
        model.opset_import.append(onnx.helper.make_opsetid(CONTRACT.domain, CONTRACT.opset_version))
    return model
