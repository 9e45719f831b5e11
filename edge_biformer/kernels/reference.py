"""Plain PyTorch implementations of the ``BiLevelRoutingAttention`` op, for tests and benchmarks.

- :func:`routed_attention_reference` evaluates the contract of ``plugins/bra/README.md`` in float64
  (by default) with the package's reference implementation.
- :func:`official_bra_core` is the attention core as the official BiFormer code computes it
  (``ops/bra_legacy.py``: expand + ``torch.gather`` of the concatenated K/V into a
  ``[N, S*S, topk, hk*wk, Cqk+Cv]`` tensor, batched matmul, softmax, matmul), in the input dtype.
  It is the baseline of ``scripts/bench_kernel.py`` and materialises the ``topk``-times copy of K/V
  that the fused kernel avoids.
"""

from __future__ import annotations

import math

import torch


def _regions(x: torch.Tensor, s: int) -> torch.Tensor:
    """``[N, H, W, C]`` -> ``[N, S*S, h*w, C]`` (regions row-major, tokens row-major inside)."""
    n, h, w, c = x.shape
    rh, rw = h // s, w // s
    return x.reshape(n, s, rh, s, rw, c).permute(0, 1, 3, 2, 4, 5).reshape(n, s * s, rh * rw, c)


def _unregions(x: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_regions` for a ``[N, S*S, h*w, C]`` tensor of an ``H x W`` map."""
    n, _, _, c = x.shape
    rh, rw = h // s, w // s
    return x.reshape(n, s, s, rh, rw, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


def routed_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r_idx: torch.Tensor,
    *,
    num_heads: int,
    scale: float,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The op evaluated in ``compute_dtype`` (returned in that dtype, on q's device).

    The package's one reference of the contract (:func:`edge_biformer.ops.bra.routed_attention_reference`)
    on inputs converted to ``compute_dtype`` (float64 by default, the yardstick for the kernel's
    float32 and float16 results). ``S`` is read from ``r_idx.shape[1]``. Repeated indices are
    gathered (and so attended) as often as they appear.
    """
    from edge_biformer.ops.bra.reference import routed_attention_reference as reference

    return reference(
        q.to(compute_dtype),
        k.to(compute_dtype),
        v.to(compute_dtype),
        r_idx,
        num_heads=num_heads,
        scale=scale,
    )


def official_bra_core(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r_idx: torch.Tensor,
    *,
    num_heads: int,
    scale: float,
) -> torch.Tensor:
    """The official BiFormer attention core (gather by expand, matmul, softmax, matmul).

    Same inputs and output as :func:`edge_biformer.kernels.routed_attention`; computed in the input
    dtype like the official module (``r_idx`` may be int32 or int64). Allocates the gathered
    ``[N, S*S, topk, hk*wk, Cqk+Cv]`` tensor.
    """
    n, hq, wq, c_qk = q.shape
    c_v = v.shape[3]
    s = math.isqrt(r_idx.shape[1])
    p2 = s * s
    topk = r_idx.shape[2]
    m = num_heads
    q_pix = _regions(q, s)  # n p2 w2 c_qk
    kv_pix = _regions(torch.cat([k, v], dim=-1), s)  # n p2 w2 (c_qk + c_v)
    w2 = kv_pix.shape[2]
    c_kv = c_qk + c_v
    # KVGather (mul_weight='none'): expand without copy, then gather the routed regions.
    kv_sel = torch.gather(
        kv_pix.view(n, 1, p2, w2, c_kv).expand(-1, p2, -1, -1, -1),
        dim=2,
        index=r_idx.long().view(n, p2, topk, 1, 1).expand(-1, -1, -1, w2, c_kv),
    )  # n p2 topk w2 c_kv
    k_sel, v_sel = kv_sel.split([c_qk, c_v], dim=-1)
    # 'n p2 k w2 (m c) -> (n p2) m c (k w2)' and '(n p2) m (k w2) c'
    k_sel = k_sel.reshape(n * p2, topk * w2, m, c_qk // m).permute(0, 2, 3, 1)
    v_sel = v_sel.reshape(n * p2, topk * w2, m, c_v // m).permute(0, 2, 1, 3)
    q_h = q_pix.reshape(n * p2, -1, m, c_qk // m).permute(0, 2, 1, 3)
    attn = torch.softmax((q_h * scale) @ k_sel, dim=-1)
    out = attn @ v_sel  # (n p2) m w2 c
    out = out.permute(0, 2, 1, 3).reshape(n, p2, -1, c_v)
    return _unregions(out, s, hq, wq)
