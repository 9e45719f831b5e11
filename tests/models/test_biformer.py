"""BiFormer port: architecture facts, official state_dict layout, golden outputs, checkpoint formats."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import edge_biformer
from edge_biformer.errors import CheckpointError, EdgeBiformerError
from edge_biformer.testing import assert_close
from tests.conftest import REFERENCE_DIR, SMALL_W7

PARAMS = {"biformer_tiny": 13_142_760, "biformer_small": 25_536_232, "biformer_base": 56_804_968}
GMACS_224 = {"biformer_tiny": 2.216, "biformer_small": 4.464, "biformer_base": 9.759}


def _official_layout(name: str) -> dict[str, str]:
    layout = {}
    for line in (REFERENCE_DIR / f"{name}.keys.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        layout[key] = shape
    return layout


def test_list_models() -> None:
    assert edge_biformer.list_models() == [
        "biformer_base",
        "biformer_small",
        "biformer_tiny",
        "debiformer_base",
        "debiformer_small",
        "debiformer_tiny",
    ]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_and_state_dict_layout(name: str) -> None:
    model = edge_biformer.create_model(name)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    ours = {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    assert ours == _official_layout(name)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_backbone_state_dict_layout(name: str) -> None:
    """The official BiFormer_mm: the classifier's keys less head and norm, plus extra_norms.{0..3}."""
    model = edge_biformer.create_model(name, features_only=True, n_win=16)
    ours = {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    official = {k: v for k, v in _official_layout(name).items() if not k.startswith(("head.", "norm."))}
    # the stage widths: the last BatchNorm of the stem (index 4) and of each downsampling (index 1)
    widths = [official[f"downsample_layers.{i}.{4 if i == 0 else 1}.weight"] for i in range(4)]
    for i, width in enumerate(widths):
        official[f"extra_norms.{i}.weight"] = official[f"extra_norms.{i}.bias"] = width
    assert ours == official


@pytest.mark.parametrize("name", sorted(GMACS_224))
def test_flops_at_224(name: str) -> None:
    model = edge_biformer.create_model(name)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 224, 224))
    gmacs = counter.get_total_flops() / 2 / 1e9  # the counter reports 2 FLOPs per multiply-accumulate
    assert gmacs == pytest.approx(GMACS_224[name], rel=0.02)


@pytest.mark.parametrize("gather_mode", ["index", "expand"])
def test_official_small_w7_golden(golden: dict[str, np.ndarray], gather_mode: str) -> None:
    model = edge_biformer.create_model(
        "biformer_tiny", weights=REFERENCE_DIR / "official_small_w7.pth", gather_mode=gather_mode, **SMALL_W7
    )
    with torch.no_grad():
        y = model(torch.from_numpy(golden["x"])).numpy()
    assert_close(y, golden["y"], max_rel=1e-4)
    assert y.argmax() == golden["y"].argmax()


def _small_w7_state() -> dict[str, torch.Tensor]:
    return torch.load(REFERENCE_DIR / "official_small_w7.pth", weights_only=True)["model"]


@pytest.mark.parametrize("wrap", ["raw", "model", "model_ema", "ddp_state_dict"])
def test_checkpoint_formats(tmp_path, golden, wrap: str) -> None:
    state = _small_w7_state()
    if wrap == "raw":
        obj = state
    elif wrap == "ddp_state_dict":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    else:
        obj = {wrap: state, "optimizer": {"lr": torch.tensor(0.1)}}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = edge_biformer.create_model("biformer_tiny", weights=path, **SMALL_W7)
    with torch.no_grad():
        y = model(torch.from_numpy(golden["x"])).numpy()
    assert_close(y, golden["y"], max_rel=1e-4)


def test_dense_backbone_checkpoint(tmp_path, golden) -> None:
    state = _small_w7_state()
    dense = {f"backbone.{k}": v for k, v in state.items() if not k.startswith(("head.", "norm."))}
    dense.update({f"backbone.extra_norms.{i}.weight": torch.ones(8) for i in range(4)})
    dense["neck.fpn.weight"] = torch.zeros(3)
    path = tmp_path / "mask_rcnn_biformer.pth"
    torch.save({"state_dict": dense, "meta": {"epoch": torch.tensor(12)}}, path)
    with pytest.warns(UserWarning, match="dense-task backbone"):
        model = edge_biformer.create_model("biformer_tiny", weights=path, **SMALL_W7)
    reference = _small_w7_state()
    ours = model.state_dict()
    for key, value in reference.items():
        if not key.startswith(("head.", "norm.")):
            assert torch.equal(ours[key], value), key


def test_missing_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match=r"does not exist"):
        edge_biformer.create_model("biformer_tiny", weights=tmp_path / "nope.pth")


def test_not_a_checkpoint(tmp_path) -> None:
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth could not be read"):
        edge_biformer.create_model("biformer_tiny", weights=path)


def test_truncated_checkpoint(tmp_path) -> None:
    data = (REFERENCE_DIR / "official_small_w7.pth").read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth could not be read.*truncated"):
        edge_biformer.create_model("biformer_tiny", weights=path, **SMALL_W7)


def test_checkpoint_of_another_variant(tmp_path) -> None:
    with pytest.raises(CheckpointError) as info:
        edge_biformer.create_model("biformer_tiny", weights=REFERENCE_DIR / "official_small_w7.pth")
    message = str(info.value)
    assert "official_small_w7.pth does not fit biformer_tiny" in message
    assert "with other shapes" in message and "missing" in message
    assert "downsample_layers.0.0.weight (checkpoint (16, 3, 3, 3), model (32, 3, 3, 3))" in message


def test_dict_without_weights(tmp_path) -> None:
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match=r"holds no model weights.*found \['args', 'epoch'\]"):
        edge_biformer.create_model("biformer_tiny", weights=path)


def test_unknown_model_and_argument() -> None:
    with pytest.raises(EdgeBiformerError, match=r"unknown model 'biformer_huge'.*biformer_base"):
        edge_biformer.create_model("biformer_huge")
    with pytest.raises(EdgeBiformerError, match=r"unknown architecture argument\(s\) n_windows"):
        edge_biformer.create_model("biformer_tiny", n_windows=8)


def _random_small(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = edge_biformer.create_model("biformer_tiny", **{**SMALL_W7, **overrides})
    # Non-trivial norms and biases so that every path matters.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_win": 8, "auto_pad": True},
        {"soft_routing": True},
        {"param_routing": True, "diff_routing": True},
        {"kv_downsample_mode": "ada_avgpool", "kv_per_wins": [2, 2, 1, 1]},
        {"kv_downsample_mode": "maxpool", "kv_downsample_ratios": [4, 2, 1, 1]},
        {"param_attention": "qkv", "mlp_dwconv": True, "layer_scale_init_value": 1e-2},
        {"topks": [1, 4, 0, -1], "pre_norm": False, "side_dwconv": 0, "before_attn_dwconv": 0},
    ],
    ids=["default", "autopad", "soft", "param_routing", "ada_avgpool", "maxpool", "qkv_dwconv_ls", "mixers"],
)
def test_index_gather_equals_expand_gather(overrides) -> None:
    """The deployment data path computes the official one's values for every supported option."""
    model = _random_small(**overrides)
    official = edge_biformer.create_model("biformer_tiny", **{**SMALL_W7, **overrides}, gather_mode="expand")
    official.load_state_dict(model.state_dict())
    size = (200, 232) if overrides.get("auto_pad") else (224, 224)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours, ref = model(x), official(x)
    assert_close(ours, ref, max_rel=1e-5)


def test_wrong_size_without_auto_pad() -> None:
    model = _random_small()
    with pytest.raises(ValueError, match=r"not a multiple of n_win=7.*auto_pad=True"), torch.no_grad():
        model(torch.randn(1, 3, 200, 200))


def test_no_warnings_on_forward() -> None:
    model = _random_small()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model(torch.randn(1, 3, 224, 224))
