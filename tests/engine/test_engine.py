"""TensorRT engine options and commands; the build itself where TensorRT and a GPU are present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_biformer import engine
from edge_biformer.check.runners import Target, run_target
from edge_biformer.engine import BatchProfile, EngineOptions
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.testing import assert_close


def test_batch_profile_parse() -> None:
    assert BatchProfile.parse("1,8,32") == BatchProfile(1, 8, 32)
    assert BatchProfile.parse("4") == BatchProfile(4, 4, 4)
    assert BatchProfile(1, 2, 4).shapes((48, 64))["opt"] == [2, 3, 48, 64]
    for bad in ("8,4,16", "0,1,2", "a,b,c", "1,2"):
        with pytest.raises(EdgeBiformerError, match="--batch"):
            BatchProfile.parse(bad)


def test_trtexec_command_strongly_typed_and_options() -> None:
    opts = EngineOptions(
        precision="fp32", img_size=(224, 224), batch=BatchProfile(1, 8, 32), workspace_mib=2048, opt_level=5,
        timing_cache="t.cache", dla_core=0, plugin_library="/opt/libedge_biformer_plugins.so",
    )  # fmt: skip
    cmd = engine.trtexec_command("m.plugin.onnx", "m.engine", opts)
    for part in (
        "--onnx=m.plugin.onnx", "--saveEngine=m.engine", "--minShapes=input:1x3x224x224",
        "--optShapes=input:8x3x224x224", "--maxShapes=input:32x3x224x224", "--stronglyTyped", "--noTF32",
        "--staticPlugins=/opt/libedge_biformer_plugins.so", "--memPoolSize=workspace:2048",
        "--builderOptimizationLevel=5", "--timingCacheFile=t.cache", "--useDLACore=0", "--allowGPUFallback",
    ):  # fmt: skip
        assert part in cmd, part
    implicit = EngineOptions(
        "int8", (224, 224), BatchProfile(1, 8, 8), int8_mode="calibrator", calib_cache="c"
    )
    cmd = engine.trtexec_command("m.onnx", "m.engine", implicit)
    assert "--int8" in cmd and "--fp16" in cmd and "--calib=c" in cmd and "--stronglyTyped" not in cmd
    assert cmd.endswith("# TensorRT < 10.1 only")


def test_fixed_batches_rechunks_and_drops_the_remainder() -> None:
    parts = [np.full((3, 1), i, np.float32) for i in range(4)]  # 12 samples
    chunks = list(engine.fixed_batches(iter(parts), 5))
    assert [c.shape[0] for c in chunks] == [5, 5]
    np.testing.assert_array_equal(np.concatenate(chunks)[:, 0], [0, 0, 0, 1, 1, 1, 2, 2, 2, 3])


def test_missing_tensorrt_is_reported_clearly() -> None:
    if engine.tensorrt_available():
        pytest.skip("TensorRT is installed here")
    assert "TensorRT is not installed" in engine.missing_reason()
    assert engine.tensorrt_version() is None


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_and_run_fp32_engine(tmp_path: Path) -> None:
    if not engine.tensorrt_available():
        pytest.skip(engine.missing_reason())
    from tests.reduced_model import CHECKPOINT, export_reduced

    onnx_path = export_reduced(tmp_path / "m.onnx", weights=CHECKPOINT)
    opts = EngineOptions("fp32", (48, 48), BatchProfile(1, 2, 4), timing_cache=str(tmp_path / "t.cache"))
    result = engine.build_engine(onnx_path, tmp_path / "m.engine", opts)
    assert result.strongly_typed and Path(result.path).stat().st_size > 0
    assert (tmp_path / "t.cache").is_file()
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 3, 48, 48)).astype(np.float32)
    ref = ort.InferenceSession(str(onnx_path)).run(None, {"input": x})[0]
    out = run_target(Target("engine", result.path, "fp32", "tensorrt"), [x])[0]["logits"]
    assert_close(out, ref, max_abs=1e-4 * np.abs(ref).max() + 1e-5)
    again = engine.build_engine(onnx_path, tmp_path / "m2.engine", opts)
    assert "timing cache reused" in again.notes


def test_calibrator_cache_is_reused_only_for_the_same_key(tmp_path) -> None:
    """The implicit-INT8 calibrator (TensorRT < 10.1) keys its cache by graph, data and method."""
    import types

    class FakeCalibrator:  # stands in for trt.IInt8EntropyCalibrator2 / IInt8MinMaxCalibrator
        def __init__(self) -> None:
            pass

    trt = types.SimpleNamespace(IInt8EntropyCalibrator2=FakeCalibrator, IInt8MinMaxCalibrator=FakeCalibrator)
    cache = tmp_path / "model.int8.trt_calib.cache"

    def calibrator(key: str):
        options = engine.EngineOptions(
            precision="int8",
            img_size=(48, 48),
            batch=engine.BatchProfile(1, 8, 8),
            int8_mode="calibrator",
            calib_cache=str(cache),
            calib_key=key,
        )
        return engine.make_calibrator(trt, lambda: iter(()), options)

    assert calibrator("graph-a:data-a").read_calibration_cache() is None
    calibrator("graph-a:data-a").write_calibration_cache(b"TRT-8601-EntropyCalibration2\n")
    assert calibrator("graph-a:data-a").read_calibration_cache() == b"TRT-8601-EntropyCalibration2\n"
    assert calibrator("graph-b:data-a").read_calibration_cache() is None  # another graph: recalibrate
