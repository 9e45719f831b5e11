"""Building registry models: the official constructor arguments with overrides, and checkpoints."""

from __future__ import annotations

import inspect
import os
from copy import deepcopy
from typing import Any

from torch import nn

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.models.biformer import BiFormer, BiFormerBackbone
from edge_biformer.models.checkpoint import load_weights
from edge_biformer.models.debiformer import DeBiFormer
from edge_biformer.models.registry import VARIANTS, family_of, list_models

__all__ = ["create_model", "model_config"]

#: The model class of each family.
_CLASSES: dict[str, type[nn.Module]] = {"biformer": BiFormer, "debiformer": DeBiFormer}
_LABELS = {"biformer": "BiFormer", "debiformer": "DeBiFormer"}
#: Arguments that make a dense backbone instead of a classifier (timm's convention; BiFormer).
DENSE_ARGUMENTS = ("features_only", "out_indices")
#: Training-only arguments of the official mmdet/mmseg ``BiFormer_mm`` (no effect on inference):
#: accepted with ``features_only`` so that an official ``backbone=dict(...)`` config can be passed.
_DENSE_TRAINING_ARGUMENTS = ("norm_eval", "disable_bn_grad", "pretrained")
#: The dense backbones there are (family -> class).
_DENSE_FAMILIES = {"biformer": BiFormerBackbone}
_ARGUMENTS = {
    family: tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")
    + (DENSE_ARGUMENTS + _DENSE_TRAINING_ARGUMENTS if family in _DENSE_FAMILIES else ())
    for family, cls in _CLASSES.items()
}


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
    if not config.pop("features_only", False):
        dense_only = [k for k in ("out_indices", *_DENSE_TRAINING_ARGUMENTS) if k in config]
        if dense_only:
            raise EdgeBiformerError(
                f"{', '.join(dense_only)} need(s) features_only=True (a dense backbone; "
                "--features-only on the command line)"
            )
        return config
    if config.pop("pretrained", None) is not None:
        raise EdgeBiformerError(
            "pretrained=<path> is the official backbone's training-time initialisation; pass the "
            "checkpoint as weights=<path> (--weights), which loads it strictly"
        )
    for key in _DENSE_TRAINING_ARGUMENTS:
        config.pop(key, None)
    # A dense backbone: as the official detection/segmentation configs, auto_pad unless overridden;
    # the classifier's num_classes has no meaning for it.
    config.pop("num_classes", None)
    config.setdefault("auto_pad", True)
    out_indices = config.get("out_indices", (0, 1, 2, 3))
    if isinstance(out_indices, int) or not all(isinstance(i, int) for i in out_indices):
        raise EdgeBiformerError(
            f"out_indices must be a list of stage indices out of 0, 1, 2, 3, got {out_indices!r}"
        )
    return {"features_only": True, **config, "out_indices": [int(i) for i in out_indices]}


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
            (``"index"`` or ``"expand"``). For BiFormer, ``features_only=True`` builds the dense
            backbone of the official detection/segmentation code
            (:class:`~edge_biformer.models.biformer.BiFormerBackbone`, ``auto_pad=True`` unless
            overridden) returning the outputs of the stages in ``out_indices`` (default
            ``(0, 1, 2, 3)``), timm's convention; ``model.feature_info`` lists their channels and
            strides.

    Returns:
        The model, in eval mode, on the CPU (``model.config``: the arguments it was built with,
        ``features_only``/``out_indices`` included for a backbone, so ``create_model(name,
        **model.config)`` builds it again).
    """
    config = model_config(name, **overrides)
    family = family_of(name)
    arguments = dict(config)
    try:
        if arguments.pop("features_only", False):
            model: nn.Module = _DENSE_FAMILIES[family](**arguments)
        else:
            model = _CLASSES[family](**arguments)
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
