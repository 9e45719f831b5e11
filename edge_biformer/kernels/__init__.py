"""Fused kernels: the routed attention of ``BiLevelRoutingAttention`` without a gathered K/V copy.

Public API::

    from edge_biformer.kernels import routed_attention
    o = routed_attention(q, k, v, r_idx, num_heads=2, scale=64 ** -0.5)

- :func:`routed_attention`: the op of ``plugins/bra/README.md`` on torch tensors: the Triton kernel
  on CUDA tensors, the same kernel under Triton's interpreter on CPU tensors.
- :func:`routed_attention_reference`: a plain PyTorch evaluation of the contract (float64 by
  default), for tests and checks.
- ``python -m edge_biformer.kernels.aot``: ahead-of-time compilation to cubins + PTX and the C
  launcher of ``plugins/bra/bra_launch.h`` (see ``docs/kernel.md``).

Importing this package needs neither Triton nor a GPU; Triton (the ``kernels`` extra) is imported
on the first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "KernelInputError",
    "KernelUnavailableError",
    "official_bra_core",
    "routed_attention",
    "routed_attention_reference",
]

if TYPE_CHECKING:
    from edge_biformer.kernels.reference import official_bra_core, routed_attention_reference
    from edge_biformer.kernels.routed import KernelInputError, KernelUnavailableError, routed_attention

_LAZY = {
    "routed_attention": "edge_biformer.kernels.routed",
    "KernelInputError": "edge_biformer.kernels.routed",
    "KernelUnavailableError": "edge_biformer.kernels.routed",
    "routed_attention_reference": "edge_biformer.kernels.reference",
    "official_bra_core": "edge_biformer.kernels.reference",
}


def __getattr__(name: str) -> Any:
    # Lazy: importing the package does not import torch or triton.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_biformer.kernels' has no attribute {name!r}")
