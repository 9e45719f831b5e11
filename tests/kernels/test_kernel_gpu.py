"""The JIT-compiled kernel on a CUDA GPU (marker ``gpu``; skipped without one).

Needs only the repository (no reference data, no TensorRT): the BiFormer stage shapes against the
float64 contract reference, the fast path free of host synchronisation and capturable into a CUDA
graph, the validating mode's errors, and out-of-range indices clamped without a fault.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernel tests need Triton (the kernels/test extra)")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the JIT path)"),
]

from edge_biformer.kernels import KernelInputError, routed_attention  # noqa: E402
from edge_biformer.kernels.routed import VALIDATE_ENV  # noqa: E402
from edge_biformer.kernels.shapes import stage_shapes  # noqa: E402
from edge_biformer.ops.bra import CONTRACT  # noqa: E402
from edge_biformer.testing import assert_close  # noqa: E402
from tests.bra_cases import make_inputs, reference64  # noqa: E402

SHAPES = stage_shapes(["cls224"], ["T/S", "B"])


def _case(sh) -> dict:
    g = sh.geometry(2)
    return dict(n=2, n_win=g.n_win, hq=g.hq, wq=g.wq, hk=g.hk, wk=g.wk, c_qk=g.c_qk, c_v=g.c_v,
                num_heads=g.num_heads, topk=g.topk, scale=sh.scale)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("sh", SHAPES, ids=[s.name for s in SHAPES])
def test_stage_shapes_against_the_reference(sh, dtype: torch.dtype) -> None:
    case = _case(sh)
    q, k, v, r_idx = make_inputs(case, dtype, seed=3, device="cuda")
    o = routed_attention(q, k, v, r_idx, num_heads=sh.heads, scale=sh.scale)
    assert_close(o.cpu(), reference64(q, k, v, r_idx, case), CONTRACT.tolerance(dtype), msg=sh.name)


def _stage3():
    sh = SHAPES[2]
    case = _case(sh)
    return sh, case, make_inputs(case, torch.float16, seed=5, device="cuda")


def test_default_call_never_synchronises_and_is_graph_capturable() -> None:
    sh, case, (q, k, v, r_idx) = _stage3()
    routed_attention(q, k, v, r_idx, num_heads=sh.heads, scale=sh.scale)  # JIT-compile outside
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation raises
    try:
        o = routed_attention(q, k, v, r_idx, num_heads=sh.heads, scale=sh.scale)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        o_graph = routed_attention(q, k, v, r_idx, num_heads=sh.heads, scale=sh.scale)
    q.mul_(-1.0)  # the replay reads the new values
    graph.replay()
    torch.cuda.synchronize()
    ref = reference64(q, k, v, r_idx, case)
    assert_close(o_graph.cpu(), ref, CONTRACT.tolerance(torch.float16))
    assert not torch.equal(o, o_graph)


def test_validating_modes_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    sh, _, (q, k, v, r_idx) = _stage3()
    bad = r_idx + 49
    with pytest.raises(KernelInputError, match="region indices must lie in"):
        routed_attention(q, k, v, bad, num_heads=sh.heads, scale=sh.scale, validate_indices=True)
    routed_attention(q, k, v, bad, num_heads=sh.heads, scale=sh.scale)  # default: no check on CUDA
    monkeypatch.setenv(VALIDATE_ENV, "1")
    with pytest.raises(KernelInputError, match="region indices must lie in"):
        routed_attention(q, k, v, bad, num_heads=sh.heads, scale=sh.scale)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(KernelInputError, match="CUDA graph"), torch.cuda.graph(graph):
        routed_attention(q, k, v, r_idx, num_heads=sh.heads, scale=sh.scale)


def test_out_of_range_indices_are_clamped_not_faulting() -> None:
    sh, case, (q, k, v, r_idx) = _stage3()
    wild = r_idx.clone()
    wild[:, :, 0] = 2**30
    wild[:, :, 1] = -(2**30)
    o = routed_attention(q, k, v, wild, num_heads=sh.heads, scale=sh.scale, validate_indices=False)
    torch.cuda.synchronize()
    clamped = wild.clamp(0, case["n_win"] ** 2 - 1)
    assert_close(o.cpu(), reference64(q, k, v, clamped, case), CONTRACT.tolerance(torch.float16))
