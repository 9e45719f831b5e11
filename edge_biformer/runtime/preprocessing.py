"""The preprocessing of a model's input images, read from its manifests through one function.

The recipe itself, its presets and all the pixel work live in :mod:`edge_biformer.calib.preprocess`
(:class:`~edge_biformer.calib.preprocess.Preprocess`: what the build applies to calibration and check
data and records in its manifest as ``preprocess``). This module only *reads* that record for a model
file and pairs it with the model's input size and channel count (:class:`Preprocessing`), for the
Predictor, ``predict``, ``bench`` and ``serve-repo``'s Triton preprocessing model.

:func:`read_preprocessing` is the only reader. Where it looks, first found wins: the build manifest
(``manifest.json`` beside the artifact), the artifact's side-car, then its source chain. It is tolerant:
a manifest without a record gets the ``imagenet`` preset (the official BiFormer evaluation transform,
what our build applies by default), keys it does not know are ignored; a value it cannot apply is a clear
error naming the manifest (never a silently wrong prediction).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.calib.preprocess import IMAGENET, Preprocess
from edge_biformer.errors import CalibrationDataError, EdgeBiformerError

__all__ = ["Preprocessing", "PreprocessingError", "preprocess_record", "read_preprocessing"]

#: The manifest key of the recipe (``Preprocess.to_dict()``), written by the build and the export.
RECORD_KEY = "preprocess"


class PreprocessingError(EdgeBiformerError):
    """A preprocessing record this toolkit cannot apply, or an input size recorded nowhere."""


@dataclass(frozen=True)
class Preprocessing:
    """A :class:`~edge_biformer.calib.preprocess.Preprocess` recipe at a model's input size.

    Calling it turns a PIL image (or an ``H x W x 3`` uint8 RGB array) into the ``channels x H x W``
    float32 input, by :meth:`Preprocess.apply` (the same code as calibration and the check).
    """

    img_size: tuple[int, int] = (224, 224)
    recipe: Preprocess = field(default=IMAGENET)
    channels: int = 3

    def __post_init__(self) -> None:
        h, w = self.img_size
        object.__setattr__(self, "img_size", (int(h), int(w)))

    def __call__(self, image: Any) -> np.ndarray:
        """A PIL image or ``H x W x 3`` uint8 array (RGB) -> ``channels x H x W`` float32."""
        if isinstance(image, np.ndarray):
            from edge_biformer.calib.preprocess import require_pillow

            image = require_pillow().fromarray(np.asarray(image, dtype=np.uint8))
        try:
            return self.recipe.apply(image, self.img_size, self.channels)
        except CalibrationDataError as err:
            raise PreprocessingError(str(err)) from None

    def describe(self) -> str:
        """One line, :meth:`Preprocess.describe` at the input size."""
        return self.recipe.describe(self.img_size)

    def to_dict(self) -> dict[str, Any]:
        """The recipe (``Preprocess.to_dict()``) with ``img_size`` and ``channels``: JSON output and the
        ``preprocess`` parameter of the Triton preprocessing model (read back by :meth:`from_dict`)."""
        return {**self.recipe.to_dict(), "img_size": list(self.img_size), "channels": self.channels}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Preprocessing:
        """The inverse of :meth:`to_dict` (the recipe by :meth:`Preprocess.from_dict`)."""
        h, w = record["img_size"]
        return cls((int(h), int(w)), Preprocess.from_dict(record), int(record.get("channels", 3)))

    @classmethod
    def from_manifests(
        cls,
        own: Mapping[str, Any],
        build: Mapping[str, Any],
        fallback: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Preprocessing:
        """Same as :func:`read_preprocessing`."""
        return read_preprocessing(own, build, fallback, **kwargs)


def _locations(
    own: Mapping[str, Any], build: Mapping[str, Any], artifact: str | os.PathLike[str] | None
) -> list[tuple[str, Any]]:
    """``(name, manifest)`` in the order records are looked for (names with file paths where known)."""
    from edge_biformer.manifest import manifest_path, sources

    path = Path(artifact) if artifact is not None else None
    build_name = f"build manifest {path.parent / 'manifest.json'}" if path else "build manifest"
    own_name = f"manifest {manifest_path(path)}" if path else "manifest"
    chain: list[tuple[str, Any]] = [(build_name, build), (own_name, own)]
    chain += [(f"manifest of {r.get('path')}", r.get("manifest")) for r in sources(own)]
    return chain


def preprocess_record(
    own: Mapping[str, Any],
    build: Mapping[str, Any],
    artifact: str | os.PathLike[str] | None = None,
) -> tuple[Any, str]:
    """``(record, where)``: the first ``preprocess`` record of the build manifest, the artifact's side-car
    and its source chain; ``(None, "")`` where none has one."""
    for where, manifest in _locations(own, build, artifact):
        if isinstance(manifest, Mapping) and manifest.get(RECORD_KEY) is not None:
            return manifest[RECORD_KEY], where
    return None, ""


def _recipe(record: Any, where: str) -> Preprocess:
    """The :class:`Preprocess` of a record (unknown keys ignored), or an error naming ``where``."""
    if not isinstance(record, Mapping):
        raise PreprocessingError(
            f"the preprocess record of the {where} is {record!r}, not a recipe (a mapping of name, resize, "
            "crop_pct, interpolation, mean, std, channel_order, pad_value, as `edge-biformer build` "
            "writes it); rebuild, or fix the record"
        )
    try:
        return Preprocess.from_dict(record)
    except (CalibrationDataError, TypeError, ValueError) as err:
        raise PreprocessingError(
            f"the preprocess record of the {where} cannot be applied: {err}. Rebuild with a valid "
            "--preprocess (or --resize/--mean/--std/--channel-order), or fix the record"
        ) from None


def _export_img_size(manifest: Mapping[str, Any]) -> list[int] | None:
    """The export's input (H, W), found in the manifest or its source chain."""
    from edge_biformer.manifest import sources

    for m in (manifest, *(r.get("manifest") or {} for r in sources(manifest))):
        if not isinstance(m, Mapping):
            continue
        for value in (m.get("img_size"), (m.get("options") or {}).get("img_size")):
            if isinstance(value, (list, tuple)) and len(value) == 2:
                return [int(value[0]), int(value[1])]
    return None


def _recorded_channels(build: Mapping[str, Any]) -> int | None:
    """The input's channel count of a build manifest's ``input`` record (``[N, C, H, W]``)."""
    shape = (build.get("input") or {}).get("shape") if isinstance(build.get("input"), Mapping) else None
    if isinstance(shape, Sequence) and len(shape) == 4 and isinstance(shape[1], int):
        return int(shape[1])
    return None


def read_preprocessing(
    own: Mapping[str, Any],
    build: Mapping[str, Any],
    fallback: tuple[int, int] | None = None,
    *,
    channels: int | None = None,
    artifact: str | os.PathLike[str] | None = None,
) -> Preprocessing:
    """The :class:`Preprocessing` the manifests of an artifact record (see the module docstring).

    Args:
        own: the artifact's side-car manifest (``{}`` where absent).
        build: the build's ``manifest.json`` (``{}`` where absent).
        fallback: the graph's or engine's static input size (H, W), used where the build manifest
            records none.
        channels: the input's channel count (the graph's or engine's); default the build manifest's
            ``input`` record, else 3.
        artifact: the model file, to name the manifests in errors.

    Raises:
        PreprocessingError: the input size is recorded nowhere, or the record holds a value this toolkit
            cannot apply (named, with the manifest).
    """
    record, where = preprocess_record(own, build, artifact)
    recipe = IMAGENET if record is None else _recipe(record, where)
    size = build.get("img_size") or fallback or _export_img_size(own)
    if size is None:
        raise PreprocessingError(
            "the input size of this model is not recorded (dynamic H/W and no manifest): pass --img-size"
        )
    return Preprocessing((int(size[0]), int(size[1])), recipe, channels or _recorded_channels(build) or 3)
