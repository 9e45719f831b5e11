"""Deprecated name of :mod:`edge_biformer.rewrite` (the stage is called ``rewrite`` everywhere now).

``from edge_biformer.surgery import rewrite_onnx`` keeps working, with a ``DeprecationWarning``;
new code imports :mod:`edge_biformer.rewrite`.
"""

from __future__ import annotations

import warnings

from edge_biformer.rewrite import (  # noqa: F401  (re-exported names)
    BraMatch,
    MatchResult,
    PartialMatch,
    RewriteError,
    RewriteReport,
    analyse_model,
    find_bra_blocks,
    load_onnx,
    rewrite_model,
    rewrite_onnx,
)

warnings.warn(
    "edge_biformer.surgery is deprecated: import edge_biformer.rewrite instead",
    DeprecationWarning,
    stacklevel=2,
)
