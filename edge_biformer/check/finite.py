"""NaN and Inf in weights are an error, named, before any stage works on them.

A model whose weights hold NaN or Inf (a diverged training run, a corrupted checkpoint) produces
NaN logits; compared with itself it would even "match". Every stage that takes weights checks them
first: the export (the PyTorch parameters and buffers), the quantize and rewrite stages (the ONNX
initializers) and the accuracy check (its reference).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from edge_biformer.errors import EdgeBiformerError

__all__ = [
    "NonFiniteError",
    "nonfinite_initializers",
    "nonfinite_tensors",
    "require_finite_initializers",
    "require_finite_module",
]

#: How many offending tensors an error message names.
_NAMED = 5


class NonFiniteError(EdgeBiformerError):
    """Weights (or reference outputs) that hold NaN or Inf."""


def nonfinite_tensors(
    named: Iterable[tuple[str, Any]], *, inf_scalars: bool = False
) -> list[tuple[str, int, int]]:
    """``(name, non-finite count, size)`` of each floating tensor with NaN or Inf (numpy or torch).

    ``inf_scalars``: accept +-Inf in one-element tensors (a graph's ``-inf`` fill value of a mask).
    """
    found = []
    for name, value in named:
        if hasattr(value, "detach"):  # a torch tensor, without importing torch here
            if not value.is_floating_point():
                continue
            value = value.detach().float().cpu().numpy()
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
            continue
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if inf_scalars and array.size == 1 and not np.isnan(array).any():
            bad = 0
        if bad:
            found.append((name, bad, int(array.size)))
    return found


def describe(found: list[tuple[str, int, int]]) -> str:
    """``a (3 of 96 values), b (all 16 values) and 2 more``."""
    parts = [
        f"{n} ({'all ' + str(size) if bad == size else f'{bad} of {size}'} values)" for n, bad, size in found
    ]
    more = f" and {len(parts) - _NAMED} more" if len(parts) > _NAMED else ""
    return ", ".join(parts[:_NAMED]) + more


def require_finite_module(model: Any, what: str) -> None:
    """Raise :class:`NonFiniteError` naming the parameters/buffers of ``model`` with NaN/Inf."""
    found = nonfinite_tensors([*model.named_parameters(), *model.named_buffers()])
    if found:
        raise NonFiniteError(
            f"{what} has NaN/Inf in {len(found)} weight tensor(s): {describe(found)}. Its outputs would be "
            "NaN, and no check can judge them: use a checkpoint from a training run that did not diverge "
            "(or re-download it, if the file is corrupted)"
        )


def nonfinite_initializers(model: Any) -> list[tuple[str, int, int]]:
    """The initializers (and Constant nodes) of an ONNX model that hold NaN or Inf.

    NaN anywhere counts; Inf not in a one-element constant (a ``-inf`` mask fill value is legitimate).
    """
    from onnx import numpy_helper

    def tensors() -> Iterable[tuple[str, np.ndarray]]:
        for init in model.graph.initializer:
            yield init.name, numpy_helper.to_array(init)
        for node in model.graph.node:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.t is not None:
                        yield node.output[0], numpy_helper.to_array(attr.t)

    return nonfinite_tensors(tensors(), inf_scalars=True)


def require_finite_initializers(
    model: Any, path: Any, error: type[EdgeBiformerError] = NonFiniteError
) -> None:
    """Raise ``error`` naming the initializers of the ONNX ``model`` (read from ``path``) with NaN/Inf."""
    found = nonfinite_initializers(model)
    if found:
        raise error(
            f"{path} has NaN/Inf in {len(found)} initializer(s): {describe(found)}. Every output of the "
            "graph would be NaN: export it again from weights without NaN/Inf"
        )
