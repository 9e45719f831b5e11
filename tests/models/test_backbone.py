"""Dense backbones (``features_only=True``) against the official mmdet/mmseg ``BiFormer_mm``.

``tests/data/biformer_backbone_golden.pt`` holds the official backbones' outputs at padded sizes
and their weights as an mmdet-style ``backbone.`` checkpoint (see tests/data/README.md).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import edge_biformer
from edge_biformer.errors import CheckpointError, EdgeBiformerError
from tests.conftest import REPO_ROOT

GOLDEN_PATH = REPO_ROOT / "tests" / "data" / "biformer_backbone_golden.pt"


def golden_script() -> ModuleType:
    """``scripts/make_backbone_golden.py`` (its closed-form input; it imports only torch at load)."""
    spec = importlib.util.spec_from_file_location(
        "make_backbone_golden", REPO_ROOT / "scripts" / "make_backbone_golden.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def backbone_golden() -> dict[str, Any]:
    """The golden file and the input of each case."""
    data = torch.load(GOLDEN_PATH, weights_only=True)
    script = golden_script()
    for case in data["cases"]:
        case["x"] = script.golden_input(*case["img_size"])
    return data


def build(
    golden: dict[str, Any], n_win: int, weights: Path | None = GOLDEN_PATH, **extra: Any
) -> torch.nn.Module:
    """Our backbone with the golden configuration, as ``create_model`` users build it."""
    return edge_biformer.create_model(
        "biformer_tiny", weights=weights, features_only=True, **{**golden["config"], "n_win": n_win, **extra}
    )


def rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |actual - expected| / max |expected|``."""
    return float((actual - expected).abs().max() / expected.abs().max())


def test_golden_file_is_small_and_padded(backbone_golden) -> None:
    assert GOLDEN_PATH.stat().st_size < 1_000_000
    assert {c["n_win"] for c in backbone_golden["cases"]} == {8, 16}
    for case in backbone_golden["cases"]:
        n_win = case["n_win"]
        sides = [o.shape[2:] for o in case["outputs"][:3]]  # the routed stages (topks 1, 4, 16)
        assert all(h % n_win and w % n_win for h, w in sides), "every routed stage must need padding"


@pytest.mark.parametrize("case_index", [0, 1], ids=["n_win8_200x232", "n_win16_104x136"])
def test_official_backbone_golden(backbone_golden, case_index: int) -> None:
    case = backbone_golden["cases"][case_index]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key used: no "keep their initial values" warning
        model = build(backbone_golden, case["n_win"])
    with torch.no_grad():
        outputs = model(case["x"])
    assert len(outputs) == 4
    for i, (out, ref) in enumerate(zip(outputs, case["outputs"], strict=True)):
        assert out.shape == ref.shape, f"stage {i}"
        assert rel(out, ref) <= 1e-5, f"stage {i}: {rel(out, ref):.2e}"


def test_checkpoint_keys_all_used(backbone_golden) -> None:
    model = build(backbone_golden, 8)
    checkpoint = torch.load(GOLDEN_PATH, weights_only=True)["state_dict"]
    backbone_keys = {k[len("backbone.") :] for k in checkpoint if k.startswith("backbone.")}
    assert backbone_keys == set(model.state_dict())
    assert not any(k.startswith(("head.", "norm.")) for k in model.state_dict())
    assert [k for k in model.state_dict() if k.startswith("extra_norms.")] == [
        f"extra_norms.{i}.{p}" for i in range(4) for p in ("weight", "bias")
    ]


def test_feature_info_and_config(backbone_golden) -> None:
    model = build(backbone_golden, 8, weights=None)
    assert [(f["num_chs"], f["reduction"]) for f in model.feature_info] == [
        (16, 4),
        (32, 8),
        (48, 16),
        (64, 32),
    ]
    assert model.config["features_only"] is True and model.config["out_indices"] == [0, 1, 2, 3]
    assert model.config["auto_pad"] is True
    again = edge_biformer.create_model("biformer_tiny", **model.config)  # the manifest's rebuild
    assert type(again) is type(model) and again.out_indices == model.out_indices


def test_out_indices_subset(backbone_golden) -> None:
    case = backbone_golden["cases"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build(backbone_golden, 8, out_indices=(2, 1))
    assert len(model.stages) == 3  # stage 3 is not built
    assert sorted(model.extra_norms) == ["1", "2"]
    assert [f["reduction"] for f in model.feature_info] == [16, 8]
    with torch.no_grad():
        outputs = model(case["x"])
    assert len(outputs) == 2
    assert rel(outputs[0], case["outputs"][2]) <= 1e-5
    assert rel(outputs[1], case["outputs"][1]) <= 1e-5


@pytest.mark.parametrize("bad", [(), (0, 0), (4,), (-1, 2)])
def test_bad_out_indices(bad) -> None:
    with pytest.raises(EdgeBiformerError, match="out_indices"):
        edge_biformer.create_model("biformer_tiny", features_only=True, out_indices=bad)


def test_out_indices_needs_features_only() -> None:
    with pytest.raises(EdgeBiformerError, match="features_only=True"):
        edge_biformer.create_model("biformer_tiny", out_indices=(0, 1))


def _save_backbone(tmp_path: Path, drop: str | None = None, add: str | None = None) -> Path:
    state = dict(torch.load(GOLDEN_PATH, weights_only=True)["state_dict"])
    if drop:
        del state[drop]
    if add:
        state[add] = torch.zeros(3)
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": state}, path)
    return path


def test_missing_backbone_key_is_named(tmp_path, backbone_golden) -> None:
    path = _save_backbone(tmp_path, drop="backbone.extra_norms.2.weight")
    with pytest.raises(CheckpointError, match=r"1 missing: extra_norms\.2\.weight") as err:
        build(backbone_golden, 8, weights=path)
    assert str(path) in str(err.value)


def test_unexpected_backbone_key_is_named(tmp_path, backbone_golden) -> None:
    path = _save_backbone(tmp_path, add="backbone.stages.0.0.attn.extra_proj.weight")
    with pytest.raises(CheckpointError, match=r"1 unexpected: stages\.0\.0\.attn\.extra_proj\.weight"):
        build(backbone_golden, 8, weights=path)


def test_backbone_of_another_width_fails(backbone_golden) -> None:
    with pytest.raises(CheckpointError, match="other shapes"):
        edge_biformer.create_model("biformer_small", weights=GOLDEN_PATH, features_only=True)


def test_classification_checkpoint_into_backbone(tmp_path, backbone_golden) -> None:
    """As the official code initialises a detector from ImageNet weights: the extra norms stay at init."""
    config = {**backbone_golden["config"], "n_win": 8}
    classifier = edge_biformer.create_model("biformer_tiny", num_classes=10, **config)
    path = tmp_path / "cls.pth"
    torch.save({"model": classifier.state_dict()}, path)
    with pytest.warns(UserWarning, match="per-stage norms"):
        model = edge_biformer.create_model("biformer_tiny", weights=path, features_only=True, **config)
    assert torch.equal(model.extra_norms["3"].weight, torch.ones(64))
    assert torch.equal(model.stages[2][1].mlp[0].weight, classifier.stages[2][1].mlp[0].weight)


def test_backbone_checkpoint_into_classifier_still_loads(backbone_golden) -> None:
    config = {**backbone_golden["config"], "n_win": 8}
    with pytest.warns(UserWarning, match="classifier head and final norm"):
        model = edge_biformer.create_model("biformer_tiny", weights=GOLDEN_PATH, num_classes=10, **config)
    backbone = build(backbone_golden, 8)
    assert torch.equal(model.stages[0][0].attn.qkv.qkv.weight, backbone.stages[0][0].attn.qkv.qkv.weight)


def test_without_auto_pad_a_padded_size_is_refused(backbone_golden) -> None:
    model = build(backbone_golden, 8, auto_pad=False)
    with pytest.raises(ValueError, match="auto_pad"):
        model(backbone_golden["cases"][0]["x"])


def test_mmdet_checkpoint_with_meta_and_optimizer(tmp_path, backbone_golden) -> None:
    """An mmcv runner checkpoint: meta (numpy scalars in hook_msgs), optimizer state, neck and head keys."""
    import numpy as np

    state = dict(torch.load(GOLDEN_PATH, weights_only=True)["state_dict"])
    state["bbox_head.retina_cls.weight"] = torch.zeros(9, 4, 3, 3)
    path = tmp_path / "retinanet.pth"
    meta = {"epoch": 12, "CLASSES": ("person", "car"), "hook_msgs": {"best_score": np.float64(0.41)}}
    torch.save({"meta": meta, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    case = backbone_golden["cases"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build(backbone_golden, 8, weights=path)
    with torch.no_grad():
        assert rel(model(case["x"])[3], case["outputs"][3]) <= 1e-5


def test_official_backbone_config_dict(backbone_golden) -> None:
    """The official config's backbone=dict(...) arguments (type aside) are accepted as they are."""
    official = {
        **backbone_golden["config"],
        "n_win": 16,
        "num_classes": 80,
        "use_checkpoint_stages": [],
        "drop_path_rate": 0.2,
        "disable_bn_grad": False,
        "norm_eval": True,
        "pretrained": None,
    }
    model = edge_biformer.create_model(
        "biformer_tiny", weights=GOLDEN_PATH, features_only=True, out_indices=(0, 1, 2, 3), **official
    )
    case = backbone_golden["cases"][1]
    with torch.no_grad():
        assert rel(model(case["x"])[0], case["outputs"][0]) <= 1e-5
    with pytest.raises(EdgeBiformerError, match="weights=<path>"):
        edge_biformer.create_model("biformer_tiny", features_only=True, pretrained="x.pth")
    with pytest.raises(EdgeBiformerError, match="norm_eval need"):
        edge_biformer.create_model("biformer_tiny", norm_eval=True)
