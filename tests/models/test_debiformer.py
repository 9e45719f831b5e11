"""DeBiFormer port: parameter counts, official state_dict layouts, golden outputs, checkpoints, quirks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edge_biformer
from edge_biformer.errors import CheckpointError, EdgeBiformerError
from edge_biformer.models.debiformer import DeformableBiLevelRoutingAttention
from edge_biformer.testing import assert_close
from tests.conftest import DEBI_DIR, DEBI_SMALL_CFG, REFERENCE_DIR, SMALL_W7

PARAMS = {"debiformer_tiny": 21_495_598, "debiformer_small": 44_008_028, "debiformer_base": 95_501_926}
#: Routed attentions (one TopK each) per model, SPEC.md section 4.
ROUTED = {"debiformer_tiny": 14, "debiformer_small": 32, "debiformer_base": 30}
CFG_PTH = DEBI_DIR / "debiformer_small_cfg.pth"


def _official_layout(path) -> dict[str, str]:
    layout = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        layout[key] = shape
    return layout


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_and_state_dict_layout(name: str) -> None:
    model = edge_biformer.create_model(name)
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    ours = {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    assert ours == _official_layout(DEBI_DIR / f"{name.replace('debiformer', 'debi')}.keys.tsv")
    routed = [m for m in model.modules() if hasattr(m, "router")]
    assert len(routed) == ROUTED[name]


def test_small_cfg_layout() -> None:
    model = edge_biformer.create_model("debiformer_tiny", **DEBI_SMALL_CFG)
    assert sum(p.numel() for p in model.parameters()) == 850_580
    ours = {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    assert ours == _official_layout(DEBI_DIR / "debiformer_small_cfg.keys.tsv")


@pytest.mark.parametrize("gather_mode", ["index", "expand"])
def test_small_cfg_golden(debi_golden: dict[str, np.ndarray], gather_mode: str) -> None:
    model = edge_biformer.create_model(
        "debiformer_tiny", weights=CFG_PTH, gather_mode=gather_mode, **DEBI_SMALL_CFG
    )
    with torch.no_grad():
        y = model(torch.from_numpy(debi_golden["x"])).numpy()
    assert_close(y, debi_golden["y"], max_rel=1e-4)
    assert y.argmax() == debi_golden["y"].argmax()


def _cfg_state() -> dict[str, torch.Tensor]:
    return torch.load(CFG_PTH, weights_only=True)["model"]


@pytest.mark.parametrize("wrap", ["raw", "model", "model_ema", "ddp_state_dict"])
def test_checkpoint_formats(tmp_path, debi_golden, wrap: str) -> None:
    state = _cfg_state()
    if wrap == "raw":
        obj = state
    elif wrap == "ddp_state_dict":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    else:
        obj = {wrap: state, "optimizer": {"lr": torch.tensor(0.1)}}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = edge_biformer.create_model("debiformer_tiny", weights=path, **DEBI_SMALL_CFG)
    with torch.no_grad():
        y = model(torch.from_numpy(debi_golden["x"])).numpy()
    assert_close(y, debi_golden["y"], max_rel=1e-4)


def test_biformer_checkpoint_to_debiformer() -> None:
    with pytest.raises(CheckpointError) as info:
        edge_biformer.create_model("debiformer_tiny", weights=REFERENCE_DIR / "official_small_w7.pth")
    message = str(info.value)
    assert "official_small_w7.pth holds a BiFormer model" in message
    assert "debiformer_tiny is a DeBiFormer" in message and "--model biformer_tiny" in message


def test_debiformer_checkpoint_to_biformer() -> None:
    with pytest.raises(CheckpointError) as info:
        edge_biformer.create_model("biformer_tiny", weights=CFG_PTH, **SMALL_W7)
    message = str(info.value)
    assert "debiformer_small_cfg.pth holds a DeBiFormer model" in message
    assert "is a BiFormer" in message and "--model debiformer_tiny" in message


def test_checkpoint_of_another_variant() -> None:
    with pytest.raises(CheckpointError, match=r"debiformer_small_cfg\.pth does not fit debiformer_tiny \("):
        edge_biformer.create_model("debiformer_tiny", weights=CFG_PTH)


def test_nan_checkpoint_loads_but_is_named_by_export(tmp_path) -> None:
    """A checkpoint with NaN weights is refused by name where the pipeline reads it (export)."""
    from edge_biformer.check.finite import require_finite_module

    state = _cfg_state()
    state["stages.0.0.attn2.rpe_table"][0, 0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save({"model": state}, path)
    model = edge_biformer.create_model("debiformer_tiny", weights=path, **DEBI_SMALL_CFG)
    with pytest.raises(EdgeBiformerError, match=r"nan\.pth has NaN/Inf.*stages\.0\.0\.attn2\.rpe_table"):
        require_finite_module(model, str(path))


def test_overrides_are_honoured() -> None:
    """Unlike the official factories, the constructor arguments are used (num_classes here)."""
    model = edge_biformer.create_model("debiformer_tiny", num_classes=10)
    assert model.head.out_features == 10
    assert model.config["num_classes"] == 10
    with pytest.raises(EdgeBiformerError, match=r"unknown architecture argument\(s\) n_windows.*DeBiFormer"):
        edge_biformer.create_model("debiformer_tiny", n_windows=8)


def test_bad_architecture_arguments() -> None:
    with pytest.raises(EdgeBiformerError, match=r"DBRA has no settings for width 96 with param_size='tiny'"):
        edge_biformer.create_model(
            "debiformer_tiny", embed_dim=[96, 192, 384, 768], qk_dims=[96, 192, 384, 768]
        )
    with pytest.raises(EdgeBiformerError, match=r"topks entries must be one of"):
        edge_biformer.create_model("debiformer_tiny", topks=[4, 8, 16, -1])


def test_quirks_are_kept() -> None:
    """The structural quirks of SPEC.md section 8 (the numeric ones are pinned by the goldens)."""
    model = edge_biformer.create_model("debiformer_small")
    dbras = [m for m in model.modules() if isinstance(m, DeformableBiLevelRoutingAttention)]
    for dbra in dbras:
        assert dbra.conv_offset_q[1].norm.eps == 1e-5  # offset-network LayerNorm
        assert dbra.norm.eps == dbra.norm2.eps == 1e-6
        assert dbra.conv_offset_q[3].out_channels == 1  # one offset channel for both axes
        assert dbra.scale == pytest.approx(dbra.dim**-0.5)  # whole width, not head_dim
    last = model.stages[3][0]
    assert last.attn1.topk == last.attn2.topk == 49
    assert last.attn2.mlp.linear1[0].out_channels == 512  # small: stage-4 inner MLP ratio 1
    assert last.mlp1.linear1[0].out_channels == 1024  # block MLP ratio 2
    assert model.stages[0][0].attn1.topk == 1 and model.stages[1][0].attn1.topk == 4


def test_sampling_grid_clamps_and_moves_both_axes() -> None:
    dbra = edge_biformer.create_model("debiformer_tiny", **DEBI_SMALL_CFG).stages[0][0].attn2
    offset = torch.zeros(1, 1, 7, 7)
    offset[0, 0, 3, 3] = 0.1
    offset[0, 0, 6, 6] = 5.0
    pos = dbra.sampling_grid(offset)
    assert pos.dtype == torch.float32 and pos.shape == (1, 7, 7, 2)
    centre = (3 + 0.5) / 7 * 2 - 1
    assert pos[0, 3, 3].tolist() == pytest.approx([centre + 0.1, centre + 0.1])
    assert pos[0, 6, 6].tolist() == [1.0, 1.0]
    assert pos[0, 0, 1].tolist() == pytest.approx([(1.5 / 7) * 2 - 1, (0.5 / 7) * 2 - 1])  # (x, y)


def _random_cfg(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    model = edge_biformer.create_model("debiformer_tiny", **{**DEBI_SMALL_CFG, **overrides})
    model.load_state_dict(_cfg_state())
    return model


def test_index_gather_equals_expand_gather_at_448() -> None:
    """448: 2x2 agents per region, interpolated relative-position tables; both data paths agree."""
    model = _random_cfg()
    official = _random_cfg(gather_mode="expand")
    x = torch.randn(2, 3, 448, 448)
    with torch.no_grad():
        ours, ref = model(x), official(x)
    assert ours.shape == (2, 10)
    assert torch.isfinite(ours).all()
    assert_close(ours, ref, max_rel=1e-5)


def test_wrong_input_size() -> None:
    model = _random_cfg()
    with pytest.raises(ValueError, match=r"not a multiple of n_win=7"), torch.no_grad():
        model(torch.randn(1, 3, 196, 196))
