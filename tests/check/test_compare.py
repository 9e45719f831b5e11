"""The one comparator (``edge_biformer.check.compare``) and the one tolerance table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edge_biformer.check import TOLERANCES, Tolerance, compare, tolerance
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.stages import PRECISIONS
from edge_biformer.testing import assert_close


def test_max_rel_is_relative_to_the_expected_range() -> None:
    expected = np.array([0.0, 1e-9, 2.0, -4.0])
    actual = expected + np.array([0.0, 1e-6, 0.0, 4e-4])
    c = compare(actual, expected, Tolerance("t", max_rel=1e-4))
    assert c.max_abs_diff == pytest.approx(4e-4) and c.max_rel_diff == pytest.approx(1e-4)
    assert c.max_elementwise_rel_diff == pytest.approx(1e3)  # the near-zero element, not judged
    assert c.passed and c.limits == {"max_rel": 1e-4}
    assert not compare(actual, expected, Tolerance("t", max_rel=9e-5)).passed


def test_nan_and_inf_always_fail() -> None:
    x = np.ones(8, np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[3] = bad
        for actual, expected in ((y, x), (x, y), (y, y)):
            c = compare(actual, expected, Tolerance("loose", max_rel=1e9))
            assert not c.passed and c.nonfinite >= 1 and "NaN/Inf" in c.failures[0]
    assert not compare(np.full(4, np.nan), np.full(4, np.nan), TOLERANCES["build.int8"]).passed


def test_batches_mappings_and_tensors() -> None:
    a, b = np.arange(6.0).reshape(3, 2), np.arange(6.0).reshape(3, 2) + 1e-3
    assert compare([a[:1], a[1:]], a, Tolerance("t", max_abs=0)).passed  # batches are concatenated
    assert compare(torch.from_numpy(b), a, Tolerance("t", max_abs=1.1e-3)).passed
    c = compare(
        {"y": b, "idx": np.array([1, 2])}, {"y": a, "idx": np.array([1, 2])}, Tolerance("t", max_abs=1e-2)
    )
    assert c.passed and set(c.outputs) == {"y", "idx"}
    c = compare(
        {"y": b, "idx": np.array([1, 3])}, {"y": a, "idx": np.array([1, 2])}, Tolerance("t", max_abs=1)
    )
    assert not c.passed and "integer values differ" in c.failures[0]
    c = compare({"y": b}, {"y": a, "z": a}, Tolerance("t", max_abs=1))
    assert not c.passed and "missing" in c.failures[0]
    c = compare(a[:2], a, Tolerance("t", max_abs=1))
    assert not c.passed and math.isinf(c.max_abs_diff) and "shape" in c.failures[0]


def test_classifier_numbers_only_where_the_tolerance_judges_them() -> None:
    logits = np.random.default_rng(0).standard_normal((16, 10))
    assert compare(logits, logits, "export").top1_agreement is None
    c = compare(logits, logits, "build.fp32", labels=logits.argmax(1))
    assert (c.min_cosine, c.top1_agreement, c.top5_agreement, c.top1_accuracy) == pytest.approx((1, 1, 1, 1))


def test_one_table_names_every_comparison() -> None:
    assert {"export", "rewrite.block.float32", "rewrite.block.float16", "rewrite.graph.float32"} <= set(
        TOLERANCES
    )
    for p in PRECISIONS.values():
        t = TOLERANCES[p.tolerance]
        assert t.classification and t.atol_frac and t.rtol is not None and t.error_stat
    assert TOLERANCES["export"].max_rel == 1e-4 and TOLERANCES["rewrite.graph.float16"].max_rel == 2e-2
    with pytest.raises(EdgeBiformerError, match="unknown tolerance 'nope'"):
        tolerance("nope")


def test_assert_close() -> None:
    a = np.linspace(-1, 1, 10)
    assert assert_close(a + 1e-6, a, max_rel=1e-5).passed
    with pytest.raises(AssertionError, match="max relative difference"):
        assert_close(a + 1e-3, a, max_rel=1e-5, msg="case")
    with pytest.raises(ValueError, match="needs a tolerance"):
        assert_close(a, a)


def _flipped(n: int, flips: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference logits and a copy whose top-1 class is swapped with the runner-up in ``flips`` rows."""
    expected = np.random.default_rng(seed).standard_normal((n, 10))
    actual = expected.copy()
    for row in range(flips):
        first, second = np.argsort(expected[row])[::-1][:2]
        actual[row, [first, second]] = actual[row, [second, first]]
    return actual, expected


def test_agreement_rules_fail_only_what_the_samples_show() -> None:
    from edge_biformer.check.compare import agreement_upper_bound, failing_agreement, samples_to_resolve

    rule = Tolerance("t", min_top1_agreement=0.97)
    one_flip = compare(*_flipped(30, 1), rule)  # 96.7 % observed: consistent with 97 %
    assert one_flip.passed and one_flip.top1_agreement == pytest.approx(29 / 30)
    assert any("too few to judge the top-1 agreement rule" in n for n in one_flip.notes)
    four_flips = compare(*_flipped(30, 4), rule)  # 86.7 %: below 97 % at 95 % confidence
    assert not four_flips.passed and "26/30" in four_flips.failures[0]
    many = compare(*_flipped(2000, 100), rule)  # 95.0 % of 2000: resolved, fails, no note
    assert not many.passed and not many.notes
    assert compare(*_flipped(2000, 20), rule).passed  # 99 % of 2000
    # a 100 % rule is exact: one flip fails it, whatever the sample count
    assert not compare(*_flipped(30, 1), Tolerance("t", min_top1_agreement=1.0)).passed
    assert compare(*_flipped(30, 0), Tolerance("t", min_top1_agreement=1.0)).passed
    # the bound is a proper one-sided 95 % bound: 0 of n -> 0 < bound; n of n -> 1
    assert 0 < agreement_upper_bound(0, 30) < 0.12 and agreement_upper_bound(30, 30) == 1.0
    assert failing_agreement(30, 0.97) == pytest.approx(27 / 30)
    n = samples_to_resolve(0.97)
    assert 0.97 - failing_agreement(n, 0.97) <= 0.02 < 0.97 - failing_agreement(n // 4, 0.97)


def test_random_weights_measure_the_class_rules_without_judging_them() -> None:
    rule = Tolerance("t", max_abs=1.0, min_top1_agreement=0.97, min_top5_agreement=0.99)
    actual, expected = _flipped(30, 5)
    judged = compare(actual, expected, rule)
    assert not judged.passed and "top-1 agreement" in judged.failures[0]
    measured = compare(actual, expected, rule, judge_decisions=False)
    assert measured.passed and measured.top1_agreement == pytest.approx(25 / 30)
    assert any("random weights" in note for note in measured.notes)
    # the numeric rules still judge
    assert not compare(actual + 2.0, expected, rule, judge_decisions=False).passed
