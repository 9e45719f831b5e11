"""Dense backbones through ONNX: the official golden in onnxruntime, the 4-output manifest, the rewrite."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import edge_biformer
from edge_biformer.cli.main import main
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.export import export_onnx, verify_onnx
from edge_biformer.ops.bra import CONTRACT
from edge_biformer.rewrite import rewrite_onnx
from tests.models.test_backbone import GOLDEN_PATH, golden_script

FEATURES = ["feat0", "feat1", "feat2", "feat3"]
#: A tiny backbone of the golden's width, for exports at detection/segmentation sizes.
TINY = {
    "depth": [1, 1, 2, 1],
    "embed_dim": [16, 32, 48, 64],
    "qk_dims": [16, 32, 48, 64],
    "mlp_ratios": [2, 2, 2, 2],
    "head_dim": 16,
}
_TINY_ARCH = [f"--arch={k}={json.dumps(v).replace(' ', '')}" for k, v in TINY.items()]


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    """The official backbone golden (see tests/data/README.md) with each case's input."""
    data = torch.load(GOLDEN_PATH, weights_only=True)
    for case in data["cases"]:
        case["x"] = golden_script().golden_input(*case["img_size"])
    return data


def _backbone(golden: dict[str, Any], n_win: int) -> torch.nn.Module:
    config = {**golden["config"], "n_win": n_win}
    return edge_biformer.create_model("biformer_tiny", weights=GOLDEN_PATH, features_only=True, **config)


def _rel(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(
    ("exporter", "case_index"),
    [
        ("torchscript", 0),
        ("torchscript", 1),
        pytest.param("dynamo", 0, marks=pytest.mark.slow),
        pytest.param("dynamo", 1, marks=pytest.mark.slow),
    ],
    ids=["torchscript-n_win8", "torchscript-n_win16", "dynamo-n_win8", "dynamo-n_win16"],
)
def test_official_golden_through_onnx(tmp_path, golden, exporter: str, case_index: int) -> None:
    """Exported at another size (auto_pad: dynamic H, W), run at the golden's padded size.

    (dynamo at 512: at 256 stage 3 of n_win 16 has one-token regions, which torch.export specialises.)
    """
    case = golden["cases"][case_index]
    model = _backbone(golden, case["n_win"])
    path = tmp_path / "backbone.onnx"
    dynamo = exporter == "dynamo"
    result = export_onnx(
        model, path, img_size=512 if dynamo else 256, exporter=exporter, opset=18 if dynamo else 17
    )
    assert result.verification is not None and result.verification.passed
    assert set(result.verification.outputs) == set(FEATURES)
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == FEATURES
    outputs = _session(path).run(FEATURES, {"input": case["x"].numpy()})
    for name, out, ref in zip(FEATURES, outputs, case["outputs"], strict=True):
        assert out.shape == tuple(ref.shape), name
        assert _rel(out, ref.numpy()) <= 1e-5, f"{name}: {_rel(out, ref.numpy()):.2e}"


def test_dynamo_refuses_one_token_regions(tmp_path, golden) -> None:
    with pytest.raises(EdgeBiformerError, match=r"height 257 or more .* --exporter torchscript"):
        export_onnx(_backbone(golden, 16), tmp_path / "b.onnx", img_size=256, exporter="dynamo", opset=18)
    assert not (tmp_path / "b.onnx").exists()


def test_verification_judges_every_output(tmp_path, golden) -> None:
    """A graph whose last output alone is wrong fails the check, naming that output."""
    model = _backbone(golden, 8)
    path = tmp_path / "backbone.onnx"
    export_onnx(model, path, img_size=(200, 232), verify=False)
    with torch.no_grad():
        model.extra_norms["3"].bias += 0.05 * model.extra_norms["3"].weight.abs().max()
    result = verify_onnx(model, path, [golden["cases"][0]["x"]])
    assert not result.passed
    assert all("feat3" in f for f in result.failures), result.failures
    assert result.outputs["feat0"]["max_rel_diff"] < 1e-5 and result.outputs["feat3"]["max_rel_diff"] > 1e-3


def test_cli_export_features_only(tmp_path, capsys) -> None:
    out = tmp_path / "backbone.onnx"
    code = main(
        [
            "export",
            "--model=biformer_tiny",
            f"--weights={GOLDEN_PATH}",
            "--features-only",
            "--out-indices=1,2,3",
            "--n-win=8",
            *_TINY_ARCH,
            "--img-size=200x232",
            f"--output={out}",
        ]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    assert re.search(r"per output: feat1 \S+, feat2 \S+, feat3 \S+", stdout), stdout
    manifest = json.loads((tmp_path / "backbone.manifest.json").read_text())
    assert manifest["model_kind"] == "backbone" and manifest["output"] is None
    assert [(o["name"], o["channels"], o["stride"], o["stage"]) for o in manifest["outputs"]] == [
        ("feat1", 32, 8, 1),
        ("feat2", 48, 16, 2),
        ("feat3", 64, 32, 3),
    ]
    assert manifest["outputs"][0]["shape"] == ["batch", 32, "feat1_height", "feat1_width"]
    assert manifest["input"]["shape"] == ["batch", 3, "height", "width"]
    assert manifest["config"]["features_only"] and manifest["config"]["out_indices"] == [1, 2, 3]
    assert set(manifest["verification"]["outputs"]) == {"feat1", "feat2", "feat3"}
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["feat1", "feat2", "feat3"]


def test_classifier_manifest_outputs(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            [
                "export",
                "--model=biformer_tiny",
                *_TINY_ARCH,
                "--num-classes=10",
                f"--output={tmp_path / 'c.onnx'}",
            ]
        )
    assert code == 0
    manifest = json.loads((tmp_path / "c.manifest.json").read_text())
    assert manifest["model_kind"] == "classifier"
    assert manifest["output"]["name"] == "logits" and manifest["outputs"] == [manifest["output"]]


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--out-indices=0,1"], r"add --features-only"),
        (["--features-only", "--out-indices=0,4"], r"distinct stage indices out of 0,1,2,3"),
        (["--features-only", "--out-indices=a"], r"distinct stage indices"),
    ],
    ids=["no_features_only", "index_4", "not_a_number"],
)
def test_cli_bad_out_indices(tmp_path, capsys, extra: list[str], pattern: str) -> None:
    out = tmp_path / "m.onnx"
    try:
        code = main(["export", "--model=biformer_tiny", *extra, f"--output={out}"])
    except SystemExit as err:  # argparse refuses a malformed value itself
        code = err.code
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err) and "Traceback" not in err, err
    assert not out.exists()


def _rewrite_and_compare(
    tmp_path: Path, model: torch.nn.Module, side: int, sizes: list[tuple[int, int]]
) -> int:
    """Export at side x side, rewrite, compare all outputs in cpu_session with PyTorch; the plugin count."""
    path = tmp_path / "backbone.onnx"
    export_onnx(model, path, img_size=side, verify_batches=(1,))
    plugin = tmp_path / "backbone.plugin.onnx"
    report = rewrite_onnx(path, plugin, input_shapes={"input": [1, 3, side, side]})
    assert report.output_check is not None and report.output_check.comparison.passed
    graph = onnx.load(str(plugin)).graph
    assert [o.name for o in graph.output] == FEATURES
    plugins = sum(n.op_type == CONTRACT.op_type for n in graph.node)
    session = edge_biformer.cpu_session(plugin)
    generator = torch.Generator().manual_seed(1)
    for height, width in sizes:
        x = torch.randn(1, 3, height, width, generator=generator)
        with torch.no_grad():
            refs = [r.numpy() for r in model(x)]
        outs = session.run(FEATURES, {"input": x.numpy()})
        for name, out, ref in zip(FEATURES, outs, refs, strict=True):
            assert out.shape == ref.shape, name
            assert _rel(out, ref) <= 1e-4, f"{name} at {height}x{width}: {_rel(out, ref):.2e}"
    return plugins


def test_rewrite_backbone_512_n_win16(tmp_path) -> None:
    """A 4-output graph at 512x512, n_win 16: one plugin node per routed block, all outputs kept."""
    torch.manual_seed(0)
    model = edge_biformer.create_model("biformer_tiny", features_only=True, n_win=16, **TINY)
    routed_blocks = sum(d for d, k in zip(TINY["depth"], model.config["topks"], strict=True) if k > 0)
    assert _rewrite_and_compare(tmp_path, model, 512, [(512, 512), (200, 232)]) == routed_blocks == 4


@pytest.mark.slow
def test_rewrite_biformer_small_512_n_win16(tmp_path) -> None:
    """BiFormer-S as the official detection configuration builds it (n_win 16), at 512x512."""
    torch.manual_seed(0)
    model = edge_biformer.create_model("biformer_small", features_only=True, n_win=16)
    assert _rewrite_and_compare(tmp_path, model, 512, [(512, 512)]) == 4 + 4 + 18


@pytest.mark.slow
def test_detection_size_800x1344(tmp_path) -> None:
    """The tiny backbone's auto_pad graph at the detection size 800x1344 (n_win 16) and another size."""
    torch.manual_seed(0)
    model = edge_biformer.create_model("biformer_tiny", features_only=True, n_win=16, **TINY)
    path = tmp_path / "backbone.onnx"
    result = export_onnx(model, path, img_size=(800, 1344), verify_batches=(1,))
    assert result.verification is not None and result.verification.passed
    x = torch.randn(1, 3, 608, 1088)
    with torch.no_grad():
        refs = [r.numpy() for r in model(x)]
    for name, out, ref in zip(
        FEATURES, _session(path).run(FEATURES, {"input": x.numpy()}), refs, strict=True
    ):
        assert _rel(out, ref) <= 1e-4, name
