"""The fused routed-attention kernel (``edge_biformer.kernels.routed_attention``) against the contract.

On CPU tensors the entry point runs the very kernel program that is compiled for GPUs, under
Triton's interpreter; the reference is a float64 evaluation of the op contract
(``plugins/bra/README.md``). Tolerances are the contract's (``CONTRACT.tolerance``): max abs error
<= 1e-4 for float32, <= 2e-3 relative to ``max|o|`` for float16. The contract's case table runs in
``tests/ops/test_bra_op.py``; here: the kernel's own properties and errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("triton", reason="the kernel tests need Triton (the kernels/test extra)")

from edge_biformer.kernels import (
    KernelInputError,
    official_bra_core,
    routed_attention,
    routed_attention_reference,
)
from edge_biformer.ops.bra import CONTRACT
from edge_biformer.testing import assert_close
from tests.bra_cases import CASES, make_inputs, reference64, region_case, routing
from tests.conftest import REFERENCE_DIR

REPO = Path(__file__).resolve().parents[2]


def _inputs(
    *, dtype: torch.dtype, pattern: str = "perm", seed: int = 0, heads: int = 1, **regions: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs of :func:`tests.bra_cases.region_case` geometry (``n, s, rq, rk, c_qk, c_v, topk``)."""
    return make_inputs(region_case(heads=heads, pattern=pattern, **regions), dtype, seed=seed)


def assert_close_to_contract(o: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """The op contract's tolerance for ``dtype`` (max abs 1e-4 for float32, 2e-3 of max|o| for float16)."""
    assert o.shape == ref.shape and o.dtype == dtype
    assert_close(o, ref, CONTRACT.tolerance(dtype))


# Every case of the contract's table (a grid over S, region sizes, head dims, topk and index
# patterns, and the BiFormer-T stages) runs on this kernel in tests/ops/test_bra_op.py, float32 and
# float16, interpreted and (on a GPU) JIT-compiled; here: the BiFormer-T stages at batch 2.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["biformer_t_stage0", "biformer_t_stage1", "biformer_t_stage2"])
def test_biformer_tiny_stages_fp32_batch2(name: str) -> None:
    case = {**CASES[name], "n": 2}
    q, k, v, r_idx = make_inputs(case, torch.float32)
    o = routed_attention(q, k, v, r_idx, num_heads=case["num_heads"], scale=case["scale"])
    assert_close_to_contract(o, reference64(q, k, v, r_idx, case), torch.float32)


def test_repeated_indices_are_attended_twice() -> None:
    """``[a, a, b]`` weights region a twice, unlike ``[a, b]`` (what a gather does)."""
    q, k, v, _ = _inputs(n=1, s=2, rq=(2, 2), rk=(2, 2), c_qk=32, c_v=32, topk=1, dtype=torch.float32)
    twice = torch.tensor([[[0, 0, 3]] * 4], dtype=torch.int32)
    once = torch.tensor([[[0, 3]] * 4], dtype=torch.int32)
    o = routed_attention(q, k, v, twice, num_heads=1, scale=0.5)
    ref_twice = routed_attention_reference(q, k, v, twice, num_heads=1, scale=0.5)
    ref_once = routed_attention_reference(q, k, v, once, num_heads=1, scale=0.5)
    assert_close_to_contract(o, ref_twice, torch.float32)
    assert (ref_twice - ref_once).abs().max() > 1e-2  # the case really tells the two apart


def test_routed_order_does_not_matter() -> None:
    q, k, v, r_idx = _inputs(n=1, s=4, rq=(2, 2), rk=(2, 2), c_qk=32, c_v=32, topk=5, dtype=torch.float32)
    o1 = routed_attention(q, k, v, r_idx, num_heads=2, scale=0.3)
    o2 = routed_attention(q, k, v, r_idx.flip(-1).contiguous(), num_heads=2, scale=0.3)
    assert_close(o1, o2, max_abs=1e-5)


def test_large_logits_stay_finite() -> None:
    """The online softmax subtracts the running max: huge logits neither overflow nor NaN."""
    q, k, v, r_idx = _inputs(n=1, s=2, rq=(2, 2), rk=(2, 2), c_qk=16, c_v=16, topk=4, dtype=torch.float16)
    q, k = q * 30, k * 30  # logits up to ~1e4 * scale
    o = routed_attention(q, k, v, r_idx, num_heads=1, scale=1.0)
    ref = routed_attention_reference(q, k, v, r_idx, num_heads=1, scale=1.0)
    assert torch.isfinite(o).all()
    assert_close_to_contract(o, ref, torch.float16)


def test_strided_views_of_a_fused_qkv_tensor() -> None:
    """q, k, v may be channel slices of one qkv tensor (no copy); channel-strided input is copied."""
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 8, 8, 32 + 32 + 48, generator=gen)
    q, k, v = qkv[..., :32], qkv[..., 32:64], qkv[..., 64:]
    r_idx = routing(2, 4, 3, "perm", gen)
    o = routed_attention(q, k, v, r_idx, num_heads=2, scale=0.2)
    ref = routed_attention_reference(q, k, v, r_idx, num_heads=2, scale=0.2)
    assert_close_to_contract(o, ref, torch.float32)
    v_nchw = v.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # channel stride != 1
    o2 = routed_attention(q, k, v_nchw, r_idx, num_heads=2, scale=0.2)
    assert_close_to_contract(o2, ref, torch.float32)


def test_empty_batch() -> None:
    q, k, v, r_idx = _inputs(n=1, s=2, rq=(1, 1), rk=(1, 1), c_qk=16, c_v=16, topk=1, dtype=torch.float32)
    o = routed_attention(q[:0], k[:0], v[:0], r_idx[:0], num_heads=1, scale=1.0)
    assert o.shape == (0, 2, 2, 16)


def test_no_gathered_temporary() -> None:
    """Host memory does not grow with ``topk`` like the gathered ``[N, S*S, topk, hk*wk, C]`` copy.

    Triton's interpreter holds the kernel's tiles as numpy arrays, which tracemalloc sees (torch
    allocations, here only the output, are not traced and are O(output)). Going from topk 1 to 4
    grows the gathered copy of the official code by 768 KB; the kernel's peak must grow by far less.
    """
    s, r, c = 2, 8, 128
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, s * r, s * r, c, generator=gen) for _ in range(3))
    peaks, gathered = {}, {}
    routed_attention(q, k, v, routing(1, s, 1, "perm", gen), num_heads=1, scale=0.1)  # warm-up
    for topk in (1, 4):
        r_idx = routing(1, s, topk, "perm", gen)
        tracemalloc.start()
        try:
            routed_attention(q, k, v, r_idx, num_heads=1, scale=0.1)
            peaks[topk] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        gathered[topk] = s * s * topk * r * r * (c + c) * 4
    growth, gathered_growth = peaks[4] - peaks[1], gathered[4] - gathered[1]
    assert growth < gathered_growth / 8, (
        f"peak grew by {growth} B with topk (gathered copy: {gathered_growth} B)"
    )


def test_kernel_under_triton_interpret_env() -> None:
    """With TRITON_INTERPRET=1 set before triton is imported (Triton's own switch) the call works too."""
    code = textwrap.dedent(
        """
        import torch
        from edge_biformer.kernels import routed_attention, routed_attention_reference
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 4, 4, 32, generator=g) for _ in range(3))
        r = torch.randint(0, 4, (2, 4, 3), generator=g, dtype=torch.int32)
        o = routed_attention(q, k, v, r, num_heads=2, scale=0.25)
        ref = routed_attention_reference(q, k, v, r, num_heads=2, scale=0.25)
        from edge_biformer.testing import assert_close
        print("ok", assert_close(o, ref, max_abs=1e-5).max_abs_diff)
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


def test_kernel_matches_official_bra_of_reference_model() -> None:
    """The BRA blocks of the official-architecture reference model (stages 0-2 at 224, fp32).

    q, k, v come from the checkpoint's qkv projection of a random block input, r_idx from the
    official routing (region means, scaled logits, TopK); the official core (gather + matmul +
    softmax + matmul) is the reference.
    """
    sd = torch.load(REFERENCE_DIR / "official_small_w7.pth", weights_only=True)["model"]
    gen = torch.Generator().manual_seed(7)
    s = 7
    for stage, (size, dim, topk) in enumerate(((56, 32, 1), (28, 64, 4), (14, 128, 16))):
        w = sd[f"stages.{stage}.0.attn.qkv.qkv.weight"]
        b = sd[f"stages.{stage}.0.attn.qkv.qkv.bias"]
        heads, scale = dim // 32, dim**-0.5  # head_dim 32, qk_dim = dim
        x = torch.randn(1, size, size, dim, generator=gen)
        q, k, v = torch.nn.functional.linear(x, w, b).split([dim, dim, dim], dim=-1)
        r = size // s
        q_win = q.reshape(1, s, r, s, r, dim).mean((2, 4)).reshape(1, s * s, dim)
        k_win = k.reshape(1, s, r, s, r, dim).mean((2, 4)).reshape(1, s * s, dim)
        r_idx = torch.topk((q_win * scale) @ k_win.transpose(-1, -2), k=topk, dim=-1).indices
        official = official_bra_core(q, k, v, r_idx, num_heads=heads, scale=scale)
        o = routed_attention(q, k, v, r_idx.int(), num_heads=heads, scale=scale)
        assert_close(o, official, max_abs=1e-4, msg=f"stage {stage} against the official core")


# --------------------------------------------------------------------------------------------------
# Input validation: clear one-paragraph errors that name the tensor and the fix.
# --------------------------------------------------------------------------------------------------


def _ok() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _inputs(n=1, s=2, rq=(1, 1), rk=(1, 1), c_qk=16, c_v=16, topk=2, dtype=torch.float32)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda q, k, v, r: (q.double(), k, v, r), "float32 or float16"),
        (lambda q, k, v, r: (q, k.half(), v, r), "share one dtype"),
        (lambda q, k, v, r: (q, k, v, r.long()), "r_idx.int()"),
        (lambda q, k, v, r: (q[0], k, v, r), "NHWC"),
        (lambda q, k, v, r: (q, k, v, r[:, :3]), "perfect square"),
        (lambda q, k, v, r: (q, k[..., :8], v, r), "share the channel count"),
        (lambda q, k, v, r: (q, k, v[:, :1], r), "same map"),
        (lambda q, k, v, r: (q[:, :1], k, v, r), "multiple of n_win"),
        (lambda q, k, v, r: (q, k, v, torch.zeros(1, 4, 5, dtype=torch.int32)), "topk = 5"),
        (lambda q, k, v, r: (q, k, v, r + 4), "region indices must lie in"),
        (lambda q, k, v, r: (q, k, v, r - 1), "region indices must lie in"),
        (lambda q, k, v, r: (q, k, v, torch.cat([r, r])), "batch sizes differ"),
    ],
)
def test_contract_violations_raise_clear_errors(mutate, message: str) -> None:
    q, k, v, r = mutate(*_ok())
    with pytest.raises(KernelInputError, match=message) as info:
        routed_attention(q, k, v, r, num_heads=1, scale=1.0)
    assert "\n" not in str(info.value) and str(info.value).startswith("routed_attention:")


def test_index_validation_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU calls check by default (no device sync to pay); CUDA calls only when asked or in the debug
    mode; ``False`` never checks."""
    from edge_biformer.kernels.routed import VALIDATE_ENV, _should_validate

    monkeypatch.delenv(VALIDATE_ENV, raising=False)
    assert _should_validate(None, "cpu") and not _should_validate(None, "cuda")
    assert _should_validate(True, "cuda") and not _should_validate(False, "cpu")
    monkeypatch.setenv(VALIDATE_ENV, "1")
    assert _should_validate(None, "cuda") and not _should_validate(False, "cuda")
    monkeypatch.setenv(VALIDATE_ENV, "0")
    assert not _should_validate(None, "cuda")


def test_unvalidated_out_of_range_indices_are_clamped() -> None:
    """Without the check the kernel clamps every index into [0, S*S): a defined result, no fault."""
    q, k, v, r = _inputs(n=1, s=2, rq=(2, 2), rk=(2, 2), c_qk=32, c_v=32, topk=3, dtype=torch.float32)
    wild = r.clone()
    wild[0, :, 0] = 2**30
    wild[0, :, 1] = -(2**30)
    o = routed_attention(q, k, v, wild, num_heads=2, scale=0.3, validate_indices=False)
    ref = routed_attention_reference(q, k, v, wild.clamp(0, 3), num_heads=2, scale=0.3)
    assert_close_to_contract(o, ref, torch.float32)
    with pytest.raises(KernelInputError, match=r"holds values in \[-1073741824, 1073741824\]"):
        routed_attention(q, k, v, wild, num_heads=2, scale=0.3)  # CPU default: checked


def test_heads_and_head_dim_limits() -> None:
    q, k, v, r = _ok()
    with pytest.raises(KernelInputError, match="multiple of num_heads"):
        routed_attention(q, k, v, r, num_heads=3, scale=1.0)
    big = torch.zeros(1, 2, 2, 256)
    with pytest.raises(KernelInputError, match="head dims up to 128"):
        routed_attention(big, big, big, r, num_heads=1, scale=1.0)
    # num_heads = 2 brings the head dim to 128: supported.
    o = routed_attention(big, big, big, r, num_heads=2, scale=1.0)
    assert o.shape == (1, 2, 2, 256) and torch.all(o == 0)


def test_triton_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import edge_biformer.kernels as kernels_pkg
    from edge_biformer.kernels import routed

    monkeypatch.setattr(routed, "_kernels", {})
    monkeypatch.delattr(kernels_pkg, "bra_triton", raising=False)
    monkeypatch.delitem(sys.modules, "edge_biformer.kernels.bra_triton", raising=False)
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    with pytest.raises(routed.KernelUnavailableError, match=r"pip install 'edge-biformer\[kernels\]'"):
        routed_attention(*_ok(), num_heads=1, scale=1.0)


def test_old_triton_interpreter_with_new_numpy_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton < 3.7's interpreter breaks on numpy >= 2.4: say so instead of a deep InterpreterError."""
    import numpy
    import triton

    from edge_biformer.kernels import routed

    monkeypatch.setattr(routed, "_kernels", {})
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.0")
    with pytest.raises(routed.KernelUnavailableError, match=r"triton>=3.7"):
        routed_attention(*_ok(), num_heads=1, scale=1.0)
    monkeypatch.setattr(numpy, "__version__", "2.3.5")
    routed_attention(*_ok(), num_heads=1, scale=1.0)  # older numpy: fine
