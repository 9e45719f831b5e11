"""The fused routed-attention kernel of ``BiLevelRoutingAttention`` (Triton source).

This file is the single source of the kernel: the JIT path (CUDA tensors), the interpreter path
(CPU tensors, :func:`interpreted_kernel`) and the ahead-of-time compiler
(:mod:`edge_biformer.kernels.aot`, cubins + PTX for the TensorRT plugin) all compile exactly these
functions. It imports only ``triton`` and ``triton.language``, so the AOT step can load it without
the rest of the package.

One program computes one tile of ``BLOCK_M`` query rows of one query region of one image. The rows
hold ``HEADS_PER_TILE`` heads of ``BLOCK_M // HEADS_PER_TILE`` query tokens each: a region of 2x2
tokens fills the 16 rows of the smallest tensor-core tile with 4 heads instead of padding one head
with 12 empty rows, so the softmax, the routed-key arithmetic and the per-program overhead are paid
once for 4 heads. For each routed key chunk of ``BLOCK_N`` tokens the program computes the key
addresses once (token ``j`` is position ``j % (hk*wk)`` of region ``r_idx[n, r, j // (hk*wk)]``),
then per head of the tile ``logits += Q_h @ K_h^T`` (``Q_h``: the tile with the rows of the other
heads zero) and ``acc_h += P @ V_h``; at the end every row takes the accumulator of its own head.
Nothing is gathered into memory: the only global writes are the output tile. The softmax is the
online (flash-attention) form with a running max and sum, in float32.

Address arithmetic has no run-time division: every quotient by a run-time divisor (program id ->
tile, region -> row/column, key -> routed slot and position) is ``(umulhi(n, m) + n) >> s`` with a
multiplier ``m`` and shift ``s`` the launcher computes per divisor
(:func:`edge_biformer.kernels.launch.magic`).
Keys past the last routed token and rows past the region or the last head read valid addresses
(clamped) and are masked in the softmax or at the store, so the ``aligned`` variants (head dims
equal to the tile, ``EVEN_D``) issue unpredicated 16-byte loads.

Precision (op contract, ``plugins/bra/README.md``): products, softmax and the ``P @ V``
accumulation are float32. For float16 inputs ``Q @ K^T`` runs on the fp16 tensor cores with fp32
accumulation (fp16 x fp16 products are exact in fp32). ``P`` is float32; to feed it to the fp16
tensor cores without losing its precision it is split into ``P_hi = fp16(P)`` and
``P_lo = fp16(P - P_hi)`` and both are multiplied by ``V`` (error about 2^-22 relative instead of
2^-11 for a plain fp16 cast). For float32 inputs both products use ``input_precision="ieee"``
(no TF32).
"""

from __future__ import annotations

import types
from typing import Any

import triton
import triton.language as tl

#: Name of the kernel function inside the generated cubins / PTX.
KERNEL_NAME = "bra_fwd_kernel"

#: Run-time divisors of the kernel, each passed as a (multiplier, shift) pair ``m_<name>, s_<name>``
#: (32-bit unsigned values in int32 parameters):
#: head groups per tile row, query tiles per region, regions per image, ``n_win``, query region
#: width, key tokens per region, key region width.
DIVISORS: tuple[str, ...] = ("groups", "mtiles", "regions", "win", "wq", "tk", "wk")

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
    ("n_groups", "i32"),
    ("qk_scale", "fp32"),
    *((f"{kind}_{name}", "i32") for name in DIVISORS for kind in ("m", "s")),
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
CONSTEXPR_PARAMS: tuple[str, ...] = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "HEADS_PER_TILE", "EVEN_D")

#: The largest ``HEADS_PER_TILE`` the kernel is written for.
MAX_HEADS_PER_TILE = 4

# The kernel uses Triton builtins and the @triton.jit helpers below; reductions use tl.reduce with
# the standard library's own combine functions (what tl.max/tl.sum lower to; the interpreter maps
# them to numpy). :func:`interpreted_kernel` builds the interpreter form of the kernel and of every
# helper from the same functions, so CPU tensors run without TRITON_INTERPRET.
_MAX_COMBINE = tl.standard._elementwise_max
_SUM_COMBINE = tl.standard._sum_combine

#: log2(e): the kernel works with exp2, so the logit scale is pre-multiplied by it.
LOG2E = 1.4426950408889634


@triton.jit
def _udivmod(n, d, magic, shift):
    """``(n // d, n % d)`` for ``0 <= n < 2**31`` from the launcher's multiplier and shift of ``d``."""
    # Multiplier and shift arrive as the int32 with their bits (Python passes them signed); the JIT
    # turns an argument equal to 1 into a constant, hence tl.cast rather than the tensor method.
    nu = tl.cast(n, tl.uint32, bitcast=True)
    mu = tl.cast(magic, tl.uint32, bitcast=True)
    su = tl.cast(shift, tl.uint32, bitcast=True)
    quot = ((tl.umulhi(nu, mu) + nu) >> su).to(tl.int32, bitcast=True)
    return quot, n - quot * d


@triton.jit
def _routed_keys(
    start, n_keys, topk, tk, m_tk, s_tk, wk, m_wk, s_wk, hk, ridx_base, n_win, m_win, s_win,
    stride_kh, stride_kw, stride_vh, stride_vw, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Key tokens ``start .. start + BLOCK_N`` of the routed list: in range, and their offsets in k and v.

    Token ``j`` is position ``j % tk`` (row-major, regions of ``hk x wk``) of routed region
    ``r_idx[j // tk]``. Tokens past the end read the last routed region (valid memory; the caller
    masks them). Out-of-contract region indices are clamped into ``[0, n_win**2)``.
    """
    j = start + tl.arange(0, BLOCK_N)
    slot, pos = _udivmod(j, tk, m_tk, s_tk)
    py, px = _udivmod(pos, wk, m_wk, s_wk)
    reg = tl.load(ridx_base + tl.minimum(slot, topk - 1))
    reg = tl.minimum(tl.maximum(reg, 0), n_win * n_win - 1)
    gy, gx = _udivmod(reg, n_win, m_win, s_win)
    ky = gy * hk + py
    kx = gx * wk + px
    return j < n_keys, ky * stride_kh + kx * stride_kw, ky * stride_vh + kx * stride_vw


@triton.jit
def _load_q(ptrs, rows, d_qk, dd, EVEN_D: tl.constexpr, ALL_ROWS: tl.constexpr):
    """The query tile with the rows outside ``rows`` zero (all rows if ``ALL_ROWS``; channels past
    ``d_qk`` zero)."""
    if ALL_ROWS:
        if EVEN_D:
            return tl.load(ptrs)
        return tl.load(ptrs, mask=(dd < d_qk)[None, :], other=0.0)
    if EVEN_D:
        return tl.load(ptrs, mask=rows[:, None], other=0.0)
    return tl.load(ptrs, mask=rows[:, None] & (dd < d_qk)[None, :], other=0.0)


@triton.jit
def _qk_step(logits, q_h, k_base, koff, head, d_qk, dd, EVEN_D: tl.constexpr, FIRST: tl.constexpr):
    """``logits + q_h @ K_h^T`` for the key tile at ``koff`` of head ``head`` (``FIRST``: no addend)."""
    # Triton builds both arms of a conditional expression and the code after a static `return`:
    # static choices here are if/else statements.
    ptrs = k_base + koff[None, :] + (head * d_qk + dd)[:, None]
    if EVEN_D:  # noqa: SIM108
        k_t = tl.load(ptrs)
    else:
        k_t = tl.load(ptrs, mask=(dd < d_qk)[:, None], other=0.0)
    if q_h.dtype == tl.float16:
        if FIRST:  # noqa: SIM108
            logits = tl.dot(q_h, k_t)
        else:
            logits = tl.dot(q_h, k_t, logits)
    else:
        if FIRST:
            logits = tl.dot(q_h, k_t, input_precision="ieee")
        else:
            logits = tl.dot(q_h, k_t, logits, input_precision="ieee")
    return logits


@triton.jit
def _pv_step(acc, p_hi, p_lo, v_base, voff, head, d_v, dd, EVEN_D: tl.constexpr):
    """``acc + P @ V_h`` (``P = p_hi + p_lo`` for float16, ``p_hi`` itself for float32)."""
    ptrs = v_base + voff[:, None] + (head * d_v + dd)[None, :]
    if EVEN_D:  # noqa: SIM108
        v = tl.load(ptrs)
    else:
        v = tl.load(ptrs, mask=(dd < d_v)[None, :], other=0.0)
    if v.dtype == tl.float16:
        acc = tl.dot(p_hi, v, acc)
        acc = tl.dot(p_lo, v, acc)
    else:
        acc = tl.dot(p_hi, v, acc, input_precision="ieee")
    return acc


#: The @triton.jit helpers the kernel calls (rebuilt for the interpreter by :func:`interpreted_kernel`).
HELPERS: tuple[str, ...] = ("_udivmod", "_routed_keys", "_load_q", "_qk_step", "_pv_step")


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
    n_groups,
    qk_scale,
    m_groups,
    s_groups,
    m_mtiles,
    s_mtiles,
    m_regions,
    s_regions,
    m_win,
    s_win,
    m_wq,
    s_wq,
    m_tk,
    s_tk,
    m_wk,
    s_wk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HEADS_PER_TILE: tl.constexpr,
    EVEN_D: tl.constexpr,
):
    """One (image, query region, query tile, head group) of the routed attention; see the module doc.

    Strides are in elements (the channel stride is 1). ``hq, wq`` / ``hk, wk`` are the region sizes
    in tokens (map size / ``n_win``), ``d_qk`` / ``d_v`` the head dims, ``qk_scale`` the logit
    scale times log2(e), ``m_*``/``s_*`` the multiplier and shift of each of :data:`DIVISORS`. The
    1-D grid has ``batch * n_win**2 * n_mtiles * n_groups`` programs, the head group varying fastest
    (the heads of one token share cache lines). ``EVEN_D``: ``d_qk == d_v == BLOCK_D``.
    """
    G: tl.constexpr = HEADS_PER_TILE
    ROWS: tl.constexpr = BLOCK_M // HEADS_PER_TILE  # query tokens per head in the tile
    pid = tl.program_id(0)
    rest, group = _udivmod(pid, n_groups, m_groups, s_groups)
    rest, mtile = _udivmod(rest, n_mtiles, m_mtiles, s_mtiles)
    img, region = _udivmod(rest, n_win * n_win, m_regions, s_regions)
    ry, rx = _udivmod(region, n_win, m_win, s_win)
    tq = hq * wq
    tk = hk * wk
    n_keys = topk * tk
    head0 = group * G

    # Per-image base pointers in int64; offsets inside one image stay int32.
    img64 = img.to(tl.int64)
    k_base = k_ptr + img64 * stride_kn
    v_base = v_ptr + img64 * stride_vn
    ridx_base = ridx_ptr + (img64 * (n_win * n_win) + region) * topk

    # Row r: token mtile * ROWS + r % ROWS (row-major in the region) of head head0 + r // ROWS. Rows
    # past the region or the heads read a valid token (clamped) and are not stored.
    offs_r = tl.arange(0, BLOCK_M)
    slot_r = offs_r // ROWS
    tok = mtile * ROWS + offs_r % ROWS
    head_r = head0 + slot_r
    row_ok = (tok < tq) & (head_r < num_heads)
    ty, tx = _udivmod(tl.minimum(tok, tq - 1), wq, m_wq, s_wq)
    head_r = tl.minimum(head_r, num_heads - 1)
    qy = ry * hq + ty
    qx = rx * wq + tx
    dd = tl.arange(0, BLOCK_D)
    q_ptrs = (
        q_ptr + img64 * stride_qn + (qy * stride_qh + qx * stride_qw + head_r * d_qk)[:, None] + dd[None, :]
    )
    # One query tile per head of the tile, zero outside that head's rows (loaded once).
    q0 = _load_q(q_ptrs, slot_r == 0, d_qk, dd, EVEN_D, G == 1)
    if G > 1:
        q1 = _load_q(q_ptrs, slot_r == 1, d_qk, dd, EVEN_D, False)
    if G > 2:
        q2 = _load_q(q_ptrs, slot_r == 2, d_qk, dd, EVEN_D, False)
        q3 = _load_q(q_ptrs, slot_r == 3, d_qk, dd, EVEN_D, False)
    # The tile's heads; past the last head a tile reads the last one (its rows are not stored).
    h0 = head0
    h1 = tl.minimum(head0 + 1, num_heads - 1)
    h2 = tl.minimum(head0 + 2, num_heads - 1)
    h3 = tl.minimum(head0 + 3, num_heads - 1)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc0 = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    for start in range(0, n_keys, BLOCK_N):
        key_ok, koff, voff = _routed_keys(
            start, n_keys, topk, tk, m_tk, s_tk, wk, m_wk, s_wk, hk, ridx_base, n_win, m_win, s_win,
            stride_kh, stride_kw, stride_vh, stride_vw, BLOCK_N,
        )  # fmt: skip
        logits = _qk_step(0.0, q0, k_base, koff, h0, d_qk, dd, EVEN_D, True)
        if G > 1:
            logits = _qk_step(logits, q1, k_base, koff, h1, d_qk, dd, EVEN_D, False)
        if G > 2:
            logits = _qk_step(logits, q2, k_base, koff, h2, d_qk, dd, EVEN_D, False)
            logits = _qk_step(logits, q3, k_base, koff, h3, d_qk, dd, EVEN_D, False)
        logits = tl.where(key_ok[None, :], logits * qk_scale, float("-inf"))

        m_new = tl.maximum(m_i, tl.reduce(logits, 1, _MAX_COMBINE))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(logits - m_new[:, None])
        l_i = l_i * alpha + tl.reduce(p, 1, _SUM_COMBINE)
        if q_ptr.dtype.element_ty == tl.float16:
            p_hi = p.to(tl.float16)
            p_lo = (p - p_hi.to(tl.float32)).to(tl.float16)
        else:
            p_hi = p
            p_lo = p
        acc0 = _pv_step(acc0 * alpha[:, None], p_hi, p_lo, v_base, voff, h0, d_v, dd, EVEN_D)
        if G > 1:
            acc1 = _pv_step(acc1 * alpha[:, None], p_hi, p_lo, v_base, voff, h1, d_v, dd, EVEN_D)
        if G > 2:
            acc2 = _pv_step(acc2 * alpha[:, None], p_hi, p_lo, v_base, voff, h2, d_v, dd, EVEN_D)
            acc3 = _pv_step(acc3 * alpha[:, None], p_hi, p_lo, v_base, voff, h3, d_v, dd, EVEN_D)
        m_i = m_new

    # Every row takes the accumulator of its own head.
    acc = acc0
    if G > 1:
        acc = tl.where((slot_r == 1)[:, None], acc1, acc)
    if G > 2:
        acc = tl.where((slot_r == 2)[:, None], acc2, acc)
        acc = tl.where((slot_r == 3)[:, None], acc3, acc)
    out = acc / l_i[:, None]
    o_off = (qy * stride_oh + qx * stride_ow + head_r * d_v)[:, None] + dd[None, :]
    tl.store(
        o_ptr + img64 * stride_on + o_off,
        out.to(o_ptr.dtype.element_ty),
        mask=row_ok[:, None] & (dd < d_v)[None, :],
    )


#: The compiled (JIT / AOT) form. The interpreter form is :func:`interpreted_kernel`.
bra_fwd_kernel_jit = triton.jit(bra_fwd_kernel)


def interpreted_kernel() -> Any:
    """The kernel under Triton's interpreter (numpy on CPU tensors), built from the same functions.

    The kernel and its helpers are re-bound to one namespace in which every helper is an
    :class:`~triton.runtime.interpreter.InterpretedFunction`, whatever ``TRITON_INTERPRET`` said
    when ``triton`` was imported.
    """
    from triton.runtime.interpreter import InterpretedFunction

    namespace = dict(bra_fwd_kernel.__globals__)

    def rebind(fn: types.FunctionType) -> types.FunctionType:
        return types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)

    for name in HELPERS:
        namespace[name] = InterpretedFunction(rebind(namespace[name].fn))
    return InterpretedFunction(rebind(bra_fwd_kernel))
