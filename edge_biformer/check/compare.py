"""The one comparator of the library: outputs of an artifact against the outputs of its reference.

:func:`compare` measures (in float64) and judges with an entry of the tolerance table
(:mod:`edge_biformer.check.tolerances`). Export verification, the rewrite's per-block and
whole-graph checks, the op contract (:meth:`edge_biformer.ops.contract.OpContract.within_contract`),
the build check and :func:`edge_biformer.testing.assert_close` all call it, so "max relative
difference" means the same everywhere: ``max |actual - expected| / max |expected|``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from edge_biformer.check.tolerances import Tolerance, tolerance

__all__ = [
    "Comparison",
    "agreement_upper_bound",
    "compare",
    "failing_agreement",
    "samples_to_resolve",
    "to_numpy",
]


@dataclass
class Comparison:
    """What :func:`compare` measured, and its verdict.

    ``max_rel_diff`` is ``max |actual - expected| / max |expected|``; ``max_elementwise_rel_diff`` is
    ``max(|actual - expected| / |expected|)`` (Polygraphy's relative error). The classifier numbers
    are set for 2-D ``[samples, classes]`` outputs when the tolerance judges them.
    """

    tolerance: str
    #: The criteria of the tolerance that applied (``{"max_rel": 1e-4}``...).
    limits: dict[str, float] = field(default_factory=dict)
    passed: bool = True
    failures: list[str] = field(default_factory=list)
    max_abs_diff: float = 0.0
    mean_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    max_elementwise_rel_diff: float = 0.0
    expected_scale: float = 0.0
    nonfinite: int = 0
    samples: int = 0
    min_cosine: float | None = None
    mean_cosine: float | None = None
    top1_agreement: float | None = None
    top5_agreement: float | None = None
    top1_accuracy: float | None = None
    #: Per output name (mapping inputs): max abs and max relative difference.
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    #: What the numbers cannot show (e.g. too few samples to judge an agreement rule closely).
    notes: list[str] = field(default_factory=list)

    def fail(self, reason: str) -> None:
        """Record a failed criterion."""
        self.failures.append(reason)
        self.passed = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (infinities and NaN become ``None``)."""
        return {k: _finite(v) for k, v in asdict(self).items()}

    def summary(self) -> str:
        """One line: the numbers and the verdict."""
        parts = [f"max abs diff {self.max_abs_diff:.3e}", f"max rel diff {self.max_rel_diff:.3e}"]
        if self.min_cosine is not None:
            parts.append(f"cos min {self.min_cosine:.5f}")
        if self.top1_agreement is not None:
            parts.append(f"top-1 agree {self.top1_agreement:.2%}")
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)
        return "  ".join(parts) + f": {verdict}"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array of ``value``: an array, a torch tensor, or a sequence of batches (concatenated)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # torch.Tensor, without importing torch
        return value.detach().cpu().numpy()
    if isinstance(value, Sequence) and value and not isinstance(value, (str, bytes)):
        parts = [to_numpy(v) for v in value]
        if all(isinstance(p, np.ndarray) and p.ndim >= 1 for p in parts):
            return np.concatenate(parts) if len(parts) > 1 else parts[0]
    return np.asarray(value)


def _topk(values: np.ndarray, k: int) -> np.ndarray:
    k = min(k, values.shape[1])
    return np.argsort(-values, axis=1, kind="stable")[:, :k]


def _cosine(result: Comparison, actual: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample cosine similarity of the flattened outputs (min and mean into ``result``)."""
    ref = expected.reshape(expected.shape[0], -1).astype(np.float64)
    out = actual.reshape(actual.shape[0], -1).astype(np.float64)
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cosine = (ref * out).sum(1) / np.maximum(denom, 1e-30)
    # Two all-zero samples point the same way (a ReLU map that is zero for an image).
    cosine[(denom == 0) & (np.abs(ref).sum(1) == 0) & (np.abs(out).sum(1) == 0)] = 1.0
    result.min_cosine = float(cosine.min())
    result.mean_cosine = float(cosine.mean())
    return ref, out


def _classification(result: Comparison, actual: np.ndarray, expected: np.ndarray, labels: Any) -> None:
    ref, out = _cosine(result, actual, expected)
    ref_top1 = ref.argmax(1)
    result.top1_agreement = float((out.argmax(1) == ref_top1).mean())
    result.top5_agreement = float((_topk(out, 5) == ref_top1[:, None]).any(1).mean())
    if labels is not None:
        result.top1_accuracy = float((out.argmax(1) == np.asarray(labels)).mean())


def _measure(
    result: Comparison, name: str | None, actual: np.ndarray, expected: np.ndarray
) -> tuple[float, float]:
    """Add one output's numbers to ``result``; returns (max abs diff, max |expected|)."""
    label = f"output '{name}': " if name else ""
    if actual.shape != expected.shape:
        result.fail(
            f"{label}shape {tuple(actual.shape)} differs from the reference's {tuple(expected.shape)}"
        )
        return math.inf, 0.0
    if not np.issubdtype(expected.dtype, np.floating) and not np.issubdtype(actual.dtype, np.floating):
        if not np.array_equal(actual, expected):
            result.fail(f"{label}integer values differ from the reference's")
            return math.inf, 0.0
        if name is not None:
            result.outputs[name] = {"max_abs_diff": 0.0, "max_rel_diff": 0.0}
        return 0.0, 0.0
    a = actual.astype(np.float64, copy=False)
    e = expected.astype(np.float64, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(a)) + np.count_nonzero(~np.isfinite(e)))
    if bad:
        result.nonfinite += bad
        where = (
            "the reference and the artifact"
            if not np.isfinite(e).all() and not np.isfinite(a).all()
            else ("the reference" if not np.isfinite(e).all() else "the artifact's output")
        )
        result.fail(f"{label}{bad} NaN/Inf values in {where}")
        return math.inf, math.inf
    if not e.size:
        return 0.0, 0.0
    diff = np.abs(a - e)
    max_abs = float(diff.max())
    scale = float(np.abs(e).max())
    result.mean_abs_diff = max(result.mean_abs_diff, float(diff.mean()))
    result.max_elementwise_rel_diff = max(
        result.max_elementwise_rel_diff, float((diff / np.maximum(np.abs(e), 1e-12)).max())
    )
    if name is not None:
        result.outputs[name] = {"max_abs_diff": max_abs, "max_rel_diff": max_abs / max(scale, 1e-12)}
    return max_abs, scale


def compare(
    actual: Any,
    expected: Any,
    tol: Tolerance | str,
    *,
    labels: Any = None,
    reference_accuracy: float | None = None,
    judge_decisions: bool = True,
) -> Comparison:
    """Compare ``actual`` with ``expected`` and judge the result with ``tol``.

    Args:
        actual: the artifact's outputs: an array (or torch tensor), a sequence of batches, or a
            mapping ``{output name: array}`` (integer outputs must then be equal).
        expected: the reference's outputs, in the same form.
        tol: an entry of :data:`~edge_biformer.check.tolerances.TOLERANCES` or its name.
        labels: class labels of the samples (classifier outputs): adds the top-1 accuracy.
        reference_accuracy: the reference's top-1 accuracy on ``labels`` (computed if ``None``).
        judge_decisions: ``False`` for a model with random weights: its top-1/top-5 classes are decided
            by near-ties of an untrained head, so the agreement and accuracy rules are measured and
            noted, not judged (the numeric rules still are).

    Returns:
        the numbers and the verdict; NaN or Inf on either side always fails.
    """
    tol = tolerance(tol) if isinstance(tol, str) else tol
    result = Comparison(tolerance=tol.name, limits=_limits(tol))
    if isinstance(expected, Mapping):
        missing = sorted(set(expected) - set(actual))
        if missing:
            result.fail(f"outputs {', '.join(missing)} are missing")
        pairs = [
            (name, to_numpy(actual[name]), to_numpy(expected[name])) for name in expected if name in actual
        ]
    else:
        pairs = [(None, to_numpy(actual), to_numpy(expected))]
    max_abs, scale = 0.0, 0.0
    for name, a, e in pairs:
        d, s = _measure(result, name, a, e)
        max_abs, scale = max(max_abs, d), max(scale, s)
    result.max_abs_diff = max_abs
    result.expected_scale = scale
    result.max_rel_diff = max_abs / max(scale, 1e-12) if math.isfinite(max_abs) else math.inf
    if len(pairs) == 1 and pairs[0][2].ndim >= 1:
        result.samples = int(pairs[0][2].shape[0])
    if result.passed and tol.classification and len(pairs) == 1 and pairs[0][2].ndim >= 1:
        if pairs[0][2].ndim == 2:
            _classification(result, pairs[0][1], pairs[0][2], labels)
        elif pairs[0][2].ndim > 2:  # a dense output (feature map, detection head): its direction per sample
            _cosine(result, pairs[0][1], pairs[0][2])
    if judge_decisions:
        _judge(result, tol, labels, reference_accuracy, pairs)
    else:
        decisions = ("min_top1_agreement", "min_top5_agreement", "max_accuracy_drop")
        _judge(result, replace(tol, **dict.fromkeys(decisions)), labels, reference_accuracy, pairs)
        if result.top1_agreement is not None:
            result.notes.append(
                "random weights: the top-1/top-5 agreement rules are measured, not judged (an untrained "
                "head decides its classes by near-ties); the error and cosine rules judge"
            )
    return result


#: One-sided 95 % normal quantile of the agreement bounds.
Z95 = 1.6448536269514722


def agreement_upper_bound(agree: int, n: int, z: float = Z95) -> float:
    """Upper one-sided 95 % Wilson bound of an agreement rate observed as ``agree`` of ``n``."""
    if n <= 0 or agree >= n:
        return 1.0  # exactly: all agreeing passes any threshold, a 100 % one included
    p = agree / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def failing_agreement(n: int, threshold: float) -> float:
    """The highest observed agreement that the rule ``threshold`` fails at ``n`` samples (0 if none)."""
    k = max((k for k in range(n + 1) if agreement_upper_bound(k, n) < threshold), default=-1)
    return max(k, 0) / n if n else 0.0


def samples_to_resolve(threshold: float, points: float = 0.02) -> int:
    """About how many samples make the rule fail an observed agreement ``points`` below ``threshold``."""
    gap = max(points, 1e-6)
    return math.ceil(Z95 * Z95 * threshold * (1 - threshold + gap) / (gap * gap))


def _judge_agreement(result: Comparison, label: str, rate: float, threshold: float) -> None:
    """An agreement rule: it fails when the data show, at 95 % confidence, a rate below the threshold.

    With ``n`` samples an observed rate is uncertain: 29 of 30 images (96.7 %) is consistent with a
    true agreement of 97 %, so one flip among 30 must not fail a 97 % rule. The rule fails when the
    upper 95 % Wilson bound of the observed rate is below the threshold (for a 100 % threshold:
    any disagreement). When ``n`` is too small to resolve the threshold within 2 points, a note says so.
    """
    n = result.samples
    agree = round(rate * n)
    upper = agreement_upper_bound(agree, n)
    if upper < threshold or (threshold >= 1.0 and agree < n):
        result.fail(
            f"{label} agreement {rate:.2%} ({agree}/{n}; 95 % upper bound {upper:.2%}) < {threshold:.0%}"
        )
    if threshold < 1.0 and threshold - failing_agreement(n, threshold) > 0.02:
        result.notes.append(
            f"{n} samples are too few to judge the {label} agreement rule ({threshold:.0%}) closely: only an "
            f"observed agreement of {failing_agreement(n, threshold):.1%} or less fails it; about "
            f"{samples_to_resolve(threshold)} samples resolve it within 2 points"
        )


def _limits(tol: Tolerance) -> dict[str, float]:
    keys = (
        "max_abs",
        "max_rel",
        "min_cosine",
        "min_top1_agreement",
        "min_top5_agreement",
        "max_accuracy_drop",
    )
    return {k: float(getattr(tol, k)) for k in keys if getattr(tol, k) is not None}


def _judge(
    result: Comparison,
    tol: Tolerance,
    labels: Any,
    reference_accuracy: float | None,
    pairs: list[tuple[str | None, np.ndarray, np.ndarray]],
) -> None:
    if not result.passed:
        return
    if tol.max_abs is not None and result.max_abs_diff > tol.max_abs:
        result.fail(f"max abs diff {result.max_abs_diff:.3g} > {tol.max_abs:g}")
    if tol.max_rel is not None and result.max_rel_diff > tol.max_rel:
        result.fail(
            f"max relative difference {result.max_rel_diff:.3g} > {tol.max_rel:g} (max abs "
            f"{result.max_abs_diff:.3g})"
        )
    if tol.min_cosine is not None and result.min_cosine is not None and result.min_cosine < tol.min_cosine:
        result.fail(f"min cosine {result.min_cosine:.5f} < {tol.min_cosine}")
    for label, rate, threshold in (
        ("top-1", result.top1_agreement, tol.min_top1_agreement),
        ("top-5", result.top5_agreement, tol.min_top5_agreement),
    ):
        if rate is not None and threshold is not None:
            _judge_agreement(result, label, rate, threshold)
    if labels is not None and tol.max_accuracy_drop is not None and result.top1_accuracy is not None:
        if reference_accuracy is None:
            expected = pairs[0][2].reshape(pairs[0][2].shape[0], -1)
            reference_accuracy = float((expected.argmax(1) == np.asarray(labels)).mean())
        drop = (reference_accuracy - result.top1_accuracy) * 100
        if drop > tol.max_accuracy_drop:
            result.fail(
                f"top-1 accuracy {result.top1_accuracy:.2%} is {drop:.2f} points below the reference "
                f"({reference_accuracy:.2%}); allowed {tol.max_accuracy_drop:g}"
            )
