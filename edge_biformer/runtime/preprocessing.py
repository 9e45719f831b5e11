"""The preprocessing of a model's input images, read from its manifests through one function.

:func:`read_preprocessing` is the only reader of a manifest's ``preprocessing`` record (the Predictor and
``serve-repo``'s Triton preprocessing model get their :class:`Preprocessing` from it).
It is tolerant: keys it does not know are ignored, a value it cannot honour is a clear error (never a
silently wrong prediction), and a manifest without a record gets what our build applies today, the
official BiFormer evaluation transform (:func:`edge_biformer.calib.preprocess_image`: bicubic resize by
``crop_pct`` 0.875, center crop, ImageNet mean/std, RGB). The record may be a mapping with any of

==================  ===========================================================================
``preset``          ``imagenet`` (the default above) or ``yolo`` (letterbox, RGB scaled to 0..1,
                    pad 114, bilinear); the other keys override the preset's values
``resize``          ``center_crop`` (resize by ``crop_pct``, then crop; also ``resize_center_crop``,
                    ``crop``), ``letterbox`` (fit, pad with ``pad_value``) or ``stretch`` (``resize``)
``crop_pct``        center-crop fraction (0 < crop_pct <= 1)
``interpolation``   ``bicubic`` | ``bilinear`` | ``nearest``
``mean``, ``std``   per-channel, on 0..1 values, in the model's channel order
``channel_order``   ``RGB`` | ``BGR`` (also read as ``color`` or ``channels``)
``pad_value``       letterbox fill, 0..255
``img_size``        ``[H, W]`` (else the build's ``img_size``, the graph's or the engine's input size)
==================  ===========================================================================

or a preset name alone (``"imagenet"``). Where it is looked for, first found wins: the build manifest
(``manifest.json`` beside the artifact), the artifact's side-car, then its source chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_biformer.calib.preprocess import (
    CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    preprocess_image,
    resize_size,
    to_rgb8,
)
from edge_biformer.errors import EdgeBiformerError

__all__ = ["PRESETS", "Preprocessing", "PreprocessingError", "preprocessing_record", "read_preprocessing"]


class PreprocessingError(EdgeBiformerError):
    """A preprocessing record this toolkit cannot apply."""


#: Named recipes a record may start from (its other keys override these values).
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {},
    "yolo": {
        "resize": "letterbox",
        "interpolation": "bilinear",
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "channel_order": "RGB",
        "pad_value": 114,
        "crop_pct": 1.0,
    },
}
_RESIZE = {
    "center_crop": "center_crop",
    "resize_center_crop": "center_crop",
    "resize+center-crop": "center_crop",
    "resize+center_crop": "center_crop",
    "crop": "center_crop",
    "letterbox": "letterbox",
    "stretch": "stretch",
    "resize": "stretch",
}
_INTERPOLATION = ("bicubic", "bilinear", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """How one image becomes a ``3 x H x W`` float32 input (defaults: the official evaluation transform)."""

    img_size: tuple[int, int] = (224, 224)
    crop_pct: float = CROP_PCT
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "center_crop"  # center_crop | letterbox | stretch
    interpolation: str = "bicubic"
    channel_order: str = "RGB"
    pad_value: int = 114

    def __post_init__(self) -> None:
        if self.resize not in ("center_crop", "letterbox", "stretch"):
            raise PreprocessingError(f"resize {self.resize!r}: use center_crop, letterbox or stretch")
        if self.interpolation not in _INTERPOLATION:
            raise PreprocessingError(f"interpolation {self.interpolation!r}: use {', '.join(_INTERPOLATION)}")
        if self.channel_order not in ("RGB", "BGR"):
            raise PreprocessingError(f"channel_order {self.channel_order!r}: use RGB or BGR")
        if not 0.0 < self.crop_pct <= 1.0:
            raise PreprocessingError(f"crop_pct {self.crop_pct}: use a fraction in (0, 1]")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise PreprocessingError(f"mean {self.mean} / std {self.std}: give 3 values each, std > 0")

    @property
    def official(self) -> bool:
        """Whether this is exactly :func:`~edge_biformer.calib.preprocess_image` (what our build uses)."""
        return (self.resize, self.interpolation, self.channel_order, tuple(self.mean), tuple(self.std)) == (
            "center_crop", "bicubic", "RGB", IMAGENET_MEAN, IMAGENET_STD,
        )  # fmt: skip

    def __call__(self, image: Any) -> np.ndarray:
        """A PIL image (or ``H x W x 3`` uint8 array, RGB) -> ``3 x H x W`` float32."""
        from PIL import Image

        if isinstance(image, np.ndarray):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        if self.official:
            return preprocess_image(image, self.img_size, self.crop_pct)
        array = np.asarray(self._geometry(to_rgb8(image)), dtype=np.float32) / 255.0
        if self.channel_order == "BGR":
            array = array[..., ::-1]
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)

    def _geometry(self, image: Any) -> Any:
        """Resize (and crop or pad) an RGB PIL image to ``img_size``."""
        from PIL import Image

        method = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
        interp = method[self.interpolation]
        h, w = self.img_size
        iw, ih = image.size
        if self.resize == "stretch":
            return image.resize((w, h), interp) if (iw, ih) != (w, h) else image
        if self.resize == "letterbox":
            scale = min(w / iw, h / ih)
            nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
            if (nw, nh) != (iw, ih):
                image = image.resize((nw, nh), interp)
            canvas = Image.new("RGB", (w, h), (self.pad_value,) * 3)
            canvas.paste(image, ((w - nw) // 2, (h - nh) // 2))
            return canvas
        target = resize_size((h, w), self.crop_pct)  # center_crop, as preprocess_image does
        if isinstance(target, int):
            new_w, new_h = (
                (target, max(1, int(target * ih / iw)))
                if iw <= ih
                else (max(1, int(target * iw / ih)), target)
            )
        else:
            new_h, new_w = target
        if (new_w, new_h) != (iw, ih):
            image = image.resize((new_w, new_h), interp)
        top, left = round((new_h - h) / 2.0), round((new_w - w) / 2.0)
        return image.crop((left, top, left + w, top + h))

    def describe(self) -> str:
        """One line: ``resize 256 bicubic, center crop 224x224, ImageNet mean/std, RGB``."""
        h, w = self.img_size
        if self.resize == "center_crop":
            target = resize_size(self.img_size, self.crop_pct)
            target = target if isinstance(target, int) else f"{target[0]}x{target[1]}"
            geometry = f"resize {target} {self.interpolation}, center crop {h}x{w}"
        elif self.resize == "letterbox":
            geometry = f"letterbox {h}x{w} {self.interpolation} (pad {self.pad_value})"
        else:
            geometry = f"stretch to {h}x{w} {self.interpolation}"
        if (tuple(self.mean), tuple(self.std)) == (IMAGENET_MEAN, IMAGENET_STD):
            norm = "ImageNet mean/std"
        elif (tuple(self.mean), tuple(self.std)) == ((0.0,) * 3, (1.0,) * 3):
            norm = "scaled to 0..1"
        else:
            norm = f"mean {list(self.mean)} std {list(self.std)}"
        return f"{geometry}, {norm}, {self.channel_order}"

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (JSON output; the Triton preprocessing model's parameter)."""
        data = asdict(self)
        data["img_size"] = list(self.img_size)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        data["resize_to"] = resize_size(self.img_size, self.crop_pct)  # center_crop's resize target
        return data

    @classmethod
    def from_manifests(
        cls, own: Mapping[str, Any], build: Mapping[str, Any], fallback: tuple[int, int] | None
    ) -> Preprocessing:
        """Same as :func:`read_preprocessing`."""
        return read_preprocessing(own, build, fallback)


def preprocessing_record(
    own: Mapping[str, Any], build: Mapping[str, Any]
) -> tuple[Mapping[str, Any] | str | None, str]:
    """``(record, where)``: the first ``preprocessing`` record (a mapping or a preset name) of the build
    manifest, the artifact's side-car and its source chain; ``(None, "")`` where none has one.

    Free-text descriptions (what calibration summaries record, ``"resize 256 bicubic, ..."``) are not
    records and are passed over.
    """
    from edge_biformer.manifest import sources

    chain: list[tuple[str, Any]] = [("build manifest", build), ("manifest", own)]
    chain += [(f"manifest of {r.get('path')}", r.get("manifest")) for r in sources(own)]
    for where, m in chain:
        if not isinstance(m, Mapping):
            continue
        record = m.get("preprocessing")
        if isinstance(record, Mapping) or (isinstance(record, str) and record.lower() in PRESETS):
            return record, where
    return None, ""


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


def read_preprocessing(
    own: Mapping[str, Any], build: Mapping[str, Any], fallback: tuple[int, int] | None = None
) -> Preprocessing:
    """The :class:`Preprocessing` the manifests of an artifact record (see the module docstring).

    ``own`` is the artifact's side-car, ``build`` the build's ``manifest.json`` (``{}`` where absent),
    ``fallback`` the graph's or engine's static input size.

    Raises:
        PreprocessingError: the input size is recorded nowhere, or the record holds a value this toolkit
            cannot apply (named, with the manifest).
    """
    record, where = preprocessing_record(own, build)
    values: dict[str, Any] = {}
    if record is not None:
        values = _record_values(record, where)
    size = values.pop("img_size", None) or build.get("img_size") or fallback or _export_img_size(own)
    if size is None:
        raise PreprocessingError(
            "the input size of this model is not recorded (dynamic H/W and no manifest): pass --img-size"
        )
    try:
        return Preprocessing(img_size=(int(size[0]), int(size[1])), **values)
    except PreprocessingError as err:
        raise PreprocessingError(f"the preprocessing record of the {where}: {err}") from None


def _record_values(record: Mapping[str, Any] | str, where: str) -> dict[str, Any]:
    """The :class:`Preprocessing` keyword values of a record (unknown keys ignored)."""
    if isinstance(record, str):
        record = {"preset": record}
    preset = str(record.get("preset") or "imagenet").lower()
    if preset not in PRESETS:
        raise PreprocessingError(
            f"the {where} records preprocessing preset {preset!r}, which this version does not know "
            f"({', '.join(PRESETS)}); upgrade edge-biformer or record the steps (resize, mean, std, ...)"
        )
    values = dict(PRESETS[preset])
    try:
        if isinstance(record.get("resize"), str):  # (a number or a list is a resize target, derived)
            mode = str(record["resize"]).lower()
            if mode not in _RESIZE:
                raise PreprocessingError(
                    f"resize {record['resize']!r}: use center_crop, letterbox or stretch"
                )
            values["resize"] = _RESIZE[mode]
        order = record.get("channel_order") or record.get("color") or record.get("channels")
        if order is not None:
            values["channel_order"] = str(order).upper()
        if record.get("interpolation") is not None:
            values["interpolation"] = str(record["interpolation"]).lower()
        for key in ("mean", "std"):
            if record.get(key) is not None:
                values[key] = tuple(float(v) for v in record[key])
        if record.get("crop_pct") is not None:
            values["crop_pct"] = float(record["crop_pct"])
        if record.get("pad_value") is not None:
            values["pad_value"] = int(record["pad_value"])
        size = record.get("img_size")
        if isinstance(size, (list, tuple)) and len(size) == 2:
            values["img_size"] = [int(size[0]), int(size[1])]
    except (TypeError, ValueError) as err:
        raise PreprocessingError(f"the preprocessing record of the {where} is malformed ({err})") from None
    except PreprocessingError as err:
        raise PreprocessingError(f"the preprocessing record of the {where}: {err}") from None
    return values
