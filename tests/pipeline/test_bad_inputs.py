"""Bad inputs across the stages: each one fails with one clear paragraph, exit 2, and leaves nothing.

The cases of the reliability matrix: NaN/Inf weights (checkpoint, ONNX initializers, reference),
graphs the quantize stage cannot take (rewritten, invalid, static batch, external data), modelopt's
side files, an output folder that cannot be written, a truncated artifact in a build directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edge_biformer.cli.main import main
from tests.reduced_model import CHECKPOINT, arch_args, export_reduced, train_script

pytest.importorskip(
    "modelopt.onnx.quantization", reason="nvidia-modelopt (a default dependency) is not installed"
)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_reduced(tmp_path_factory.mktemp("plain") / "plain.onnx", weights=CHECKPOINT)


@pytest.fixture(scope="module")
def calib_dir() -> str:
    """Real photographs: the built-in demo set (``--calib-data demo-photos``)."""
    from edge_biformer.calib import DEMO_SOURCE

    return DEMO_SOURCE


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _poisoned_graph(plain: Path, out: Path, value: float = float("nan")) -> tuple[Path, str]:
    """A copy of the plain export with one weight initializer set to ``value``; its name."""
    model = onnx.load(str(plain))
    init = next(i for i in model.graph.initializer if numpy_helper.to_array(i).size > 16)
    array = numpy_helper.to_array(init).copy()
    array.flat[3] = value
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(out))
    return out, init.name


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err


def test_nan_checkpoint_is_refused_at_export_naming_the_parameter(tmp_path: Path, capsys) -> None:
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    weights = state.get("model", state) if isinstance(state, dict) else state
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 16)
    weights[name] = weights[name].clone()
    weights[name].view(-1)[5] = float("inf")
    poisoned = tmp_path / "poisoned.pth"
    torch.save(state, poisoned)
    size = str(train_script().IMG_SIZE)
    out = tmp_path / "m.onnx"
    rc = main(["export", "--model", "biformer_tiny", "--weights", str(poisoned), *arch_args(),
               "--img-size", size,
               "-o", str(out)])  # fmt: skip
    err = _error(capsys)
    assert rc == 2 and "NaN/Inf" in err and name in err and "1 of" in err
    assert _listing(tmp_path) == ["poisoned.pth"]


def test_nan_module_is_refused_by_export_onnx(tmp_path: Path) -> None:
    from edge_biformer import create_model
    from edge_biformer.check.finite import NonFiniteError
    from edge_biformer.export import export_onnx

    model = create_model("biformer_tiny", **train_script().REDUCED_CONFIG)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=r"head\.bias \(all 10 values\)"):
        export_onnx(model, tmp_path / "m.onnx", img_size=train_script().IMG_SIZE)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["quantize", "rewrite", "build"])
def test_nan_initializers_are_refused_naming_them(plain: Path, tmp_path: Path, capsys, command: str) -> None:
    poisoned, name = _poisoned_graph(plain, tmp_path / "poisoned.onnx")
    argv = {
        "quantize": ["quantize", str(poisoned), "--precision", "fp16", "-o", str(tmp_path / "q.onnx")],
        "rewrite": ["rewrite", str(poisoned), "-o", str(tmp_path / "r.onnx")],
        "build": ["build", "--from-onnx", str(poisoned), "--precision", "fp16", "-o", str(tmp_path / "out")],
    }[command]
    rc = main(argv)
    err = _error(capsys)
    assert rc == 2 and "NaN/Inf" in err and name in err, err
    leftovers = [p for p in _listing(tmp_path) if p not in ("poisoned.onnx", "out")]
    assert not leftovers, leftovers
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_non_finite_reference_outputs_are_an_error() -> None:
    from edge_biformer.check.finite import NonFiniteError
    from edge_biformer.check.reference import Reference, require_finite_reference

    ref = Reference("pytorch", "FP32 PyTorch (x)", lambda b: list(b))
    require_finite_reference(ref, [np.ones((2, 10), np.float32)])
    bad = np.ones((4, 10), np.float32)
    bad[1, 3] = np.nan
    with pytest.raises(NonFiniteError, match="NaN/Inf outputs for 1 of 6"):
        require_finite_reference(ref, [np.ones((2, 10), np.float32), bad])


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_quantize_of_a_rewritten_graph_is_refused(
    plain: Path, calib_dir: str, tmp_path: Path, capsys, precision: str
) -> None:
    rewritten = tmp_path / "plain.plugin.onnx"
    assert main(["rewrite", str(plain), "-o", str(rewritten)]) == 0
    capsys.readouterr()
    calib = ["--calib-data", str(calib_dir)] if precision == "int8" else []
    rc = main(["quantize", str(rewritten), "--precision", precision, *calib, "-o", str(tmp_path / "q.onnx")])
    err = _error(capsys)
    assert rc == 2 and "already rewritten" in err and "plain export" in err
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_of_an_invalid_graph_is_refused(plain: Path, tmp_path: Path, capsys) -> None:
    model = onnx.load(str(plain))
    model.graph.node[3].input[0] = "no_such_tensor"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    rc = main(["quantize", str(broken), "--precision", "fp16", "-o", str(tmp_path / "q.onnx")])
    err = _error(capsys)
    assert rc == 2 and "is not a valid ONNX model" in err and "no_such_tensor" in err
    assert _listing(tmp_path) == ["broken.onnx"]


def test_int8_of_a_static_batch_graph_calibrates_at_that_batch(tmp_path: Path, capsys) -> None:
    """A graph with a fixed batch of 1 (no BRA either): modelopt's raw onnxruntime error before."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.fc = torch.nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).relu().mean((2, 3)))

    torch.manual_seed(0)
    static = tmp_path / "static.onnx"
    torch.onnx.export(Net(), torch.randn(1, 3, 48, 48), str(static), input_names=["input"], dynamo=False)
    data = np.random.default_rng(0).standard_normal((20, 3, 48, 48)).astype(np.float32)
    np.save(tmp_path / "calib.npy", data)
    out = tmp_path / "static.int8.onnx"
    rc = main(["quantize", str(static), "--precision", "int8", "--calib-data", str(tmp_path / "calib.npy"),
               "-o", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "WARNING: only 20 calibration image(s)" in printed
    # no BRA block: the printed next step is a build without the rewrite, not a rewrite that fails
    assert "--no-rewrite" in printed and "edge-biformer rewrite" not in printed
    manifest = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in manifest.graph.node)


def test_calibration_uses_every_image_or_says_why_not() -> None:
    from onnx import TensorProto, helper

    from edge_biformer.quantize.source import calibration_batches

    def graph(batch: int | str) -> onnx.ModelProto:
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 8, 8])
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3, 8, 8])
        return helper.make_model(
            helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g", [inp], [out])
        )

    assert calibration_batches(graph("N"), 8, 30) == calibration_batches(graph("N"), 8, 30)
    plan = calibration_batches(graph("N"), 8, 30)
    assert (plan.batch, plan.usable, plan.note) == (6, 30, None)  # 30 = 5 x 6: every image used
    plan = calibration_batches(graph("N"), 8, 31)  # prime: batches of 8, 7 left out, and said
    assert (plan.batch, plan.usable) == (8, 24) and "7 of 31 calibration images left out" in plan.note
    plan = calibration_batches(graph(4), 8, 30)
    assert (plan.batch, plan.usable) == (4, 28) and "static batch" in plan.note
    with pytest.raises(Exception, match="static batch of 4 and there are only 3"):
        calibration_batches(graph(4), 8, 3)


def test_int8_of_a_graph_with_external_data(plain: Path, calib_dir: str, tmp_path: Path) -> None:
    model = onnx.load(str(plain))
    external = tmp_path / "ext" / "ext.onnx"
    external.parent.mkdir()
    onnx.save(model, str(external), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    out = tmp_path / "ext" / "ext.int8.onnx"
    rc = main(
        ["quantize", str(external), "--precision", "int8", "--calib-data", str(calib_dir), "-o", str(out)]
    )
    assert rc == 0
    assert onnx.load(str(out)).graph.node  # one self-contained file
    assert _listing(external.parent) == sorted(
        ["ext.onnx", "ext.onnx.data", "ext.int8.onnx", "ext.int8.manifest.json", "ext.int8.calib.cache",
         "ext.int8.calib.cache.json"]
    )  # fmt: skip


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_failed_int8_quantize_leaves_nothing_beside_the_output(
    plain: Path, calib_dir: str, tmp_path: Path, monkeypatch, failure: BaseException
) -> None:
    """modelopt writes model_named.onnx, model_opset19.onnx, ... beside its input and output."""
    import modelopt.onnx.quantization as mq

    def failing_quantize(onnx_path: str, *args, output_path: str, **kwargs) -> None:
        for side in ("model_named.onnx", "model_opset19.onnx"):
            shutil.copyfile(onnx_path, Path(onnx_path).with_name(side))
            shutil.copyfile(onnx_path, Path(output_path).with_name(side))
        raise failure

    monkeypatch.setattr(mq, "quantize", failing_quantize)
    work = tmp_path / "work"
    work.mkdir()
    argv = ["quantize", str(plain), "--precision", "int8", "--calib-data", str(calib_dir),
            "-o", str(work / "q.onnx")]  # fmt: skip
    if isinstance(failure, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            from edge_biformer.calib import DataSpec
            from edge_biformer.quantize import QuantizeOptions, run

            run(QuantizeOptions("int8", plain, work / "q.onnx", calib=DataSpec(str(calib_dir))))
    else:
        assert main(argv) == 2
    assert _listing(work) == []


def test_unwritable_output_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = main(["build", "--model", "biformer_tiny", *arch_args(), "--img-size", "48", "--precision", "fp32",
               "-o", str(blocker / "out")])  # fmt: skip
    err = _error(capsys)
    assert rc == 2 and "is a file, not a folder" in err
    rc = main(["export", "--model", "biformer_tiny", *arch_args(), "--img-size", "48",
               "-o", str(blocker / "m.onnx")])  # fmt: skip
    assert rc == 2 and "is a file, not a folder" in _error(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the probe is the same")
def test_read_only_output_folder_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        rc = main(["build", "--model", "biformer_tiny", *arch_args(), "--img-size", "48", "--precision",
                   "fp32", "-o", str(locked / "out")])  # fmt: skip
        err = _error(capsys)
        assert rc == 2 and "cannot write into" in err
        assert _listing(locked) == []
    finally:
        locked.chmod(0o755)


def test_writability_probe_reports_the_os_error(tmp_path: Path, monkeypatch) -> None:
    """The probe creates a real file: an OS refusal (read-only mount, permissions) is the error."""
    import tempfile

    from edge_biformer.errors import EdgeBiformerError
    from edge_biformer.utils import require_writable_dir

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(EdgeBiformerError, match=r"cannot write into .* \(Permission denied\)"):
        require_writable_dir(tmp_path / "new" / "folder")


def test_check_of_a_truncated_artifact_fails_its_row(plain: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert (
        main(["build", "--from-onnx", str(plain), "--precision", "fp16", "--no-rewrite", "-o", str(out)]) == 0
    )
    graph = out / "model.fp16.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    capsys.readouterr()
    assert main(["check", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "model.fp16.onnx is not a readable ONNX model" in printed and "Traceback" not in printed
    assert "truncated" in (out / "report.md").read_text()
