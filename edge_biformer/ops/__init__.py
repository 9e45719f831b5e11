"""Custom ops the graph rewrite introduces: one folder per op with its contract, reference and CPU op.

:data:`OPS` lists them; :func:`edge_biformer.cpu_session` runs every op of this list on the CPU,
:mod:`edge_biformer.plugins` finds their TensorRT creators by the identity in their contracts. A new
op is a folder ``ops/<op>/`` (its ``<Name>.json`` contract, ``reference.py``, ``cpu.py``) plus one
entry here; see docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_biformer.ops import bra
from edge_biformer.ops.bra import cpu as bra_cpu
from edge_biformer.ops.contract import OpContract

__all__ = ["OPS", "Op", "check_routed_attention_inputs", "find_op", "routed_attention_reference"]


@dataclass(frozen=True)
class Op:
    """A custom op: its contract and its CPU implementation.

    ``cpu_kernel(*inputs, **attributes)`` computes the outputs from numpy inputs;
    ``cpu_output_shapes(*inputs)`` gives their shapes without computing (what the CPU session
    returns, filled with NaN, when the kernel fails: see :mod:`edge_biformer.runtime.cpu`).
    """

    contract: OpContract
    cpu_kernel: Callable[..., Any]
    cpu_output_shapes: Callable[..., list[tuple[int, ...]]]


#: Every custom op of the package.
OPS: tuple[Op, ...] = (Op(bra.CONTRACT, bra_cpu.compute, bra_cpu.output_shapes),)


def find_op(node: Any) -> Op | None:
    """The op of an ONNX/onnx-graphsurgeon node, or ``None`` for a standard node."""
    return next((op for op in OPS if op.contract.is_node(node)), None)


if TYPE_CHECKING:
    from edge_biformer.ops.bra.reference import check_routed_attention_inputs, routed_attention_reference


def __getattr__(name: str) -> Any:
    if name in ("routed_attention_reference", "check_routed_attention_inputs"):
        return getattr(bra, name)
    raise AttributeError(f"module 'edge_biformer.ops' has no attribute {name!r}")
