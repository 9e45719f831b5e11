"""DeBiFormer's routed attention as the official module exports it: NCHW agents in, NCHW output out.

The official ``DeBiLevelRoutingAttention`` projects its agent queries with a 1x1 conv on an NCHW
map and cuts them into regions with ``rearrange("n c (j h) (i w) -> n (j i) h w c")``; the routed
attention output goes back to NCHW (``"(n j i) m (h w) c -> n (m c) (j h) (i w)"``). The BRA
matcher (:mod:`.match`) walks through these layout ops as through any other, so on its own it
would take the NCHW conv output for an NHWC map (the "channels" of the queries would be the map's
width) and find no NHWC output. Two additions, used by the matcher only when its general rules
fail, recognise this form:

* :func:`region_queries`: the queries are the region tensor ``[N, S*S, h, w, C]`` the walk
  passed (the nearest to the attention whose channels are the keys' width), not the NCHW map
  further back;
* :func:`nchw_output`: an attention output ``[N, C, H, W]`` (channels on axis 1) is accepted;
  the rewrite then transposes the plugin's NHWC output to it (:mod:`.replace`).

Our own DeBiFormer export (``edge_biformer.models.debiformer``) projects on NHWC maps and needs
neither. At 224 every agent region is 1x1 (one agent per region); at 448 2x2; the op contract
allows a query map of another size than the key map (``Hq != Hk``).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from edge_biformer.rewrite.graph import GraphInfo
from edge_biformer.rewrite.trace import QdqUse, Source, Trace, pick_source

__all__ = ["nchw_output", "region_queries"]


def region_queries(
    trace: Trace, info: GraphInfo, n_win: int, width: int, nodes: list[gs.Node]
) -> tuple[Source, list[QdqUse]] | None:
    """The queries as the region tensor ``[N, S*S, h, w, width]`` nearest the attention on ``trace``.

    None if the walk passed no such tensor (then the general rule's answer stands).
    """
    for position, (tensor, start, stop) in enumerate(trace.visited):
        if info.rank(tensor) != 5 or info.static_dim(tensor, 1) != n_win * n_win:
            continue
        channels = info.static_dim(tensor, -1)
        if channels is None or (stop if stop is not None else channels) - start != width:
            continue
        truncated = Trace(
            visited=trace.visited[: position + 1],
            scale=trace.scale,
            gathers=list(trace.gathers),
            qdq=[(i, use) for i, use in trace.qdq if i <= position],
            blocker=None,
        )
        return pick_source(truncated, info, n_win, "queries", nodes)
    return None


def nchw_output(output: gs.Tensor, info: GraphInfo, width: int) -> bool:
    """Whether ``output`` is an NCHW map ``[N, width, H, W]`` (and not an NHWC one)."""
    return (
        info.rank(output) == 4
        and info.static_dim(output, 1) == width
        and info.static_dim(output, -1) not in (None, width)
    )
