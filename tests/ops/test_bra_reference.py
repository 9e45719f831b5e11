"""The torch reference of BiLevelRoutingAttention against a literal implementation of the contract,
and its own rules (chunking, repeats, empty batches, contract violations)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_biformer.ops.bra import CONTRACT, routed_attention_reference
from edge_biformer.testing import assert_close
from tests import bra_cases
from tests.bra_cases import naive_reference as contract_direct


def make_inputs(
    n: int, s: int, hq: int, wq: int, hk: int, wk: int, c_qk: int, c_v: int, topk: int, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random q/k/v (tokens per region hq x wq and hk x wk) and routed indices without repeats."""
    return bra_cases.make_inputs(
        bra_cases.region_case(n, s, (hq, wq), (hk, wk), c_qk, c_v, 1, topk), seed=seed
    )


CASES = [
    # n, S, hq, wq, hk, wk, Cqk, Cv, heads, topk
    pytest.param(2, 3, 2, 3, 2, 3, 8, 8, 2, 4, id="basic"),
    pytest.param(1, 2, 2, 2, 1, 1, 6, 12, 3, 2, id="Hq!=Hk"),  # DeBiFormer-style: fewer key tokens
    pytest.param(2, 3, 1, 2, 3, 2, 4, 4, 1, 1, id="topk=1"),
    pytest.param(1, 3, 2, 2, 2, 2, 12, 6, 3, 9, id="topk=S*S,Cqk!=Cv"),
    pytest.param(3, 7, 1, 1, 1, 1, 16, 16, 2, 4, id="one-token-regions"),
]


@pytest.mark.parametrize(("n", "s", "hq", "wq", "hk", "wk", "c_qk", "c_v", "heads", "topk"), CASES)
def test_reference_matches_contract(n, s, hq, wq, hk, wk, c_qk, c_v, heads, topk) -> None:
    q, k, v, r_idx = make_inputs(n, s, hq, wq, hk, wk, c_qk, c_v, topk)
    scale = c_qk**-0.5
    expected = contract_direct(q, k, v, r_idx, heads, scale)
    out = routed_attention_reference(q, k, v, r_idx, num_heads=heads, scale=scale)
    assert out.dtype == torch.float32 and out.shape == (n, s * hq, s * wq, c_v)
    assert_close(out, expected, max_abs=1e-5)


@pytest.mark.parametrize(("n", "s", "hq", "wq", "hk", "wk", "c_qk", "c_v", "heads", "topk"), CASES[:4])
def test_float16_within_contract_tolerance(n, s, hq, wq, hk, wk, c_qk, c_v, heads, topk) -> None:
    q, k, v, r_idx = make_inputs(n, s, hq, wq, hk, wk, c_qk, c_v, topk, seed=1)
    q, k, v = q.half(), k.half(), v.half()
    expected = contract_direct(q, k, v, r_idx, heads, 0.3)  # from the float16 values, in float64
    out = routed_attention_reference(q, k, v, r_idx, num_heads=heads, scale=0.3)
    assert out.dtype == torch.float16
    assert_close(out, expected, CONTRACT.tolerance("float16"))


def test_chunking_does_not_change_the_result() -> None:
    q, k, v, r_idx = make_inputs(2, 4, 2, 2, 2, 2, 8, 8, 5)
    whole = routed_attention_reference(q, k, v, r_idx, num_heads=2, scale=0.4)
    for chunk in (1, 64, 1000):
        chunked = routed_attention_reference(q, k, v, r_idx, num_heads=2, scale=0.4, chunk_elements=chunk)
        assert torch.equal(whole, chunked), chunk


def test_repeated_region_is_attended_twice() -> None:
    q, k, v, r_idx = make_inputs(1, 2, 1, 2, 1, 2, 4, 4, 2)
    r_idx[0, 0] = torch.tensor([3, 3], dtype=torch.int32)
    expected = contract_direct(q, k, v, r_idx, 1, 0.5)
    out = routed_attention_reference(q, k, v, r_idx, num_heads=1, scale=0.5)
    assert_close(out, expected, max_abs=1e-5)


def test_empty_batch() -> None:
    q, k, v, r_idx = make_inputs(1, 2, 2, 2, 2, 2, 8, 6, 2)
    out = routed_attention_reference(q[:0], k[:0], v[:0], r_idx[:0], num_heads=2, scale=0.5)
    assert out.shape == (0, 4, 4, 6)


def test_int64_indices_accepted() -> None:
    q, k, v, r_idx = make_inputs(1, 2, 2, 2, 2, 2, 4, 4, 2)
    a = routed_attention_reference(q, k, v, r_idx, num_heads=2, scale=0.5)
    b = routed_attention_reference(q, k, v, r_idx.long(), num_heads=2, scale=0.5)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda q, k, v, r: (q[0], k, v, r), "NHWC"),
        (lambda q, k, v, r: (q, k, v, r[..., 0]), r"\[N, S\*S, topk\]"),
        (lambda q, k, v, r: (q, k.half(), v, r), "share one float dtype"),
        (lambda q, k, v, r: (q, k, v, r.float()), "int32"),
        (lambda q, k, v, r: (q, k[..., :4], v, r), "same channels"),
        (lambda q, k, v, r: (q[:, :3], k, v, r), "Hq=3 is not a positive multiple of n_win=2"),
        (lambda q, k, v, r: (q, k, v, r[:, :3]), "square"),
        (lambda q, k, v, r: (q, k, v, r + 4), r"in \[0, 4\)"),
        (lambda q, k, v, r: (q, k, v, torch.cat([r, r, r], dim=-1)), r"topk=6 must be in \[1, S\*S=4\]"),
    ],
)
def test_contract_violations_raise(mutate, message) -> None:
    args = mutate(*make_inputs(1, 2, 2, 2, 2, 2, 8, 8, 2))
    with pytest.raises(ValueError, match=message):
        routed_attention_reference(*args, num_heads=2, scale=0.5)


def test_heads_must_divide_channels() -> None:
    q, k, v, r_idx = make_inputs(1, 2, 1, 1, 1, 1, 6, 6, 2)
    with pytest.raises(ValueError, match="divisible by num_heads=4"):
        routed_attention_reference(q, k, v, r_idx, num_heads=4, scale=0.5)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 2),
    s=st.integers(1, 4),
    hq=st.integers(1, 3),
    wq=st.integers(1, 3),
    hk=st.integers(1, 3),
    wk=st.integers(1, 3),
    heads=st.integers(1, 3),
    dqk=st.integers(1, 4),
    dv=st.integers(1, 4),
    topk_frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_reference_property(n, s, hq, wq, hk, wk, heads, dqk, dv, topk_frac, seed) -> None:
    topk = max(1, round(topk_frac * s * s))
    q, k, v, r_idx = make_inputs(n, s, hq, wq, hk, wk, heads * dqk, heads * dv, topk, seed)
    expected = contract_direct(q, k, v, r_idx, heads, 0.7)
    out = routed_attention_reference(q, k, v, r_idx, num_heads=heads, scale=0.7, chunk_elements=50)
    assert_close(out, expected, max_abs=1e-5)


def test_agrees_with_the_official_attention_core() -> None:
    """An independent evaluation: the official gather-by-expand core (kernels.reference), in float64."""
    from edge_biformer.kernels.reference import official_bra_core

    q, k, v, r_idx = make_inputs(2, 3, 2, 3, 1, 2, 12, 6, 5, seed=3)
    ours = routed_attention_reference(q, k, v, r_idx, num_heads=3, scale=0.3)
    theirs = official_bra_core(q.double(), k.double(), v.double(), r_idx, num_heads=3, scale=0.3)
    assert_close(ours, theirs, max_abs=1e-5)
