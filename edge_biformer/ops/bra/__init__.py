"""The ``BiLevelRoutingAttention`` op: its contract, its reference and its CPU implementation.

* :data:`CONTRACT`: ``BiLevelRoutingAttention.json`` loaded (identity, attributes, tolerances, cases);
* :mod:`.reference`: the executable form of the semantics in PyTorch
  (:func:`routed_attention_reference`), which the CPU op runs and every other implementation is
  tested against;
* :mod:`.cpu`: the op's body for :func:`edge_biformer.cpu_session` (numpy in, numpy out).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_biformer.ops.contract import OpContract

__all__ = ["CONTRACT", "check_routed_attention_inputs", "routed_attention_reference"]

#: The op's contract (``BiLevelRoutingAttention.json`` beside this file).
CONTRACT = OpContract.load(Path(__file__).with_name("BiLevelRoutingAttention.json"))

if TYPE_CHECKING:
    from edge_biformer.ops.bra.reference import check_routed_attention_inputs, routed_attention_reference


def __getattr__(name: str) -> Any:
    # Lazy: the contract is needed without torch (the CLI, the rewrite); the reference imports torch.
    if name in ("routed_attention_reference", "check_routed_attention_inputs"):
        from edge_biformer.ops.bra import reference

        return getattr(reference, name)
    raise AttributeError(f"module 'edge_biformer.ops.bra' has no attribute {name!r}")
