"""Reference implementation of the ``BiLevelRoutingAttention`` op (semantics: ``plugins/bra/README.md``).

This is the executable form of the op contract: the CPU custom op of :func:`edge_biformer.cpu_session`
calls it, and the kernels and the TensorRT plugin are tested against it.

It never builds the gathered keys/values of all query regions at once (that tensor is ``topk``
times the size of ``k``/``v``): query regions are processed in chunks whose gathered K/V stay
under a fixed element budget. float16 inputs are computed in float32 (products, softmax and the
``P @ V`` accumulation) and only the output is rounded to float16, as the contract specifies.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["DEFAULT_CHUNK_ELEMENTS", "check_routed_attention_inputs", "routed_attention_reference"]

#: Upper bound on the elements of the gathered K (or V) of one chunk of query regions.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_routed_attention_inputs(q: Tensor, k: Tensor, v: Tensor, r_idx: Tensor, *, num_heads: int) -> int:
    """Check shapes, dtypes and index range against the op contract; return ``S`` (``n_win``).

    Raises:
        ValueError: with a message naming the violated constraint.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k and v must be NHWC (rank 4); got ranks {q.dim()}, {k.dim()}, {v.dim()}")
    if r_idx.dim() != 3:
        raise ValueError(f"r_idx must be [N, S*S, topk]; got shape {tuple(r_idx.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.float64):
        raise ValueError(
            f"q, k, v must share one float dtype (float32/float16); got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if r_idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"r_idx must be int32; got {r_idx.dtype}")
    n, hq, wq, c_qk = q.shape
    nk, hk, wk, c_k = k.shape
    nv, hv, wv, c_v = v.shape
    if not (n == nk == nv == r_idx.shape[0]):
        raise ValueError(f"batch sizes differ: q {n}, k {nk}, v {nv}, r_idx {r_idx.shape[0]}")
    if c_k != c_qk:
        raise ValueError(f"q and k must have the same channels; got {c_qk} and {c_k}")
    if (hv, wv) != (hk, wk):
        raise ValueError(f"k and v must have the same H, W; got {(hk, wk)} and {(hv, wv)}")
    regions = r_idx.shape[1]
    s = math.isqrt(regions)
    if s * s != regions or s < 1:
        raise ValueError(f"r_idx.shape[1] must be S*S (a square); got {regions}")
    for name, size in (("Hq", hq), ("Wq", wq), ("Hk", hk), ("Wk", wk)):
        if size % s or size == 0:
            raise ValueError(f"{name}={size} is not a positive multiple of n_win={s}")
    if num_heads < 1 or c_qk % num_heads or c_v % num_heads:
        raise ValueError(f"Cqk={c_qk} and Cv={c_v} must be divisible by num_heads={num_heads}")
    topk = r_idx.shape[2]
    if not 1 <= topk <= regions:
        raise ValueError(f"topk={topk} must be in [1, S*S={regions}]")
    if r_idx.numel():
        lo, hi = int(r_idx.min()), int(r_idx.max())
        if lo < 0 or hi >= regions:
            raise ValueError(f"r_idx values must lie in [0, {regions}); got min {lo}, max {hi}")
    return s


def _to_region_heads(x: Tensor, s: int, num_heads: int) -> Tensor:
    """(N, H, W, C) -> (N, S*S, M, h*w, C/M): region-major, head-major channels."""
    n, height, width, channels = x.shape
    h, w = height // s, width // s
    x = x.reshape(n, s, h, s, w, num_heads, channels // num_heads)
    x = x.permute(0, 1, 3, 5, 2, 4, 6)  # n, j, i, m, hh, ww, d
    return x.reshape(n, s * s, num_heads, h * w, channels // num_heads)


def routed_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    r_idx: Tensor,
    *,
    num_heads: int,
    scale: float,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tensor:
    """``o = BiLevelRoutingAttention(q, k, v, r_idx)`` as the op contract defines it.

    Args:
        q: ``[N, Hq, Wq, Cqk]`` float32/float16 (float64 is accepted for tests).
        k: ``[N, Hk, Wk, Cqk]``, same dtype.
        v: ``[N, Hk, Wk, Cv]``, same dtype.
        r_idx: ``[N, S*S, topk]`` int32 (int64 accepted): routed key/value regions per query region.
        num_heads: heads; channels are split head-major.
        scale: logit scale (``softmax(scale * q . k)``).
        chunk_elements: bound on the gathered K (or V) elements held at once.

    Returns:
        ``o``: ``[N, Hq, Wq, Cv]`` in the dtype of ``q``.
    """
    s = check_routed_attention_inputs(q, k, v, r_idx, num_heads=num_heads)
    n, hq, wq, _ = q.shape
    c_v = v.shape[-1]
    out_dtype = q.dtype
    work = _compute_dtype(q.dtype)
    regions, topk = s * s, r_idx.shape[2]
    m = num_heads

    qr = _to_region_heads(q.to(work), s, m)  # (N, R, M, Tq, dqk)
    kr = _to_region_heads(k.to(work), s, m)  # (N, R, M, Tk, dqk)
    vr = _to_region_heads(v.to(work), s, m)  # (N, R, M, Tk, dv)
    tq, tk, dv = qr.shape[3], kr.shape[3], vr.shape[4]
    idx = r_idx.to(torch.int64)
    batch = torch.arange(n, device=q.device).reshape(n, 1, 1)

    # Per query region: the gathered K and V (topk * Tk * (Cqk + Cv)) and the logits (M * Tq * topk * Tk).
    per_region = max(1, n * topk * tk * (kr.shape[2] * kr.shape[4] + m * dv + m * tq))
    chunk = max(1, min(regions, chunk_elements // per_region))
    out = torch.empty((n, regions, m, tq, dv), dtype=work, device=q.device)
    for r0 in range(0, regions, chunk):
        r1 = min(regions, r0 + chunk)
        sel = idx[:, r0:r1, :]  # (N, c, K)
        k_sel = kr[batch, sel]  # (N, c, K, M, Tk, dqk)
        v_sel = vr[batch, sel]  # (N, c, K, M, Tk, dv)
        c = r1 - r0
        k_sel = k_sel.permute(0, 1, 3, 2, 4, 5).reshape(n, c, m, topk * tk, qr.shape[4])
        v_sel = v_sel.permute(0, 1, 3, 2, 4, 5).reshape(n, c, m, topk * tk, dv)
        logits = (qr[:, r0:r1] @ k_sel.transpose(-2, -1)) * scale  # (N, c, M, Tq, K*Tk)
        out[:, r0:r1] = torch.softmax(logits, dim=-1) @ v_sel

    hh, ww = hq // s, wq // s
    out = out.reshape(n, s, s, m, hh, ww, dv).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(n, hq, wq, c_v).to(out_dtype)
