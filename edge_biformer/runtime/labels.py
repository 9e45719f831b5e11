"""Class names of a classifier: a labels file, the checkpoint's own ``classes``, or ImageNet-1k.

:func:`resolve_labels` picks, first match wins:

1. a labels file the user gives (one name per line, or a JSON list);
2. the ``classes`` list stored in the checkpoint the artifact's manifest chain names (the reduced test
   model and checkpoints written by ``scripts/train_reduced_biformer.py`` carry one);
3. the ImageNet-1k names (:func:`imagenet_classes`, package data ``imagenet_classes.txt``) for a
   1000-class head, the released BiFormer models;
4. ``class_<i>``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_biformer.errors import EdgeBiformerError

__all__ = ["checkpoint_classes", "imagenet_classes", "read_labels", "resolve_labels"]


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a text file (one per line, blank lines and ``#`` comments skipped) or a JSON list."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise EdgeBiformerError(
            f"--labels {path}: cannot read it ({err}); give a text file, one name a line"
        ) from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise EdgeBiformerError(
                f"--labels {path} is not valid JSON ({err}); give a JSON list of names"
            ) from None
        if isinstance(data, Mapping):  # {"0": "tench", ...}
            data = [data[k] for k in sorted(data, key=lambda k: int(k))]
        if not isinstance(data, list):
            raise EdgeBiformerError(f"--labels {path} must hold a JSON list of class names")
        return [str(v) for v in data]
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def checkpoint_classes(weights: str | os.PathLike[str] | None) -> list[str] | None:
    """The ``classes`` list a checkpoint stores beside its state dict, or ``None``."""
    if not weights or not Path(weights).is_file():
        return None
    try:
        import torch

        data = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception:
        return None
    classes = data.get("classes") if isinstance(data, Mapping) else None
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        return list(classes)
    return None


def resolve_labels(
    num_classes: int, manifest: Mapping[str, Any] | None = None, labels: str | os.PathLike[str] | None = None
) -> tuple[list[str], str]:
    """``(names, where they come from)`` for a head of ``num_classes`` outputs.

    Raises:
        EdgeBiformerError: a given labels file has another number of names than the model has classes.
    """
    if labels is not None:
        names = read_labels(labels)
        if len(names) != num_classes:
            raise EdgeBiformerError(
                f"--labels {labels} has {len(names)} names, but the model has {num_classes} classes; give "
                "one name per class, in class-index order"
            )
        return names, str(labels)
    from edge_biformer.manifest import model_fields

    weights = model_fields(manifest).get("weights") if manifest else None
    classes = checkpoint_classes(weights)
    if classes is not None and len(classes) == num_classes:
        return classes, f"checkpoint {Path(str(weights)).name}"
    if num_classes == 1000:
        return imagenet_classes(), "ImageNet-1k"
    return [f"class_{i}" for i in range(num_classes)], "class indices (no labels: pass --labels FILE)"


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (torchvision's names; package data)."""
    from importlib.resources import files

    names = files("edge_biformer.runtime").joinpath("imagenet_classes.txt").read_text().splitlines()
    assert len(names) == 1000, "edge_biformer/runtime/imagenet_classes.txt must hold 1000 names"
    return names
