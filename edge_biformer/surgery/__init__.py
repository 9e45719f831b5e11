"""Graph surgery: every BRA routed attention of an ONNX graph becomes one plugin node.

``rewrite_onnx(in, out)`` is the entry point (the ``edge-biformer rewrite`` command);
:mod:`.match` finds the blocks, :mod:`.rewrite` replaces them, :mod:`.verify` checks the result.
"""

from edge_biformer.surgery.contract import OP_DOMAIN, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION
from edge_biformer.surgery.match import BraMatch, MatchResult, PartialMatch, find_bra_blocks
from edge_biformer.surgery.pipeline import (
    RewriteError,
    RewriteReport,
    analyse_model,
    load_onnx,
    rewrite_model,
    rewrite_onnx,
    write_manifest,
)

__all__ = [
    "OP_DOMAIN",
    "OP_TYPE",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "BraMatch",
    "MatchResult",
    "PartialMatch",
    "RewriteError",
    "RewriteReport",
    "analyse_model",
    "find_bra_blocks",
    "load_onnx",
    "rewrite_model",
    "rewrite_onnx",
    "write_manifest",
]
