"""The BiLevelRoutingAttention op on every backend, against a float64 evaluation, over one case table.

One case table (the contract's ``cases``, ``edge_biformer/ops/bra/BiLevelRoutingAttention.json``)
and one judgement (the contract's tolerance for the dtype: max abs error <= 1e-4 for float32,
<= 2e-3 of max|o| for float16), for each backend of the op, mmdeploy ``tests/test_ops`` style:

* ``reference``: :func:`edge_biformer.ops.bra.routed_attention_reference` in the dtype;
* ``triton``: the fused kernel under Triton's interpreter (CPU tensors);
* ``triton_cuda``: the same kernel JIT-compiled on a GPU (skipped without one);
* ``cpu_op``: a one-node graph in :func:`edge_biformer.cpu_session` (the onnxruntime CPU op);
* ``tensorrt``: a one-node TensorRT engine with the plugin (skipped without TensorRT and a GPU).

The float64 evaluation itself is checked against the contract's wording token by token.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_biformer.ops.bra import CONTRACT
from edge_biformer.testing import assert_close
from tests.bra_cases import CASES, make_inputs, naive_reference, one_node_graph, reference64

DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: Cases small enough for the token-by-token evaluation.
SMALL = [
    name for name, c in CASES.items() if c["n"] * c["hq"] * c["wq"] * c["topk"] * c["hk"] * c["wk"] <= 50_000
]


def _reference(q, k, v, r_idx, case):
    from edge_biformer.ops.bra import routed_attention_reference

    return routed_attention_reference(q, k, v, r_idx, num_heads=case["num_heads"], scale=case["scale"])


def _triton(q, k, v, r_idx, case):
    pytest.importorskip("triton", reason="the kernel backend needs Triton (the kernels/test extra)")
    from edge_biformer.kernels import routed_attention

    return routed_attention(q, k, v, r_idx, num_heads=case["num_heads"], scale=case["scale"])


def _triton_cuda(q, k, v, r_idx, case):
    pytest.importorskip("triton", reason="the kernel backend needs Triton (the kernels/test extra)")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (the JIT path)")
    from edge_biformer.kernels import routed_attention

    args = [t.cuda() for t in (q, k, v, r_idx)]
    return routed_attention(*args, num_heads=case["num_heads"], scale=case["scale"]).cpu()


def _cpu_op(q, k, v, r_idx, case):
    from edge_biformer import cpu_session

    dtype = "float16" if q.dtype == torch.float16 else "float32"
    session = cpu_session(one_node_graph(case, dtype))
    feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "r_idx": r_idx.numpy()}
    return torch.from_numpy(session.run(None, feeds)[0])


def _tensorrt(q, k, v, r_idx, case):
    from tests.plugins.trt_engine import run_one_node

    return run_one_node(case, q, k, v, r_idx)


BACKENDS = {
    "reference": _reference,
    "triton": _triton,
    "triton_cuda": _triton_cuda,
    "cpu_op": _cpu_op,
    "tensorrt": _tensorrt,
}
MARKS = {"triton_cuda": [pytest.mark.gpu], "tensorrt": [pytest.mark.gpu, pytest.mark.tensorrt]}


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("backend", [pytest.param(b, marks=MARKS.get(b, [])) for b in BACKENDS])
def test_backend_within_contract(backend: str, name: str, dtype: str) -> None:
    case = CASES[name]
    q, k, v, r_idx = make_inputs(case, DTYPES[dtype], seed=1)
    o = BACKENDS[backend](q, k, v, r_idx, case)
    assert o.shape == (case["n"], case["hq"], case["wq"], case["c_v"]) and o.dtype == DTYPES[dtype]
    assert_close(
        o, reference64(q, k, v, r_idx, case), CONTRACT.tolerance(dtype), msg=f"{backend} {name} {dtype}"
    )


@pytest.mark.parametrize("name", SMALL)
def test_float64_evaluation_matches_the_contract_wording(name: str) -> None:
    case = CASES[name]
    q, k, v, r_idx = make_inputs(case, torch.float64)
    expected = naive_reference(q, k, v, r_idx, case["num_heads"], case["scale"])
    assert_close(reference64(q, k, v, r_idx, case), expected, max_abs=1e-12)


def test_contract_tolerance_is_what_the_contract_says() -> None:
    """The judgement every backend gets: float32 error 2e-4 fails, float16 error 1e-3 of max|o| passes."""
    ref = np.linspace(-1.0, 1.0, 64)
    assert not CONTRACT.within_contract(ref + 2e-4, ref, "float32").passed
    assert CONTRACT.within_contract(ref + 5e-5, ref, "float32").passed
    assert CONTRACT.within_contract(ref + 1e-3, ref, "float16").passed
    assert not CONTRACT.within_contract(ref + 3e-3, ref, "float16").passed
    assert not CONTRACT.within_contract(np.full(64, np.nan), ref, "float32").passed
