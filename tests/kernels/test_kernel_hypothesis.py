"""Hypothesis-driven random sweep of the interpreted kernel against the float64 contract reference.

Shapes, head dims (any 1..128, so mostly not powers of two), Hq != Hk, topk, index patterns with
repeats, dtypes and scales are drawn at random; the example count is bounded (the interpreter runs
each kernel program in numpy) and derandomised so CI is reproducible. The ``slow`` variant draws more.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernel tests need Triton (the kernels/test extra)")
hypothesis = pytest.importorskip("hypothesis", reason="the sweep needs hypothesis (the test extra)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge_biformer.kernels import routed_attention, routed_attention_reference  # noqa: E402


@st.composite
def cases(draw: st.DrawFn) -> dict:
    s = draw(st.integers(1, 4))
    heads = draw(st.integers(1, 3))
    return dict(
        dtype=draw(st.sampled_from([torch.float32, torch.float16])),
        n=draw(st.integers(1, 2)),
        s=s,
        rq=(draw(st.integers(1, 5)), draw(st.integers(1, 5))),
        rk=(draw(st.integers(1, 5)), draw(st.integers(1, 5))),
        heads=heads,
        d_qk=draw(st.integers(1, 128)),
        d_v=draw(st.integers(1, 128)),
        topk=draw(st.integers(1, s * s)),
        pattern=draw(st.sampled_from(["perm", "random", "same"])),
        scale=draw(st.floats(0.01, 2.0)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _run(case: dict) -> None:
    gen = torch.Generator().manual_seed(case["seed"])
    n, s, heads, topk, dtype = case["n"], case["s"], case["heads"], case["topk"], case["dtype"]
    (hq, wq), (hk, wk) = case["rq"], case["rk"]
    c_qk, c_v = case["d_qk"] * heads, case["d_v"] * heads
    q = torch.randn(n, s * hq, s * wq, c_qk, generator=gen).to(dtype)
    k = torch.randn(n, s * hk, s * wk, c_qk, generator=gen).to(dtype)
    v = torch.randn(n, s * hk, s * wk, c_v, generator=gen).to(dtype)
    p2 = s * s
    if case["pattern"] == "perm":
        r_idx = torch.stack([torch.randperm(p2, generator=gen)[:topk] for _ in range(n * p2)])
    elif case["pattern"] == "random":
        r_idx = torch.randint(0, p2, (n * p2, topk), generator=gen)
    else:
        r_idx = torch.randint(0, p2, (n * p2, 1), generator=gen).expand(n * p2, topk)
    r_idx = r_idx.reshape(n, p2, topk).to(torch.int32).contiguous()
    o = routed_attention(q, k, v, r_idx, num_heads=heads, scale=case["scale"])
    ref = routed_attention_reference(q, k, v, r_idx, num_heads=heads, scale=case["scale"])
    err = (o.double() - ref).abs().max().item()
    if dtype == torch.float32:
        assert err <= 1e-4, (case, err)
    else:
        assert err <= 2e-3 * ref.abs().max().item(), (case, err)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_sweep(case: dict) -> None:
    _run(case)


@pytest.mark.slow
@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_sweep_long(case: dict) -> None:
    _run(case)
