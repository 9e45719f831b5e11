"""Building registry models: the official constructor arguments with overrides, and checkpoints."""

from __future__ import annotations

import inspect
import os
from copy import deepcopy
from typing import Any

from torch import nn

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.models.biformer import BiFormer
from edge_biformer.models.checkpoint import load_weights
from edge_biformer.models.debiformer import DeBiFormer
from edge_biformer.models.registry import VARIANTS, family_of, list_models

__all__ = ["create_model", "model_config"]

#: The model class of each family.
_CLASSES: dict[str, type[nn.Module]] = {"biformer": BiFormer, "debiformer": DeBiFormer}
_ARGUMENTS = {
    family: tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")
    for family, cls in _CLASSES.items()
}
_LABELS = {"biformer": "BiFormer", "debiformer": "DeBiFormer"}


def model_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of variant ``name`` with ``overrides`` applied (validated)."""
    if name not in VARIANTS:
        raise EdgeBiformerError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    family = family_of(name)
    unknown = sorted(set(overrides) - set(_ARGUMENTS[family]))
    if unknown:
        raise EdgeBiformerError(
            f"unknown architecture argument(s) {', '.join(unknown)} for {name}; "
            f"the {_LABELS[family]} constructor takes: {', '.join(_ARGUMENTS[family])}"
        )
    config = deepcopy(VARIANTS[name])
    config.update(overrides)
    return config


def create_model(name: str, weights: str | os.PathLike[str] | None = None, **overrides: Any) -> nn.Module:
    """Build a BiFormer or DeBiFormer variant in eval mode, optionally loading a checkpoint.

    Args:
        name: ``biformer_tiny``, ``biformer_small``, ``biformer_base``, ``debiformer_tiny``,
            ``debiformer_small`` or ``debiformer_base`` (:func:`list_models`).
        weights: path of a checkpoint: a raw state dict, ``{"model": ...}``, ``{"model_ema": ...}``
            or a ``backbone.``-prefixed dense-task checkpoint. Loaded with ``weights_only=True``.
        **overrides: official constructor arguments replacing the variant's (``depth``,
            ``embed_dim``, ``qk_dims``, ``mlp_ratios``, ``n_win``, ``topks``, ``head_dim``,
            ``num_classes``, ``auto_pad``, ...; DeBiFormer also ``param_size``), and ``gather_mode``
            (``"index"`` or ``"expand"``).

    Returns:
        The model, in eval mode, on the CPU.
    """
    config = model_config(name, **overrides)
    family = family_of(name)
    try:
        model = _CLASSES[family](**config)
    except (ValueError, TypeError, ZeroDivisionError) as err:  # e.g. --arch depth=2, head_dim=0
        raise EdgeBiformerError(f"cannot build {name} with {overrides or 'its defaults'}: {err}") from None
    if weights is not None:
        load_weights(
            model, weights, variant=name if not overrides else f"{name} with {overrides}", family=family
        )
    model.config = config  # type: ignore[assignment]
    model.variant = name  # type: ignore[assignment]
    # The checkpoint it was created from; None: its random initialisation (manifests record that).
    model.weights_source = str(weights) if weights is not None else None  # type: ignore[assignment]
    return model.eval()
