"""Test helpers for users and for the project's own tests: :func:`assert_close` with the library's comparator.

from edge_biformer.testing import assert_close
assert_close(out, ref, max_rel=1e-4)                 # max|out - ref| / max|ref| <= 1e-4
assert_close(out, ref, "export")                     # an entry of edge_biformer.check.TOLERANCES
assert_close(o, ref64, CONTRACT.tolerance("fp16"))   # the op contract's tolerance
"""

from __future__ import annotations

from typing import Any

from edge_biformer.check.compare import Comparison, compare
from edge_biformer.check.tolerances import Tolerance

__all__ = ["assert_close"]


def assert_close(
    actual: Any,
    expected: Any,
    tolerance: Tolerance | str | None = None,
    *,
    max_abs: float | None = None,
    max_rel: float | None = None,
    msg: str = "",
) -> Comparison:
    """Assert that ``actual`` matches ``expected`` (arrays, torch tensors, batches or output mappings).

    Give a tolerance (an entry of the table, its name, or an op contract's) or the bounds
    ``max_abs`` / ``max_rel`` directly. NaN or Inf on either side always fails. Returns the
    comparison (its numbers, for further assertions).

    Raises:
        AssertionError: with the failed criteria and the numbers.
    """
    if tolerance is None:
        if max_abs is None and max_rel is None:
            raise ValueError("assert_close needs a tolerance, max_abs or max_rel")
        tolerance = Tolerance("assert_close", max_abs=max_abs, max_rel=max_rel)
    elif max_abs is not None or max_rel is not None:
        raise ValueError("give either a tolerance or max_abs/max_rel, not both")
    result = compare(actual, expected, tolerance)
    if not result.passed:
        prefix = f"{msg}: " if msg else ""
        raise AssertionError(f"{prefix}{'; '.join(result.failures)} ({result.summary()})")
    return result
