"""``build --onnx`` for graphs of one's own: a detector, a segmenter, a module through the Python API.

Every stage but the engine runs here; the printed onnxruntime Polygraphy commands are run as printed.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import edge_biformer
from edge_biformer.cli.main import main
from edge_biformer.onnx_io import graph_interface
from tests.conftest import polygraphy_exe
from tests.pipeline.own_models import TinyDetector, export_detector, export_segmenter, seeded

pytest.importorskip("PIL", reason="Pillow is needed for the demo photographs")


def _run_onnxrt_commands(report: Path) -> int:
    """Run every printed onnxruntime Polygraphy command of a report; returns how many ran."""
    commands = [
        c["command"] for c in json.loads(report.read_text())["comparisons"] if "--onnxrt" in c["command"]
    ]
    for command in commands:
        argv = shlex.split(command)
        proc = subprocess.run([polygraphy_exe(), *argv[1:]], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return len(commands)


def test_detector_int8_static_graph(tmp_path: Path, capsys) -> None:
    """A YOLO-like graph: static 1x3x64x64 'images', two outputs, 0-1 RGB letterbox preprocessing."""
    source = export_detector(tmp_path / "det.onnx")
    out = tmp_path / "det-int8"
    rc = main(["build", "--onnx", str(source), "--precision", "int8", "--preprocess", "yolo", "-o", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"] == {"name": "images", "dtype": "float32", "shape": [1, 3, 64, 64]}
    assert [(o["name"], o["kind"]) for o in manifest["outputs"]] == [("boxes", "dense"), ("scores", "dense")]
    profile = manifest["profile"]
    assert (profile["min"], profile["opt"], profile["max"], profile["static"]) == (1, 1, 1, True)
    assert manifest["preprocess"]["name"] == "yolo" and manifest["preprocess"]["resize"] == "letterbox"
    assert manifest["calibration"]["preprocessing"].startswith("yolo: letterbox to 64x64")
    # The detection heads stay out of INT8 and the decode FP32 (docs/build.md, precision policy).
    policy = manifest["stages"]["quantize"]["policy"]
    assert policy["output_heads_high_precision"] == 2 and policy["output_tail_fp32"] > 5
    plugin = onnx.load(str(out / "model.int8.plugin.onnx"))
    assert sum(n.op_type == "BiLevelRoutingAttention" for n in plugin.graph.node) == 1
    # Static graph: the target commands carry no shapes, the check reads the graph's input name.
    assert "--minShapes" not in manifest["engine"]["build_command"]
    assert all("Shapes" not in c for c in manifest["engine"]["trtexec_by_tensorrt"].values())
    report = json.loads((out / "report.json").read_text())
    assert (
        report["reference"]["runner"] == "onnxrt_fp32" and str(source) in report["reference"]["description"]
    )
    rows = [c for c in report["comparisons"] if c["status"] != "skipped"]
    assert len(rows) == 2
    for row in rows:
        assert set(row["outputs"]) == {"boxes", "scores"} and row["status"] == "pass"
        assert all(o["kind"] == "dense" and o["min_cosine"] > 0.98 for o in row["outputs"].values())
        assert "--atol boxes:" in row["command"] and " scores:" in row["command"]
    assert "## Outputs" in (out / "report.md").read_text()
    assert json.loads((out / "check" / "inputs.json").read_text())  # saved under the graph's name
    assert _run_onnxrt_commands(out / "report.json") == 1


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_segmenter_dense_output_dynamic_batch(precision: str, tmp_path: Path, capsys) -> None:
    """A U-Net-like graph, dynamic batch: the profile follows --batch, the dense map is judged by cosine."""
    source = export_segmenter(tmp_path / "seg.onnx")
    out = tmp_path / f"seg-{precision}"
    rc = main([
        "build", "--onnx", str(source), "--precision", precision, "--preprocess", "imagenet-resize",
        "--batch", "1,4,8", "-o", str(out),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "preprocess (given): imagenet-resize: resize to 64x64 bilinear, ImageNet mean/std, RGB" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profile"]["shapes"]["max"] == [8, 3, 64, 64] and not manifest["profile"]["static"]
    assert "--batch 1,4,8" in manifest["engine"]["build_command"]
    assert all("--maxShapes=image:8x3x64x64" in c for c in manifest["engine"]["trtexec_by_tensorrt"].values())
    report = json.loads((out / "report.json").read_text())
    for row in (c for c in report["comparisons"] if c["status"] != "skipped"):
        assert row["status"] == "pass" and row["outputs"]["mask"]["kind"] == "dense"
        assert row["top1_agreement"] is None  # no classifier rule on a dense map
        assert row["min_cosine"] > 0.999
    # fp32: the source graph is the reference itself, only the plugin graph is compared
    assert _run_onnxrt_commands(out / "report.json") == (1 if precision == "fp16" else 0)


def test_module_build_through_the_python_api(tmp_path: Path) -> None:
    """edge_biformer.build(module, example): export (verified), rewrite, check against the module itself."""
    module = seeded(TinyDetector())
    result = edge_biformer.build(
        module, torch.rand(1, 3, 64, 64), precision="fp32", output=tmp_path / "api", preprocess="yolo",
        output_names=["boxes", "scores"],
    )  # fmt: skip
    assert result.check_passed
    assert result.report.reference["runner"] == "pytorch"
    export_manifest = json.loads((tmp_path / "api" / "model.manifest.json").read_text())
    assert export_manifest["stage"] == "export" and export_manifest["exporter"] == "torchscript"
    assert graph_interface(tmp_path / "api" / "model.onnx").output_names == ["boxes", "scores"]
    rows = {c.kind: c for c in result.report.comparisons}
    assert rows["cpu_session"].status == "pass" and set(rows["cpu_session"].outputs) == {"boxes", "scores"}


def test_graph_without_bra_is_a_plain_build(tmp_path: Path, capsys) -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)
    ).eval()
    path = tmp_path / "plain.onnx"
    torch.onnx.export(net, torch.rand(1, 3, 32, 32), str(path), input_names=["x"], dynamo=False)
    out = tmp_path / "out"
    assert (
        main(["build", "--onnx", str(path), "--precision", "fp16", "--preprocess", "unit", "-o", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "has no BRA block" in printed and "a plain TensorRT build, without the plugin" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert "plugin_onnx" not in manifest["artifacts"] and manifest["check"]["passed"]
    assert not manifest["plugin_library"]["needed"]


def _constant_graph(path: Path) -> Path:
    value = helper.make_tensor("c", TensorProto.FLOAT, [1, 2], [1.0, 2.0])
    node = helper.make_node("Identity", ["c"], ["y"])
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([node], "g", [], [output], initializer=[value])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_bad_inputs_give_one_error_and_no_partial_output(tmp_path: Path, capsys) -> None:
    """No graph input; wrong channel count of calibration tensors; unknown preset: one paragraph, exit 2."""
    graph = _constant_graph(tmp_path / "const.onnx")
    out = tmp_path / "out1"
    assert main(["build", "--onnx", str(graph), "--precision", "fp32", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "const.onnx has no graph inputs" in err and "Traceback" not in err
    assert not (out / "manifest.json").exists()

    source = export_detector(tmp_path / "det.onnx")
    grey = tmp_path / "grey.npy"
    np.save(grey, np.zeros((4, 1, 64, 64), np.float32))
    out = tmp_path / "out2"
    rc = main(
        ["build", "--onnx", str(source), "--precision", "int8", "--calib-data", str(grey), "-o", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "grey.npy holds an array of shape (4, 1, 64, 64), expected N x 3 x 64 x 64" in err
    assert not any(out.glob("*.onnx")) and not (out / "manifest.json").exists()

    with pytest.raises(SystemExit) as exc:
        main(["build", "--onnx", str(source), "--precision", "fp32", "--preprocess", "bogus", "-o", str(out)])
    assert exc.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    from edge_biformer.calib.preprocess import preset
    from edge_biformer.errors import EdgeBiformerError

    with pytest.raises(EdgeBiformerError, match="unknown --preprocess 'bogus'; the presets are: imagenet"):
        preset("bogus")


def test_backbone_int8_build_checks_all_four_outputs(tmp_path: Path, capsys) -> None:
    """A 4-output dense backbone (features_only, auto_pad) at a padded size, INT8 calibrated: each stage
    output is checked against PyTorch on its own range, and the printed onnxruntime commands pass."""
    from tests.reduced_model import arch_args

    out = tmp_path / "backbone"
    rc = main([
        "build", "--model", "biformer_tiny", *arch_args(), "--features-only", "--img-size", "100x132",
        "--precision", "int8", "--preprocess", "imagenet-resize", "--check-num", "16", "-o", str(out),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["feat0", "feat1", "feat2", "feat3"]
    assert manifest["profile"]["shapes"]["opt"] == [8, 3, 100, 132]
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["runner"] == "pytorch"
    rows = [c for c in report["comparisons"] if c["status"] != "skipped"]
    assert len(rows) == 3  # the export, the INT8 graph and the plugin graph
    for row in rows:
        assert row["status"] == "pass" and list(row["outputs"]) == ["feat0", "feat1", "feat2", "feat3"]
        assert all(o["kind"] == "dense" and o["min_cosine"] > 0.98 for o in row["outputs"].values())
    plugin = onnx.load(str(out / "model.int8.plugin.onnx"))
    assert sum(n.op_type == "BiLevelRoutingAttention" for n in plugin.graph.node) == 3  # topks [2,4,6,-2]
    assert _run_onnxrt_commands(out / "report.json") == 2
