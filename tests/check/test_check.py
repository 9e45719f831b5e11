"""Accuracy-check building blocks: classifier statistics, tolerances, Polygraphy JSON, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_biformer.check import TOLERANCES, compare
from edge_biformer.check.judge import judge
from edge_biformer.check.polygraphy_io import (
    load_polygraphy_outputs,
    polygraphy_command,
    save_polygraphy_inputs,
    save_polygraphy_outputs,
)
from edge_biformer.check.report import CheckReport, TargetResult, write_report
from edge_biformer.check.runners import Target
from edge_biformer.stages import PRECISIONS


def _logits(n: int = 64, classes: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, classes)).astype(np.float32)
    x[np.arange(n), rng.integers(0, classes, n)] += 6.0  # confident predictions
    return x


def test_classification_stats() -> None:
    ref = _logits()
    stats = compare(ref, ref, TOLERANCES["build.fp32"], labels=ref.argmax(1))
    assert stats.min_cosine == pytest.approx(1.0) and stats.top1_agreement == 1.0
    assert stats.top1_accuracy == 1.0
    swapped = ref.copy()
    swapped[:8] = -swapped[:8]  # eight predictions change
    s = compare(swapped, ref, TOLERANCES["build.fp32"])
    assert s.top1_agreement == pytest.approx(56 / 64) and s.min_cosine < 0


def _compare(ref: np.ndarray, out: np.ndarray, precision: str, labels=None) -> TargetResult:
    target = Target("t", "model.onnx", precision, "onnxrt")
    ref_acc = float((ref.argmax(1) == labels).mean()) if labels is not None else None
    return judge(
        target, [ref[:32], ref[32:]], [out[:32], out[32:]], labels=labels, reference_accuracy=ref_acc,
        inputs_json="in.json", reference_json="ref.json",
    )  # fmt: skip


def test_tolerances_per_precision_pass_and_fail() -> None:
    ref = _logits()
    scale = float(np.abs(ref).max())
    rng = np.random.default_rng(1)
    tiny = ref + rng.normal(0, 1e-6 * scale, ref.shape).astype(np.float32)
    assert _compare(ref, tiny, "fp32").status == "pass"
    fp16_noise = ref + rng.normal(0, 2e-3 * scale, ref.shape).astype(np.float32)
    assert _compare(ref, fp16_noise, "fp16").status == "pass"
    assert _compare(ref, fp16_noise, "fp32").status == "fail"  # too loose for fp32
    int8_noise = ref + rng.normal(0, 1.5e-2 * scale, ref.shape).astype(np.float32)
    c = _compare(ref, int8_noise, "int8", labels=ref.argmax(1))
    assert c.status == "pass" and c.polygraphy_pass and c.top1_accuracy == 1.0
    broken = ref.copy()
    broken[:10] = np.roll(broken[:10], 1, axis=1)  # 10 of 64 predictions wrong
    c = _compare(ref, broken, "int8", labels=ref.argmax(1))
    assert c.status == "fail"
    assert any("top-1 agreement" in f for f in c.failures)
    assert any("points below the reference" in f for f in c.failures)


def test_polygraphy_command_matches_target_kind() -> None:
    onnx_cmd = polygraphy_command(
        Target("a", "m.int8.onnx", "int8", "onnxrt"), "i.json", "r.json", 0.2, 0, "mean"
    )
    assert "--onnxrt" in onnx_cmd and "--graph-optimization-level ORT_DISABLE_ALL" in onnx_cmd
    assert (
        "--load-inputs i.json --load-outputs r.json --atol 0.2 --rtol 0 --check-error-stat mean" in onnx_cmd
    )
    fp32 = polygraphy_command(Target("a", "m.onnx", "fp32", "onnxrt"), "i", "r", 1e-4, 1e-3, "elemwise")
    assert "ORT_DISABLE_ALL" not in fp32
    eng = polygraphy_command(
        Target("e", "m.engine", "int8", "tensorrt", "/x/libedge_biformer_plugins.so"),
        "i",
        "r",
        0.2,
        0,
        "mean",
    )
    assert "--model-type engine --trt --plugins /x/libedge_biformer_plugins.so" in eng


def test_polygraphy_json_roundtrip(tmp_path: Path) -> None:
    from polygraphy.json import load_json

    batches = [np.ones((2, 3, 4, 4), np.float32), np.zeros((1, 3, 4, 4), np.float32)]
    outputs = [_logits(2), _logits(1, seed=3)]
    save_polygraphy_inputs(batches, tmp_path / "inputs.json")
    save_polygraphy_outputs(outputs, tmp_path / "reference.json")
    feeds = load_json(str(tmp_path / "inputs.json"))
    assert [f["input"].shape for f in feeds] == [(2, 3, 4, 4), (1, 3, 4, 4)]
    back = load_polygraphy_outputs(tmp_path / "reference.json")
    for a, b in zip(back, outputs, strict=True):
        assert list(a) == ["logits"]
        np.testing.assert_array_equal(a["logits"], b)


def test_report_files_are_standard_json_and_markdown(tmp_path: Path) -> None:
    ref = _logits()
    ok = _compare(ref, ref, "fp32")
    skipped = TargetResult("engine", "m.engine", "fp32", "tensorrt", "skipped", reason="no TensorRT")
    report = CheckReport(
        reference={"samples": 64, "batches": [32, 32], "inputs_json": "i", "reference_json": "r",
                   "top1_accuracy": None, "logit_scale": 7.0, "data": {"source": "x", "kind": "folder"}},
        comparisons=[ok, skipped],
    )  # fmt: skip
    json_path, md_path = write_report(report, tmp_path)

    def no_nan(value: str) -> float:
        raise AssertionError(f"non-standard JSON constant {value}")

    data = json.loads(json_path.read_text(), parse_constant=no_nan)
    assert data["passed"] is True and data["comparisons"][1]["max_abs_diff"] is None
    md = md_path.read_text()
    assert "**PASS**" in md and "## Not run here" in md and "no TensorRT" in md
    for p in PRECISIONS.values():
        assert f"| {p.name} |" in md


def test_several_outputs_are_judged_each_at_its_own_range() -> None:
    """A detector's boxes (hundreds of pixels) and scores (0-1): an error in the scores alone fails them,
    named, although it is tiny against the boxes' range; a classifier output keeps its agreement rules."""
    rng = np.random.default_rng(0)
    ref = [{"boxes": rng.uniform(0, 640, (2, 4, 50)).astype(np.float32),
            "scores": rng.uniform(0, 1, (2, 5, 50)).astype(np.float32)} for _ in range(3)]  # fmt: skip
    same = [{k: v.copy() for k, v in r.items()} for r in ref]
    target = Target("t", "m.onnx", "fp32", "onnxrt", input_name="images")
    args = {"labels": None, "reference_accuracy": None, "inputs_json": "i.json", "reference_json": "r.json"}
    ok = judge(target, ref, same, **args)
    assert ok.status == "pass" and set(ok.outputs) == {"boxes", "scores"}
    assert "--atol boxes:" in ok.command and " scores:" in ok.command
    bad = [{"boxes": r["boxes"], "scores": r["scores"] + 0.05} for r in ref]
    c = judge(target, ref, bad, **args)
    assert c.status == "fail" and not c.outputs["scores"]["passed"] and c.outputs["boxes"]["passed"]
    assert any(f.startswith("output 'scores': min cosine") for f in c.failures)
    assert not any(f.startswith("output 'boxes'") for f in c.failures)
    missing = judge(target, ref, [{"boxes": r["boxes"]} for r in ref], **args)
    assert any("the artifact has no output 'scores'" in f for f in missing.failures)
    logits = _logits()
    mixed_ref = [{"logits": logits[:32], "feat": np.ones((32, 8, 4, 4), np.float32)}]
    flipped = [{"logits": -logits[:32], "feat": np.ones((32, 8, 4, 4), np.float32)}]
    c = judge(target, mixed_ref, flipped, **args)
    assert c.outputs["logits"]["kind"] == "classifier" and c.outputs["feat"]["kind"] == "dense"
    assert any(f.startswith("output 'logits': ") and "top-1 agreement" in f for f in c.failures)
