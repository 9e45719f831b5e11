"""BiFormer models: the official variants and :func:`create_model`."""

from __future__ import annotations

import inspect
import os
from copy import deepcopy
from typing import Any

from torch import nn

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.models.biformer import BiFormer, Block
from edge_biformer.models.bra import BiLevelRoutingAttention
from edge_biformer.models.checkpoint import load_weights, read_state_dict

__all__ = [
    "VARIANTS",
    "BiFormer",
    "BiLevelRoutingAttention",
    "Block",
    "create_model",
    "list_models",
    "load_weights",
    "read_state_dict",
]

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

_ARGUMENTS = tuple(p for p in inspect.signature(BiFormer.__init__).parameters if p != "self")


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(VARIANTS)


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of variant ``name`` with ``overrides`` applied (validated)."""
    if name not in VARIANTS:
        raise EdgeBiformerError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(_ARGUMENTS))
    if unknown:
        raise EdgeBiformerError(
            f"unknown architecture argument(s) {', '.join(unknown)} for {name}; "
            f"the BiFormer constructor takes: {', '.join(_ARGUMENTS)}"
        )
    config = deepcopy(VARIANTS[name])
    config.update(overrides)
    return config


def create_model(name: str, weights: str | os.PathLike[str] | None = None, **overrides: Any) -> nn.Module:
    """Build a BiFormer variant in eval mode, optionally loading a checkpoint.

    Args:
        name: ``biformer_tiny``, ``biformer_small`` or ``biformer_base``.
        weights: path of a checkpoint: a raw state dict, ``{"model": ...}``, ``{"model_ema": ...}``
            or a ``backbone.``-prefixed dense-task checkpoint. Loaded with ``weights_only=True``.
        **overrides: official constructor arguments replacing the variant's (``depth``,
            ``embed_dim``, ``qk_dims``, ``mlp_ratios``, ``n_win``, ``topks``, ``head_dim``,
            ``num_classes``, ``auto_pad``, ...), and ``gather_mode`` (``"index"`` or ``"expand"``).

    Returns:
        The model, in eval mode, on the CPU.
    """
    config = model_config(name, **overrides)
    try:
        model = BiFormer(**config)
    except (ValueError, TypeError, ZeroDivisionError) as err:  # e.g. --arch depth=2, head_dim=0
        raise EdgeBiformerError(f"cannot build {name} with {overrides or 'its defaults'}: {err}") from None
    if weights is not None:
        load_weights(model, weights, variant=name if not overrides else f"{name} with {overrides}")
    model.config = config  # type: ignore[assignment]
    model.variant = name  # type: ignore[assignment]
    return model.eval()
