"""DeBiFormer ONNX export: both exporters give a correct graph (onnxruntime vs PyTorch and the golden)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

import edge_biformer
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.export import check_input_size, export_onnx
from edge_biformer.testing import assert_close
from tests.conftest import DEBI_DIR, DEBI_SMALL_CFG, REFERENCE_DIR

EXPORTERS = {"torchscript": 17, "dynamo": 18}


def _cfg_model(**overrides) -> torch.nn.Module:
    return edge_biformer.create_model(
        "debiformer_tiny", weights=DEBI_DIR / "debiformer_small_cfg.pth", **{**DEBI_SMALL_CFG, **overrides}
    )


@pytest.fixture(scope="module", params=sorted(EXPORTERS))
def cfg_export(request, tmp_path_factory) -> tuple[str, onnx.ModelProto, Path]:
    exporter = request.param
    path = tmp_path_factory.mktemp(exporter) / "debi_cfg.onnx"
    result = export_onnx(_cfg_model(), path, exporter=exporter, opset=EXPORTERS[exporter])
    assert result.verification.passed and result.verify_batches == [1, 2]
    assert result.input_shape[0] == "batch" or isinstance(result.input_shape[0], str)
    return exporter, onnx.load(str(path)), path


def test_golden_through_onnx(cfg_export, debi_golden) -> None:
    _, _, path = cfg_export
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": debi_golden["x"]})[0]
    assert_close(y, debi_golden["y"], max_rel=1e-4)
    assert y.argmax() == debi_golden["y"].argmax()
    # Dynamic batch: two different images in one batch give their own logits.
    x2 = np.concatenate([debi_golden["x"], np.flip(debi_golden["x"], axis=3)]).copy()
    y2 = session.run(None, {"input": x2})[0]
    assert y2.shape == (2, 10)
    assert_close(y2[:1], debi_golden["y"], max_rel=1e-4)
    assert np.abs(y2[1] - y2[0]).max() > 1e-3


def test_graph_structure(cfg_export) -> None:
    """Index gather (no Expand + GatherElements), official GridSample settings, float32 grids."""
    _, model, _ = cfg_export
    producers = {o: n for n in model.graph.node for o in n.output}
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("TopK") == 4
    assert "GatherElements" not in ops and "ScatterND" not in ops
    grid_samples = [n for n in model.graph.node if n.op_type == "GridSample"]
    assert len(grid_samples) == 6  # agents and bias table, 3 DBRA
    for node in grid_samples:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"align_corners": 1, "mode": b"bilinear", "padding_mode": b"zeros"}
    assert ops.count("Clip") == 3
    typed = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    assert not [v.name for v in typed if v.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE]
    assert not [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.DOUBLE]
    # The routed K/V are read by Gather on axis 0 from TopK-derived indices.
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[1] in producers]
    assert sum(producers[n.input[1]].op_type != "Shape" for n in gathers) >= 8


def test_official_dynamo_export_reproduces_golden(debi_golden) -> None:
    """The reference dynamo export of the official module (the rewrite's other input) runs as given."""
    path = REFERENCE_DIR / "debiformer" / "debiformer_small_cfg.dynamo18.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": debi_golden["x"]})[0]
    assert_close(y, debi_golden["y"], max_rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
def test_export_at_448(tmp_path, exporter: str) -> None:
    """448: 2x2 agents per region and interpolated bias tables, exported and verified."""
    result = export_onnx(
        _cfg_model(),
        tmp_path / "m.onnx",
        img_size=448,
        exporter=exporter,
        opset=EXPORTERS[exporter],
        verify_batches=(1,),
    )
    assert result.verification.passed
    assert result.input_shape[2:] == [448, 448]


def test_input_size_rules() -> None:
    model = edge_biformer.create_model("debiformer_tiny")
    check_input_size(model, 224, 224)
    check_input_size(model, 448, 448)
    with pytest.raises(
        EdgeBiformerError, match=r"agent grid.*nearest sizes that fit are 224 or 445.*no auto_pad"
    ):
        check_input_size(model, 256, 256)
