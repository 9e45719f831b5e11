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
from edge_biformer.ops.bra import CONTRACT  # noqa: E402
from edge_biformer.testing import assert_close  # noqa: E402
from tests.bra_cases import make_inputs, region_case  # noqa: E402


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
    heads, dtype = case["heads"], case["dtype"]
    geometry = region_case(
        case["n"], case["s"], case["rq"], case["rk"], case["d_qk"] * heads, case["d_v"] * heads, heads,
        case["topk"], pattern=case["pattern"], scale=case["scale"],
    )  # fmt: skip
    q, k, v, r_idx = make_inputs(geometry, dtype, seed=case["seed"])
    o = routed_attention(q, k, v, r_idx, num_heads=heads, scale=case["scale"])
    ref = routed_attention_reference(q, k, v, r_idx, num_heads=heads, scale=case["scale"])
    assert_close(o, ref, CONTRACT.tolerance(dtype), msg=str(case))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_sweep(case: dict) -> None:
    _run(case)


@pytest.mark.slow
@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_sweep_long(case: dict) -> None:
    _run(case)
