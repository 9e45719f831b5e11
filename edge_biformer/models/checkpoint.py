"""Loading official BiFormer and DeBiFormer checkpoints (classification and dense-task backbones)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from edge_biformer.errors import CheckpointError

#: Keys under which training scripts store the weights, in the order they are tried.
_WRAPPER_KEYS = ("model", "model_ema", "state_dict", "module")
#: Parameters a dense-task backbone checkpoint does not hold (its classifier head and final norm).
_CLASSIFIER_PREFIXES = ("head.", "norm.")
#: Parameters a dense-task backbone checkpoint holds on top of the classifier's backbone.
_DENSE_ONLY_PREFIXES = ("extra_norms.",)
_SHOW = 5


def _summarise(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return shown + more


def require_checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path, or a clear error if there is no such file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist (or is not a file); pass the path of a BiFormer .pth "
            "file, e.g. the official biformer_tiny_best.pth"
        )
    return path


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], bool]:
    """Read the tensors of a checkpoint file with ``torch.load(weights_only=True)``.

    Accepts a raw state dict, ``{"model": ...}``, ``{"model_ema": ...}``, ``{"state_dict": ...}``
    and ``module.``/``backbone.``-prefixed keys (DDP, mmdet/mmseg). Returns the state dict with
    prefixes removed and whether it was a ``backbone.``-prefixed dense-task checkpoint.
    """
    path = require_checkpoint_file(path)
    try:
        obj = _load_weights_only(path)
    except Exception as err:  # the unpickler raises anything from IndexError to UnpicklingError
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} could not be read as a PyTorch weights file ({first_line}). It may be "
            "truncated (re-download it), not a checkpoint at all, or hold Python objects that "
            "weights_only loading refuses; re-save it with torch.save(model.state_dict(), path)"
        ) from None

    state = obj
    for _ in range(2):  # e.g. {"state_dict": {"module.x": ...}}
        if isinstance(state, Mapping) and not _is_tensor_dict(state):
            inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, Mapping) or not _is_tensor_dict(state) or not state:
        found = sorted(map(str, obj.keys()))[:_SHOW] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint {path} holds no model weights: expected a state dict, or a dict with one under "
            f"'model', 'model_ema' or 'state_dict'; found {found}"
        )
    state = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    is_backbone = any(k.startswith("backbone.") for k in state)
    if is_backbone:
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state, is_backbone


def _numpy_scalar_globals() -> list:
    """The numpy classes that pickle a numpy scalar (mmcv checkpoints' ``meta`` may hold some)."""
    import numpy as np

    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    dtypes = [c for c in vars(getattr(np, "dtypes", object)).values() if isinstance(c, type)]
    return [multiarray.scalar, np.dtype, *dtypes]


def _load_weights_only(path: Path) -> object:
    """``torch.load(weights_only=True)``; numpy scalars (mmcv/mmdet ``meta``) are also allowed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "numpy" not in str(err):
            raise
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)


def _is_tensor_dict(d: Mapping) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


#: Key fragments only one family's blocks have: BiFormer blocks hold one ``attn``/``pos_embed``,
#: DeBiFormer blocks two (``attn1``/``attn2``, ``pos_embed1``/``pos_embed2``).
_FAMILY_MARKS = {"biformer": (".attn.", ".pos_embed."), "debiformer": (".attn1.", ".pos_embed1.")}
_FAMILY_LABELS = {"biformer": "BiFormer", "debiformer": "DeBiFormer"}


def checkpoint_family(state: Mapping[str, torch.Tensor]) -> str | None:
    """``"biformer"`` or ``"debiformer"`` from the block keys of a state dict; None if neither."""
    found = [
        family
        for family, marks in _FAMILY_MARKS.items()
        if any(k.startswith("stages.") and any(m in k for m in marks) for k in state)
    ]
    return found[0] if len(found) == 1 else None


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], variant: str = "model", family: str | None = None
) -> None:
    """Load a checkpoint into ``model`` strictly, with one clear error on any mismatch.

    ``family`` (``"biformer"`` or ``"debiformer"``): the model's family; a checkpoint of the
    other family is refused with an error that names the models it fits.

    Into a classifier, a dense-task backbone checkpoint (``backbone.`` prefix) loads everything but
    the classifier head and final norm, which it does not hold (a warning says they stay at
    initialisation); its ``extra_norms`` are ignored.

    Into a dense backbone (:class:`~edge_biformer.models.biformer.BiFormerBackbone`), a
    ``backbone.`` checkpoint must hold every key of the model; the keys of parts the model leaves
    out (stages after the last of ``out_indices``, norms of other stages, a classifier head) are
    ignored. An ImageNet classification checkpoint loads into it as the official code initialises a
    detector from one: all but the ``extra_norms``, which it does not hold (a warning says they stay at
    initialisation, weight 1 and bias 0); its head and final norm are ignored.
    """
    state, is_backbone = read_state_dict(path)
    found = checkpoint_family(state)
    if family is not None and found is not None and found != family:
        raise CheckpointError(
            f"checkpoint {path} holds a {_FAMILY_LABELS[found]} model (its blocks have "
            f"{'/'.join(m.strip('.') for m in _FAMILY_MARKS[found])} weights), but {variant} is a "
            f"{_FAMILY_LABELS[family]}: pick a {found}_* model (--model {found}_tiny/small/base) for it, "
            f"or pass a {_FAMILY_LABELS[family]} checkpoint"
        )
    own = model.state_dict()
    ignored = getattr(model, "ignored_checkpoint_key", None)
    left_out: list[str] = []
    if ignored is not None:  # a dense backbone
        state = {k: v for k, v in state.items() if not ignored(k)}
        if not is_backbone:
            left_out = [k for k in own if k not in state and k.startswith(_DENSE_ONLY_PREFIXES)]
    elif is_backbone:
        state = {k: v for k, v in state.items() if not k.startswith(_DENSE_ONLY_PREFIXES)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if is_backbone and ignored is None:
        left_out = [k for k in missing if k.startswith(_CLASSIFIER_PREFIXES)]
    missing = [k for k in missing if k not in left_out]
    if missing or unexpected or mismatched:
        problems = []
        if mismatched:
            problems.append(f"{len(mismatched)} with other shapes: {_summarise(mismatched)}")
        if missing:
            problems.append(f"{len(missing)} missing: {_summarise(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {_summarise(unexpected)}")
        raise CheckpointError(
            f"checkpoint {path} does not fit {variant} ({'; '.join(problems)}). It is probably the "
            "checkpoint of another variant or configuration: pick the matching --model, or pass the "
            "architecture overrides (depth, embed_dim, qk_dims, num_classes, ...) it was trained with"
        )
    model.load_state_dict(state, strict=not left_out)
    if left_out and ignored is not None:
        warnings.warn(
            f"{path} is a classification checkpoint: the dense backbone's per-stage norms "
            f"({_summarise(left_out)}) are not in it and keep their initial values (weight 1, bias 0); "
            "load the backbone.-prefixed checkpoint of a detection/segmentation model for trained ones",
            stacklevel=2,
        )
    elif left_out:
        warnings.warn(
            f"{path} is a dense-task backbone checkpoint: the classifier head and final norm "
            f"({_summarise(left_out)}) are not in it and keep their initial values",
            stacklevel=2,
        )
