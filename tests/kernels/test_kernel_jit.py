"""The JIT path's specialisation, compiled without a GPU.

On CUDA tensors Triton's JIT specialises the integer arguments of each call (a value equal to 1
becomes a compile-time constant, multiples of 16 get divisibility hints) before it compiles. The
AOT step never sees those forms, so this test builds them the way ``JITFunction.run`` does (its
binder and argument packing, for an sm_90 target instead of the current device) from the launch
plans of real calls and compiles them: BiFormer-T/S/B stage shapes and odd contract shapes, fp16 and
fp32.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the JIT path needs Triton")

from edge_biformer.kernels import bra_triton
from edge_biformer.kernels.routed import plan_for
from edge_biformer.kernels.shapes import stage_shapes
from tests.bra_cases import CASES, make_inputs

SHAPES = [sh.geometry(1) for sh in stage_shapes(["cls224"], ["T/S", "B"])]
ODD = ["s2_r3x5_d24_40", "s4_r1_d128_ties", "odd_channels_repeat", "s8_r2x1_d64_rev"]


def _jit_compile(q, k, v, r_idx, num_heads: int, scale: float, arch: int = 90):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    o = torch.empty((*q.shape[:3], v.shape[3]), dtype=q.dtype)
    plan = plan_for(q, k, v, r_idx, o, num_heads=num_heads, scale=scale)
    jit = bra_triton.bra_fwd_kernel_jit
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    var = plan.variant
    kwargs = dict(var.constexprs, num_warps=var.num_warps, num_stages=var.num_stages, enable_fp_fusion=True)
    bound, specialization, options = binder(q, k, v, r_idx, o, *plan.scalar_args(), **kwargs)
    options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, specialization, options)
    src = ASTSource(jit, signature, constexprs, attrs)
    compiled = triton.compile(src, target=target, options=options.__dict__)
    return plan, signature, compiled


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_jit_specialisations_of_real_calls_compile(dtype: torch.dtype) -> None:
    calls = []
    for g in SHAPES:
        case = dict(n=1, n_win=g.n_win, hq=g.hq, wq=g.wq, hk=g.hk, wk=g.wk, c_qk=g.c_qk, c_v=g.c_v,
                    num_heads=g.num_heads, topk=g.topk, scale=g.c_qk**-0.5)  # fmt: skip
        calls.append(case)
    calls += [CASES[name] for name in ODD]
    constant_ones = 0
    for case in calls:
        q, k, v, r_idx = make_inputs(case, dtype)
        _, signature, compiled = _jit_compile(q, k, v, r_idx, case["num_heads"], case["scale"])
        assert compiled.metadata.name == bra_triton.KERNEL_NAME
        counts = [
            name for name, ty in signature.items() if ty == "constexpr" and name.startswith(("m_", "n_"))
        ]
        constant_ones += len(counts)
    assert constant_ones > 0  # the multipliers and counts equal to 1 were compiled as constants
