"""The CPU implementation of ``BiLevelRoutingAttention`` that :func:`edge_biformer.cpu_session` runs.

numpy in, numpy out: the tensors onnxruntime hands to the Python custom op (float32; a float16
node is wrapped in Casts by the session, which is the op's precision contract), the node's
attributes as keyword arguments. The computation is
:func:`edge_biformer.ops.bra.reference.routed_attention_reference`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["compute", "output_shapes"]


def compute(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    r_idx: np.ndarray,
    *,
    n_win: int,
    num_heads: int,
    topk: int,
    scale: float,
    **fixed: Any,
) -> np.ndarray:
    """``o = BiLevelRoutingAttention(q, k, v, r_idx)``; the attributes must agree with the inputs.

    Raises:
        ValueError: ``r_idx`` does not have the shape the attributes say, or the inputs break the contract.
    """
    import torch

    from edge_biformer.ops.bra.reference import routed_attention_reference

    if r_idx.ndim != 3 or r_idx.shape[1] != n_win * n_win or r_idx.shape[2] != topk:
        raise ValueError(
            f"r_idx has shape {tuple(r_idx.shape)}, the attributes say "
            f"[N, n_win*n_win={n_win * n_win}, topk={topk}]"
        )
    with torch.inference_mode():
        out = routed_attention_reference(
            torch.from_numpy(np.ascontiguousarray(q)),
            torch.from_numpy(np.ascontiguousarray(k)),
            torch.from_numpy(np.ascontiguousarray(v)),
            torch.from_numpy(np.ascontiguousarray(r_idx)),
            num_heads=int(num_heads),
            scale=float(scale),
        )
    return out.numpy()


def output_shapes(q: np.ndarray, k: np.ndarray, v: np.ndarray, r_idx: np.ndarray) -> list[tuple[int, ...]]:
    """The shape of ``o``: ``[N, Hq, Wq, Cv]`` (``(1,)`` for inputs of the wrong rank)."""
    return [(*q.shape[:3], v.shape[-1]) if q.ndim == 4 and v.ndim >= 1 else (1,)]
