"""DeBiFormer rewrite: every routed attention (BRA and DBRA) becomes one plugin node.

Both our exports (torchscript and dynamo) and the official module's dynamo export
(``debiformer_small_cfg.dynamo18.onnx``, NCHW agents and output) are rewritten with the per-block
and whole-graph checks, and the rewritten graphs reproduce the official golden in ``cpu_session``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch

import edge_biformer
from edge_biformer.export import export_onnx
from edge_biformer.ops.bra import CONTRACT
from edge_biformer.rewrite import rewrite_onnx
from edge_biformer.testing import assert_close
from tests.conftest import DEBI_DIR, DEBI_SMALL_CFG, REFERENCE_DIR

OFFICIAL_DYNAMO = REFERENCE_DIR / "debiformer" / "debiformer_small_cfg.dynamo18.onnx"
#: (topk, heads, width) of the small config's routed attentions: BRA, DBRA (stage 1), 2 DBRA (stage 2).
ROUTED = [(1, 2, 64), (4, 2, 64), (49, 4, 128), (49, 4, 128)]


def _plugin_nodes(path: Path) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(str(path)).graph.node if CONTRACT.is_node(n)]


def _check_report(report, path: Path) -> None:
    assert report.found == report.replaced == 4 and not report.partial
    assert all(c.comparison.passed for c in report.block_checks) and len(report.block_checks) == 4
    assert report.output_check is not None and report.output_check.comparison.passed
    nodes = _plugin_nodes(path)
    assert len(nodes) == 4
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    assert sorted((a["topk"], a["num_heads"]) for a in attrs) == sorted((t, h) for t, h, _ in ROUTED)
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["GatherElements"] == 0 and ops["Softmax"] == 3  # the 3 deformable attentions remain
    assert ops["GridSample"] == 6


@pytest.fixture(scope="module")
def our_exports(tmp_path_factory) -> dict[str, Path]:
    model = edge_biformer.create_model(
        "debiformer_tiny", weights=DEBI_DIR / "debiformer_small_cfg.pth", **DEBI_SMALL_CFG
    )
    root = tmp_path_factory.mktemp("debi")
    paths = {}
    for exporter, opset in (("torchscript", 17), ("dynamo", 18)):
        paths[exporter] = root / f"{exporter}.onnx"
        export_onnx(model, paths[exporter], exporter=exporter, opset=opset, verify=False)
    return paths


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_rewrite_our_exports(our_exports, tmp_path: Path, debi_golden, exporter: str) -> None:
    out = tmp_path / "plugin.onnx"
    report = rewrite_onnx(our_exports[exporter], out)
    _check_report(report, out)
    logits = edge_biformer.cpu_session(out).run(None, {"input": debi_golden["x"]})[0]
    assert_close(logits, debi_golden["y"], max_rel=1e-4)
    assert logits.argmax() == debi_golden["y"].argmax()


def test_rewrite_official_dynamo_export(tmp_path: Path, debi_golden) -> None:
    """The official module's graph: Expand + GatherElements, NCHW agent queries and output."""
    out = tmp_path / "official.plugin.onnx"
    report = rewrite_onnx(OFFICIAL_DYNAMO, out)
    _check_report(report, out)
    logits = edge_biformer.cpu_session(out).run(None, {"input": debi_golden["x"]})[0]
    assert_close(logits, debi_golden["y"], max_rel=1e-4)
    assert logits.argmax() == debi_golden["y"].argmax()
    # The official DBRA writes its routed output as an NCHW map (3 blocks), the BRA as NHWC (1 block).
    outputs = Counter(b["layout"].split("->")[1].strip() for b in report.blocks)
    assert outputs == {"nchw o": 3, "nhwc o": 1}, [b["layout"] for b in report.blocks]


@pytest.mark.slow
def test_rewrite_at_448(tmp_path: Path) -> None:
    """448: 2x2 agent queries per region attend to 16x16 key regions (Hq != Hk)."""
    model = edge_biformer.create_model(
        "debiformer_tiny", weights=DEBI_DIR / "debiformer_small_cfg.pth", **DEBI_SMALL_CFG
    )
    source, out = tmp_path / "m.onnx", tmp_path / "m.plugin.onnx"
    export_onnx(model, source, img_size=448, verify=False)
    report = rewrite_onnx(source, out)
    _check_report(report, out)
    x = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x).numpy()
    got = edge_biformer.cpu_session(out).run(None, {"input": x.numpy()})[0]
    assert_close(got, ref, max_rel=1e-4)
