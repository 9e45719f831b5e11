"""BiFormer and DeBiFormer models: the official variants and :func:`create_model`.

``list_models()`` and ``VARIANTS`` come from :mod:`.registry` without importing torch; the model
classes and :func:`create_model` (:mod:`.factory`) load PyTorch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_biformer.models.registry import VARIANTS, list_models

__all__ = [
    "VARIANTS",
    "BiFormer",
    "BiFormerBackbone",
    "BiLevelRoutingAttention",
    "Block",
    "DeBiFormer",
    "DeformableBiLevelRoutingAttention",
    "create_model",
    "list_models",
    "load_weights",
    "model_config",
    "read_state_dict",
]

if TYPE_CHECKING:
    from edge_biformer.models.biformer import BiFormer, BiFormerBackbone, Block
    from edge_biformer.models.bra import BiLevelRoutingAttention
    from edge_biformer.models.checkpoint import load_weights, read_state_dict
    from edge_biformer.models.debiformer import DeBiFormer, DeformableBiLevelRoutingAttention
    from edge_biformer.models.factory import create_model, model_config

_LAZY = {
    "BiFormer": "biformer",
    "BiFormerBackbone": "biformer",
    "Block": "biformer",
    "BiLevelRoutingAttention": "bra",
    "DeBiFormer": "debiformer",
    "DeformableBiLevelRoutingAttention": "debiformer",
    "load_weights": "checkpoint",
    "read_state_dict": "checkpoint",
    "create_model": "factory",
    "model_config": "factory",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"edge_biformer.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'edge_biformer.models' has no attribute {name!r}")
