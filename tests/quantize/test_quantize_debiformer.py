"""Precision policy of DeBiFormer graphs: GridSample and its sampling chain stay out of INT8 / FP16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edge_biformer
from edge_biformer.export import export_onnx
from edge_biformer.testing import assert_close
from tests.conftest import DEBI_DIR, DEBI_SMALL_CFG, REFERENCE_DIR

pytest.importorskip(
    "modelopt.onnx.quantization", reason="nvidia-modelopt (a default dependency) is not installed"
)
from edge_biformer import quantize


@pytest.fixture(scope="module")
def cfg_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = edge_biformer.create_model(
        "debiformer_tiny", weights=DEBI_DIR / "debiformer_small_cfg.pth", **DEBI_SMALL_CFG
    )
    path = tmp_path_factory.mktemp("debi") / "cfg.onnx"
    export_onnx(model, path, verify=False)
    return path


@pytest.mark.parametrize("graph", ["ours", "official_dynamo"])
def test_sampling_chain_is_kept_out_of_int8_and_fp16(cfg_onnx: Path, graph: str) -> None:
    path = (
        cfg_onnx if graph == "ours" else REFERENCE_DIR / "debiformer" / "debiformer_small_cfg.dynamo18.onnx"
    )
    model = onnx.load(str(path))
    policy = quantize.node_policy(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    sampling = set(policy.sampling)
    kinds = [ops[n] for n in sampling]
    assert kinds.count("GridSample") == 6 and kinds.count("Clip") == 3
    assert kinds.count("LayerNormalization") == 3  # the offset networks' (eps 1e-5)
    offset_convs = [n for n in sampling if ops[n] == "Conv"]
    assert len(offset_convs) == 6  # depthwise kxk + 1x1 to one channel, per DBRA
    assert not sampling & set(policy.int8)
    assert sampling <= set(policy.fp32)
    # Everything else weight-bearing is still quantized: the projections of BRA/DBRA, MLPs, stem.
    assert sum(ops[n] == "Conv" for n in policy.int8) >= 20


def test_biformer_graph_has_no_sampling_chain() -> None:
    model = onnx.load(str(REFERENCE_DIR / "official_small_w7.ts17.onnx"))
    assert quantize.node_policy(model).sampling == []


def test_fp16_keeps_grid_sample_in_float32(cfg_onnx: Path, tmp_path: Path, debi_golden) -> None:
    out = tmp_path / "fp16.onnx"
    quantize.quantize_fp16(cfg_onnx, out)
    converted = onnx.shape_inference.infer_shapes(onnx.load(str(out)))
    types = {v.name: v.type.tensor_type.elem_type for v in converted.graph.value_info}
    for node in converted.graph.node:
        if node.op_type == "GridSample":
            assert all(types.get(i, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for i in node.input)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": debi_golden["x"]})[0]
    assert np.isfinite(y).all()
    assert_close(y, debi_golden["y"], max_rel=5e-3)  # measured 2.0e-3 (3.3e-3 with the chain in FP16)
    assert y.argmax() == debi_golden["y"].argmax()
