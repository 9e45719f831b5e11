"""The torch reference of BiLevelRoutingAttention against a literal implementation of the contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_biformer.ops.bra_reference import routed_attention_reference
from edge_biformer.surgery import contract
from tests.conftest import REPO_ROOT


def contract_direct(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """plugins/bra/README.md "Semantics", step by step, in float64 with plain loops."""
    q, k, v = q.double(), k.double(), v.double()
    n, hq_full, wq_full, c_qk = q.shape
    _, hk_full, wk_full, _ = k.shape
    c_v = v.shape[-1]
    s = round(r_idx.shape[1] ** 0.5)
    hq, wq, hk, wk = hq_full // s, wq_full // s, hk_full // s, wk_full // s
    dqk, dv = c_qk // num_heads, c_v // num_heads
    out = torch.zeros(n, hq_full, wq_full, c_v, dtype=torch.float64)
    for b in range(n):
        for r in range(s * s):
            j, i = divmod(r, s)
            for m in range(num_heads):
                qm = q[b, j * hq : (j + 1) * hq, i * wq : (i + 1) * wq, m * dqk : (m + 1) * dqk].reshape(
                    -1, dqk
                )
                keys, values = [], []
                for t in range(r_idx.shape[2]):
                    jj, ii = divmod(int(r_idx[b, r, t]), s)
                    rows, cols = slice(jj * hk, (jj + 1) * hk), slice(ii * wk, (ii + 1) * wk)
                    keys.append(k[b, rows, cols, m * dqk : (m + 1) * dqk].reshape(-1, dqk))
                    values.append(v[b, rows, cols, m * dv : (m + 1) * dv].reshape(-1, dv))
                p = torch.softmax(scale * qm @ torch.cat(keys).T, dim=-1)
                o = p @ torch.cat(values)
                out[b, j * hq : (j + 1) * hq, i * wq : (i + 1) * wq, m * dv : (m + 1) * dv] = o.reshape(
                    hq, wq, dv
                )
    return out


def make_inputs(
    n: int, s: int, hq: int, wq: int, hk: int, wk: int, c_qk: int, c_v: int, topk: int, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random q/k/v (tokens per region hq x wq and hk x wk) and routed indices without repeats."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, s * hq, s * wq, c_qk, generator=g)
    k = torch.randn(n, s * hk, s * wk, c_qk, generator=g)
    v = torch.randn(n, s * hk, s * wk, c_v, generator=g)
    r_idx = torch.argsort(torch.rand(n, s * s, s * s, generator=g), dim=-1)[..., :topk].to(torch.int32)
    return q, k, v, r_idx


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
    assert float((out.double() - expected).abs().max()) <= 1e-5


@pytest.mark.parametrize(("n", "s", "hq", "wq", "hk", "wk", "c_qk", "c_v", "heads", "topk"), CASES[:4])
def test_float16_within_contract_tolerance(n, s, hq, wq, hk, wk, c_qk, c_v, heads, topk) -> None:
    q, k, v, r_idx = make_inputs(n, s, hq, wq, hk, wk, c_qk, c_v, topk, seed=1)
    q, k, v = q.half(), k.half(), v.half()
    expected = contract_direct(q, k, v, r_idx, heads, 0.3)  # from the float16 values, in float64
    out = routed_attention_reference(q, k, v, r_idx, num_heads=heads, scale=0.3)
    assert out.dtype == torch.float16
    assert float((out.double() - expected).abs().max()) <= 2e-3 * float(expected.abs().max())


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
    assert float((out.double() - expected).abs().max()) <= 1e-5


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
    assert float((out.double() - expected).abs().max()) <= 1e-5


def test_python_constants_match_the_json_contract() -> None:
    spec = json.loads((REPO_ROOT / "plugins" / "bra" / "BiLevelRoutingAttention.json").read_text())
    assert spec["name"] == contract.OP_TYPE == spec["onnx"]["op_type"]
    assert spec["version"] == contract.PLUGIN_VERSION
    assert spec["namespace"] == contract.PLUGIN_NAMESPACE
    assert spec["onnx"]["domain"] == contract.OP_DOMAIN
    assert spec["onnx"]["opset_version"] == contract.OPSET_VERSION
    assert tuple(a["name"] for a in spec["attributes"]) == contract.ATTR_NAMES
    assert [i["name"] for i in spec["inputs"]] == ["q", "k", "v", "r_idx"]
    assert np.all([a["required"] for a in spec["attributes"]])


def test_agrees_with_the_official_attention_core() -> None:
    """An independent evaluation: the official gather-by-expand core (kernels.reference), in float64."""
    from edge_biformer.kernels.reference import official_bra_core

    q, k, v, r_idx = make_inputs(2, 3, 2, 3, 1, 2, 12, 6, 5, seed=3)
    ours = routed_attention_reference(q, k, v, r_idx, num_heads=3, scale=0.3)
    theirs = official_bra_core(q.double(), k.double(), v.double(), r_idx, num_heads=3, scale=0.3)
    assert float((ours.double() - theirs).abs().max()) <= 1e-5
