"""The rewrite stage: every BRA routed attention of an ONNX graph becomes one plugin node.

:func:`run` (``edge-biformer rewrite``; :func:`rewrite_onnx` is its Python form) is the entry
point. :mod:`.match` finds the blocks (with the walks of :mod:`.trace` over the helpers of
:mod:`.graph`), :mod:`.checks` checks them, :mod:`.replace` replaces them, :mod:`.report` sums up.
"""

from edge_biformer.rewrite.match import BraMatch, MatchResult, PartialMatch, find_bra_blocks
from edge_biformer.rewrite.report import RewriteReport
from edge_biformer.rewrite.stage import (
    RewriteError,
    RewriteOptions,
    Rewriter,
    analyse_model,
    load_onnx,
    rewrite_model,
    rewrite_onnx,
    run,
)

__all__ = [
    "BraMatch",
    "MatchResult",
    "PartialMatch",
    "RewriteError",
    "RewriteOptions",
    "RewriteReport",
    "Rewriter",
    "analyse_model",
    "find_bra_blocks",
    "load_onnx",
    "rewrite_model",
    "rewrite_onnx",
    "run",
]
