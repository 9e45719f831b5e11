"""The registry of models: names and architectures, without importing torch.

The CLI lists and validates model names from here (``--model``) without loading PyTorch;
:func:`edge_biformer.models.create_model` builds them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FAMILIES", "VARIANTS", "family_of", "list_models"]

_COMMON: dict[str, Any] = {
    "n_win": 7,
    "kv_downsample_mode": "identity",
    "kv_per_wins": [-1, -1, -1, -1],
    "topks": [1, 4, 16, -2],
    "side_dwconv": 5,
    "before_attn_dwconv": 3,
    "layer_scale_init_value": -1,
    "head_dim": 32,
    "param_routing": False,
    "diff_routing": False,
    "soft_routing": False,
    "pre_norm": True,
    "pe": None,
    "mlp_ratios": [3, 3, 3, 3],
}

#: Architecture of the released ImageNet-1k models (official ``biformer_{tiny,small,base}``).
VARIANTS: dict[str, dict[str, Any]] = {
    "biformer_tiny": {
        **_COMMON,
        "depth": [2, 2, 8, 2],
        "embed_dim": [64, 128, 256, 512],
        "qk_dims": [64, 128, 256, 512],
    },
    "biformer_small": {
        **_COMMON,
        "depth": [4, 4, 18, 4],
        "embed_dim": [64, 128, 256, 512],
        "qk_dims": [64, 128, 256, 512],
    },
    "biformer_base": {
        **_COMMON,
        "depth": [4, 4, 18, 4],
        "embed_dim": [96, 192, 384, 768],
        "qk_dims": [96, 192, 384, 768],
    },
}


_DEBI_COMMON: dict[str, Any] = {
    **_COMMON,
    "topks": [4, 8, 16, -2],
}

#: Architecture of the official ``debi_{tiny,small,base}`` (maclong01/DeBiFormer). Unlike the
#: official factories, :func:`~edge_biformer.models.create_model` honours overrides such as
#: ``num_classes``. ``drop_path_rate`` (training only) is left out.
DEBIFORMER_VARIANTS: dict[str, dict[str, Any]] = {
    "debiformer_tiny": {
        **_DEBI_COMMON,
        "depth": [1, 1, 4, 1],
        "embed_dim": [64, 128, 256, 512],
        "qk_dims": [64, 128, 256, 512],
        "mlp_ratios": [3, 3, 3, 3],
        "param_size": "tiny",
    },
    "debiformer_small": {
        **_DEBI_COMMON,
        "depth": [2, 2, 9, 3],
        "embed_dim": [64, 128, 256, 512],
        "qk_dims": [64, 128, 256, 512],
        "mlp_ratios": [3, 3, 3, 2],
        "param_size": "small",
    },
    "debiformer_base": {
        **_DEBI_COMMON,
        "depth": [2, 2, 9, 2],
        "embed_dim": [96, 192, 384, 768],
        "qk_dims": [96, 192, 384, 768],
        "mlp_ratios": [3, 3, 3, 3],
        "param_size": "base",
    },
}

#: The model family (and so the model class) of every registry name.
FAMILIES: dict[str, str] = {
    **{name: "biformer" for name in VARIANTS},
    **{name: "debiformer" for name in DEBIFORMER_VARIANTS},
}
VARIANTS.update(DEBIFORMER_VARIANTS)


def family_of(name: str) -> str:
    """``"biformer"`` or ``"debiformer"`` for a registry name (KeyError for others)."""
    return FAMILIES[name]


def list_models() -> list[str]:
    """Names accepted by :func:`edge_biformer.models.create_model`."""
    return sorted(VARIANTS)
