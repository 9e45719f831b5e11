"""Checks: every artifact against its reference, judged by one tolerance table.

* :func:`compare` (:mod:`.compare`): the one comparator, used by export verification, the
  rewrite's checks, the op contract and the build check;
* :data:`TOLERANCES` (:mod:`.tolerances`): the one tolerance table;
* :mod:`.runners`: running an artifact on the check inputs (onnxruntime, the CPU op, TensorRT);
* :mod:`.polygraphy_io`: Polygraphy's JSON formats, its comparator and the commands that repeat a check;
* :mod:`.report`: ``report.md`` / ``report.json``;
* :mod:`.reference`: what the check compares with (FP32 PyTorch, else the FP32 export);
* :mod:`.judge`: each artifact against the reference, output by output (the report's rows);
* :mod:`.routing`: each artifact's top-k routing against the FP32 export's;
* :mod:`.stage`: :func:`run`, the check of a build directory (``edge-biformer check``, and the last
  stage of ``edge-biformer build``).

Only the comparator and the table are imported here (the op contracts use them); the stage is
loaded on first use.
"""

from typing import Any

from edge_biformer.check.compare import Comparison, compare
from edge_biformer.check.tolerances import TOLERANCES, Tolerance, tolerance

__all__ = [
    "TOLERANCES",
    "CheckOptions",
    "Comparison",
    "NoReferenceError",
    "Tolerance",
    "compare",
    "run",
    "tolerance",
]


def __getattr__(name: str) -> Any:
    if name in ("run", "CheckOptions"):
        from edge_biformer.check import stage

        return getattr(stage, name)
    if name == "NoReferenceError":
        from edge_biformer.check.reference import NoReferenceError

        return NoReferenceError
    raise AttributeError(f"module 'edge_biformer.check' has no attribute {name!r}")
