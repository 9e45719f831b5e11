"""``export --target-trt``: graphs the ONNX parsers of TensorRT 8.5/8.6 import, verified against PyTorch."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import pytest

from edge_biformer.cli.main import main
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.export import export_onnx
from tests.reduced_model import arch_args, train_script


def _reduced():
    import torch

    from edge_biformer import create_model

    torch.manual_seed(0)
    return create_model("biformer_tiny", **train_script().REDUCED_CONFIG)


@pytest.mark.parametrize(("target", "layer_norms"), [("8.5", False), ("8.6", True), ("10.3", True)])
def test_export_for_a_target_tensorrt(tmp_path: Path, target: str, layer_norms: bool) -> None:
    path = tmp_path / "model.onnx"
    result = export_onnx(_reduced(), path, img_size=train_script().IMG_SIZE, target_tensorrt=target)
    assert result.verification is not None and result.verification.passed  # the converted graph vs PyTorch
    model = onnx.load(str(path))
    ops = Counter(n.op_type for n in model.graph.node)
    assert (ops["LayerNormalization"] > 0) is layer_norms
    if not layer_norms:
        assert ops["Sqrt"] > 0 and ops["ReduceMean"] > 0
    assert {o.domain: o.version for o in model.opset_import}[""] == 17


def test_export_for_tensorrt8_needs_opset17(tmp_path: Path) -> None:
    with pytest.raises(
        EdgeBiformerError, match=r"--target-trt 8.6: .* opsets up to 17; export with --opset 17"
    ):
        export_onnx(
            _reduced(), tmp_path / "m.onnx", img_size=train_script().IMG_SIZE, opset=18, target_tensorrt="8.6"
        )
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(EdgeBiformerError, match=r"older than 8.5"):
        export_onnx(_reduced(), tmp_path / "m.onnx", img_size=train_script().IMG_SIZE, target_tensorrt="8.4")


def test_cli_export_target_trt_is_recorded(tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.onnx"
    size = str(train_script().IMG_SIZE)
    args = ["--img-size", size, "--target-trt", "8.5", "--output", str(out)]
    code = main(["export", "--model", "biformer_tiny", *arch_args(), *args])
    assert code == 0
    assert "export for TensorRT 8.5: " in capsys.readouterr().out
    manifest = json.loads((tmp_path / "model.manifest.json").read_text())
    assert manifest["options"]["target_tensorrt"] == "8.5"
    assert not any(n.op_type == "LayerNormalization" for n in onnx.load(str(out)).graph.node)
