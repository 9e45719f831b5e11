"""The fused routed-attention kernel of ``BiLevelRoutingAttention`` (Triton source).

This file is the single source of the kernel: the JIT path (CUDA tensors), the interpreter path
(CPU tensors) and the ahead-of-time compiler (:mod:`edge_biformer.kernels.aot`, cubins + PTX for the
TensorRT plugin) all compile exactly this function. It imports only ``triton`` and
``triton.language``, so the AOT step can load it without the rest of the package.

One program computes one tile of ``BLOCK_M`` query tokens of one query region, for one head and one
image. It reads the query tile once, then walks the ``topk * hk * wk`` routed key/value tokens in
chunks of ``BLOCK_N``: the token ``j`` of the chunk belongs to the routed region
``r_idx[n, r, j // (hk*wk)]`` and sits at position ``j % (hk*wk)`` (row-major) inside it, so its
address in the NHWC ``k``/``v`` maps is computed from the index on the fly. Nothing is gathered
into memory: the only global writes are the output tile. The softmax is the online
(flash-attention) form with a running max and sum, in float32.

Precision (op contract, ``plugins/bra/README.md``): products, softmax and the ``P @ V``
accumulation are float32. For float16 inputs ``Q @ K^T`` runs on the fp16 tensor cores with fp32
accumulation (fp16 x fp16 products are exact in fp32). ``P`` is float32; to feed it to the fp16
tensor cores without losing its precision it is split into ``P_hi = fp16(P)`` and
``P_lo = fp16(P - P_hi)`` and both are multiplied by ``V`` (error about 2^-22 relative instead of
2^-11 for a plain fp16 cast). For float32 inputs both products use ``input_precision="ieee"``
(no TF32).
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Name of the kernel function inside the generated cubins / PTX.
KERNEL_NAME = "bra_fwd_kernel"

#: Positional parameters of the kernel that are real (run-time) kernel arguments, in order. The
#: AOT launcher passes exactly these (plus Triton's hidden scratch pointers).
RUNTIME_PARAMS: tuple[tuple[str, str], ...] = (
    ("q_ptr", "ptr"),
    ("k_ptr", "ptr"),
    ("v_ptr", "ptr"),
    ("ridx_ptr", "*i32"),
    ("o_ptr", "ptr"),
    ("stride_qn", "i32"),
    ("stride_qh", "i32"),
    ("stride_qw", "i32"),
    ("stride_kn", "i32"),
    ("stride_kh", "i32"),
    ("stride_kw", "i32"),
    ("stride_vn", "i32"),
    ("stride_vh", "i32"),
    ("stride_vw", "i32"),
    ("stride_on", "i32"),
    ("stride_oh", "i32"),
    ("stride_ow", "i32"),
    ("n_win", "i32"),
    ("hq", "i32"),
    ("wq", "i32"),
    ("hk", "i32"),
    ("wk", "i32"),
    ("d_qk", "i32"),
    ("d_v", "i32"),
    ("num_heads", "i32"),
    ("topk", "i32"),
    ("n_mtiles", "i32"),
    ("qk_scale", "fp32"),
)

#: Runtime parameters that the ``aligned`` variants assume to be multiples of 16 (elements for the
#: integers, bytes for the pointers).
ALIGNED_PARAMS: tuple[str, ...] = (
    "q_ptr",
    "k_ptr",
    "v_ptr",
    "o_ptr",
    "stride_qn",
    "stride_qh",
    "stride_qw",
    "stride_kn",
    "stride_kh",
    "stride_kw",
    "stride_vn",
    "stride_vh",
    "stride_vw",
    "stride_on",
    "stride_oh",
    "stride_ow",
    "d_qk",
    "d_v",
)

#: Compile-time (``tl.constexpr``) parameters, in order.
CONSTEXPR_PARAMS: tuple[str, ...] = ("BLOCK_M", "BLOCK_N", "BLOCK_DQK", "BLOCK_DV")

# The kernel uses only Triton builtins (no @triton.jit helpers such as tl.zeros/tl.max/tl.sum), so
# the same Python function runs under the interpreter whether or not TRITON_INTERPRET was set when
# triton was imported. Reductions use tl.reduce with the standard library's own combine functions:
# that is exactly what tl.max/tl.sum lower to, and the interpreter maps them to numpy max/sum.
_MAX_COMBINE = tl.standard._elementwise_max
_SUM_COMBINE = tl.standard._sum_combine

#: log2(e): the kernel works with exp2, so the logit scale is pre-multiplied by it.
LOG2E = 1.4426950408889634


def bra_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    ridx_ptr,
    o_ptr,
    stride_qn,
    stride_qh,
    stride_qw,
    stride_kn,
    stride_kh,
    stride_kw,
    stride_vn,
    stride_vh,
    stride_vw,
    stride_on,
    stride_oh,
    stride_ow,
    n_win,
    hq,
    wq,
    hk,
    wk,
    d_qk,
    d_v,
    num_heads,
    topk,
    n_mtiles,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """One (image, query region, query tile, head) of the routed attention; see the module doc.

    Strides are in elements (the channel stride is 1). ``hq, wq`` / ``hk, wk`` are the region sizes
    in tokens (map size / ``n_win``), ``d_qk`` / ``d_v`` the head dims, ``qk_scale`` the logit
    scale times log2(e). The 1-D grid has ``batch * n_win**2 * n_mtiles * num_heads`` programs,
    the head varying fastest (the heads of one token share cache lines).
    """
    pid = tl.program_id(0)
    head = pid % num_heads
    rest = pid // num_heads
    mtile = rest % n_mtiles
    rest = rest // n_mtiles
    n_reg = n_win * n_win
    region = rest % n_reg
    img = rest // n_reg

    tq = hq * wq
    tk = hk * wk
    n_keys = topk * tk

    # Per-image base pointers in int64; offsets inside one image stay int32.
    img64 = img.to(tl.int64)
    q_base = q_ptr + img64 * stride_qn + head * d_qk
    k_base = k_ptr + img64 * stride_kn + head * d_qk
    v_base = v_ptr + img64 * stride_vn + head * d_v
    o_base = o_ptr + img64 * stride_on + head * d_v
    ridx_base = ridx_ptr + (img64 * n_reg + region) * topk

    # Query tile: tokens mtile*BLOCK_M .. of the region, row-major inside the region.
    offs_m = mtile * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < tq
    qy = (region // n_win) * hq + offs_m // wq
    qx = (region % n_win) * wq + offs_m % wq
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    dqk_mask = offs_dqk < d_qk
    dv_mask = offs_dv < d_v
    q = tl.load(
        q_base + (qy * stride_qh + qx * stride_qw)[:, None] + offs_dqk[None, :],
        mask=m_mask[:, None] & dqk_mask[None, :],
        other=0.0,
    )

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_DV], 0.0, tl.float32)
    last_region = n_reg - 1

    for start in range(0, n_keys, BLOCK_N):
        # Routed key token j: slot j // tk of r_idx, position j % tk (row-major) in that region.
        offs_n = start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < n_keys
        slot = offs_n // tk
        pos = offs_n - slot * tk
        reg = tl.load(ridx_base + slot, mask=n_mask, other=0)
        # Out-of-contract indices never fault: they are clamped into [0, S*S).
        reg = tl.minimum(tl.maximum(reg, 0), last_region)
        ky = (reg // n_win) * hk + pos // wk
        kx = (reg % n_win) * wk + pos % wk

        k_t = tl.load(
            k_base + (ky * stride_kh + kx * stride_kw)[None, :] + offs_dqk[:, None],
            mask=dqk_mask[:, None] & n_mask[None, :],
            other=0.0,
        )
        if q_ptr.dtype.element_ty == tl.float16:
            logits = tl.dot(q, k_t)
        else:
            logits = tl.dot(q, k_t, input_precision="ieee")
        logits = logits * qk_scale
        logits = tl.where(n_mask[None, :], logits, float("-inf"))

        m_new = tl.maximum(m_i, tl.reduce(logits, 1, _MAX_COMBINE))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(logits - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, _SUM_COMBINE)
        acc = acc * alpha[:, None]

        v_tile = tl.load(
            v_base + (ky * stride_vh + kx * stride_vw)[:, None] + offs_dv[None, :],
            mask=n_mask[:, None] & dv_mask[None, :],
            other=0.0,
        )
        if q_ptr.dtype.element_ty == tl.float16:
            p_hi = p.to(tl.float16)
            p_lo = (p - p_hi.to(tl.float32)).to(tl.float16)
            acc = tl.dot(p_hi, v_tile, acc)
            acc = tl.dot(p_lo, v_tile, acc)
        else:
            acc = tl.dot(p, v_tile, acc, input_precision="ieee")
        m_i = m_new

    out = acc / l_i[:, None]
    qy_o = qy * stride_oh + qx * stride_ow
    tl.store(
        o_base + qy_o[:, None] + offs_dv[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=m_mask[:, None] & dv_mask[None, :],
    )


#: The compiled (JIT / AOT) form. The interpreter form is built on demand by
#: :func:`edge_biformer.kernels.routed_attention` from the same Python function, so the
#: ``TRITON_INTERPRET`` environment variable is not needed to run on CPU tensors.
bra_fwd_kernel_jit = triton.jit(bra_fwd_kernel)
