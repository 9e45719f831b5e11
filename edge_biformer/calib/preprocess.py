"""Preprocessing of one image: the recipes (:class:`Preprocess`) and their presets (:data:`PRESETS`).

``imagenet`` is the official BiFormer evaluation transform (timm's eval transform, ``crop_pct=0.875``):
resize the shorter side to ``floor(224 / 0.875) = 256`` with bicubic interpolation, center crop 224,
scale to [0, 1], normalise with the ImageNet mean and std. Other sizes scale the same way (``448``
resizes to 512 and crops 448; a non-square ``HxW`` resizes to ``floor(H/0.875) x floor(W/0.875)``
and crops ``HxW``, as timm does). ``yolo`` is Ultralytics' (letterbox with grey 114 padding,
bilinear, 0-1 RGB, no normalisation); ``unit`` resizes to the input size and scales to 0-1;
``imagenet-resize`` resizes to the input size and normalises with the ImageNet mean/std (the usual
segmentation test transform). The recipe a build used is recorded in its manifest
(``preprocess``), and the calibration data, the check data and the predictor all apply that one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from edge_biformer.errors import CalibrationDataError
from edge_biformer.utils.sizes import image_hw

__all__ = [
    "CROP_PCT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "Preprocess",
    "preprocess_from_manifest",
    "preprocess_image",
    "recorded_preprocess",
    "require_pillow",
    "resize_size",
    "to_rgb8",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: timm's default eval crop fraction, used by the official BiFormer evaluation.
CROP_PCT = 0.875


def require_pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - depends on the environment
        raise CalibrationDataError(
            "reading images needs Pillow, which is not installed: run `pip install pillow`, or give "
            "preprocessed tensors as an .npy/.npz file instead of images"
        ) from None
    return Image


def resize_size(img_size: int | Sequence[int], crop_pct: float = CROP_PCT) -> int | tuple[int, int]:
    """Resize target before the center crop: the shorter side (square inputs) or ``(H, W)``."""
    h, w = image_hw(img_size)
    if h == w:
        return math.floor(h / crop_pct)
    return math.floor(h / crop_pct), math.floor(w / crop_pct)


#: Pillow modes of more than 8 bits per sample, which ``convert("RGB")`` clips instead of scaling.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def to_rgb8(image: Any) -> Any:
    """``image`` as 8-bit RGB, scaling 16-bit and float samples to 0..255 (Pillow would clip them).

    A 16-bit PNG opens in mode ``I;16`` or ``I`` with values up to 65535; ``convert("RGB")`` clips
    them at 255 and makes the picture almost white. Integer samples are divided by 257 (65535 ->
    255; by their own maximum if they exceed 16 bits), float samples in [0, 1] multiplied by 255.
    """
    Image = require_pillow()
    if image.mode not in _WIDE_MODES:
        return image.convert("RGB")
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scaled = array * 255.0 if array.size and np.nanmax(array) <= 1.0 else array
    else:
        top = float(array.max()) if array.size else 0.0
        scaled = array / (top / 255.0 if top > 65535 else 257.0)
    gray = np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


RESIZE_MODES = ("crop", "letterbox", "stretch")
CHANNEL_ORDERS = ("rgb", "bgr")
INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the graph's input tensor ``C x H x W`` float32.

    ``resize``: ``crop`` (shorter side to ``H / crop_pct``, center crop; timm's eval transform),
    ``letterbox`` (fit inside ``H x W`` keeping the aspect ratio, pad with ``pad_value`` centred, as
    Ultralytics does) or ``stretch`` (resize to ``H x W``). Pixels are scaled to [0, 1], then
    ``(x - mean) / std`` per channel, in ``channel_order``.
    """

    name: str = "imagenet"
    resize: str = "crop"
    crop_pct: float = CROP_PCT
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channel_order: str = "rgb"
    pad_value: int = 114

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise CalibrationDataError(
                f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}"
            )
        if self.channel_order not in CHANNEL_ORDERS:
            raise CalibrationDataError(f"channel order must be rgb or bgr, got {self.channel_order!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise CalibrationDataError(
                f"interpolation must be bicubic or bilinear, got {self.interpolation!r}"
            )
        if len(self.mean) not in (1, 3) or len(self.std) not in (1, 3) or any(v == 0 for v in self.std):
            raise CalibrationDataError(
                f"--mean and --std take 1 or 3 values and std must not be 0, got mean {list(self.mean)}, "
                f"std {list(self.std)}"
            )
        if not 0.0 < self.crop_pct <= 1.0:
            raise CalibrationDataError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if not 0 <= self.pad_value <= 255:
            raise CalibrationDataError(f"pad_value must be in 0..255, got {self.pad_value}")

    def describe(self, img_size: int | Sequence[int] | None = None) -> str:
        """One line: ``imagenet: resize 256 bicubic, center crop 224x224, ImageNet mean/std, RGB``."""
        size = image_hw(img_size) if img_size is not None else None
        if self.resize == "crop":
            target = resize_size(size, self.crop_pct) if size else None
            target = f"{target[0]}x{target[1]}" if isinstance(target, tuple) else target
            geometry = (
                f"resize {target} {self.interpolation}, center crop {size[0]}x{size[1]}"
                if size
                else f"resize to size/{self.crop_pct:g} {self.interpolation}, center crop"
            )
        elif self.resize == "letterbox":
            geometry = (
                f"letterbox to {size[0]}x{size[1]}" if size else "letterbox"
            ) + f" {self.interpolation} (pad {self.pad_value})"
        else:
            geometry = (f"resize to {size[0]}x{size[1]}" if size else "resize") + f" {self.interpolation}"
        if tuple(self.mean) == IMAGENET_MEAN and tuple(self.std) == IMAGENET_STD:
            norm = "ImageNet mean/std"
        elif all(m == 0 for m in self.mean) and all(v == 1 for v in self.std):
            norm = "0-1, no normalisation"
        else:
            norm = f"mean {list(self.mean)} std {list(self.std)}"
        return f"{self.name}: {geometry}, {norm}, {self.channel_order.upper()}"

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``preprocess`` record."""
        record = asdict(self)
        record["mean"], record["std"] = list(self.mean), list(self.std)
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Preprocess:
        """The recipe of a manifest's ``preprocess`` record (unknown keys are ignored)."""
        fields = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        convert: dict[str, Any] = {"crop_pct": float, "pad_value": int, "name": str}
        try:
            for key in ("mean", "std"):
                if key in fields:
                    if isinstance(fields[key], (str, bytes)) or not isinstance(fields[key], Sequence):
                        raise TypeError(f"a list of numbers, got {fields[key]!r}")
                    fields[key] = tuple(float(v) for v in fields[key])
            for key, kind in convert.items():
                if key in fields:
                    fields[key] = kind(fields[key])
        except (TypeError, ValueError) as err:
            raise CalibrationDataError(f"{key} is malformed ({err})") from None
        return cls(**fields)

    def apply(self, image: Any, img_size: int | Sequence[int], channels: int = 3) -> np.ndarray:
        """One PIL image as the ``channels x H x W`` float32 input (``channels`` 3, or 1 for grey models)."""
        Image = require_pillow()
        h, w = image_hw(img_size)
        image = to_rgb8(image)
        resample = Image.BICUBIC if self.interpolation == "bicubic" else Image.BILINEAR
        if self.resize == "crop":
            image = _resize_crop(image, (h, w), self.crop_pct, resample)
        elif self.resize == "letterbox":
            image = _letterbox(image, (h, w), self.pad_value, resample)
        elif image.size != (w, h):
            image = image.resize((w, h), resample)
        array = np.asarray(image, dtype=np.float32) / 255.0
        if self.channel_order == "bgr":
            array = array[:, :, ::-1]
        if channels == 1:
            array = (
                array
                @ np.asarray([0.299, 0.587, 0.114], np.float32)[:: -1 if self.channel_order == "bgr" else 1]
            )
            array = array[:, :, None]
        elif channels != 3:
            raise CalibrationDataError(
                f"the graph takes {channels}-channel inputs; images give 1 (grey) or 3 (colour) channels: "
                f"give preprocessed tensors N x {channels} x {h} x {w} as an .npy/.npz file instead"
            )
        mean = np.asarray(self.mean[:channels] if len(self.mean) >= channels else self.mean, np.float32)
        std = np.asarray(self.std[:channels] if len(self.std) >= channels else self.std, np.float32)
        array = (array - mean) / std
        return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)


#: The named recipes of ``--preprocess``.
PRESETS: dict[str, Preprocess] = {
    p.name: p
    for p in (
        Preprocess(),
        Preprocess("imagenet-resize", resize="stretch", interpolation="bilinear"),
        Preprocess("yolo", resize="letterbox", interpolation="bilinear", mean=(0.0,) * 3, std=(1.0,) * 3),
        Preprocess("unit", resize="stretch", interpolation="bilinear", mean=(0.0,) * 3, std=(1.0,) * 3),
    )
}
#: The recipe of our own models (the official evaluation transform).
IMAGENET = PRESETS["imagenet"]


def preset(name: str, **overrides: Any) -> Preprocess:
    """The preset ``name`` with ``overrides`` (a changed preset is named ``<name>+custom``)."""
    if name not in PRESETS:
        raise CalibrationDataError(
            f"unknown --preprocess {name!r}; the presets are: "
            + "; ".join(p.describe() for p in PRESETS.values())
        )
    changes = {k: v for k, v in overrides.items() if v is not None}
    base = PRESETS[name]
    changed = {
        k: v for k, v in changes.items() if getattr(base, k) != (tuple(v) if isinstance(v, list) else v)
    }
    if not changed:
        return base
    return replace(
        base, name=f"{name}+custom", **{k: tuple(v) if isinstance(v, list) else v for k, v in changed.items()}
    )


def preprocess_from_manifest(manifest: Mapping[str, Any] | None) -> Preprocess | None:
    """The recipe a build manifest records (``preprocess``), or ``None`` for older manifests."""
    record = (manifest or {}).get("preprocess")
    return Preprocess.from_dict(record) if isinstance(record, Mapping) else None


def recorded_preprocess(manifest: Mapping[str, Any] | None) -> Preprocess | None:
    """The recipe the nearest manifest of ``manifest``'s source chain records (``None``: none does)."""
    from edge_biformer.manifest import sources

    return next(
        (r for r in (preprocess_from_manifest(s.get("manifest")) for s in sources(manifest)) if r), None
    )


def _resize_crop(image: Any, size: tuple[int, int], crop_pct: float, resample: Any) -> Any:
    h, w = size
    target = resize_size((h, w), crop_pct)
    if isinstance(target, int):
        iw, ih = image.size
        if iw <= ih:
            new_w, new_h = target, max(1, int(target * ih / iw))
        else:
            new_w, new_h = max(1, int(target * iw / ih)), target
    else:
        new_h, new_w = target
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), resample)
    # Center crop, rounding the offsets as torchvision does.
    top = round((new_h - h) / 2.0)
    left = round((new_w - w) / 2.0)
    return image.crop((left, top, left + w, top + h))


def _letterbox(image: Any, size: tuple[int, int], pad: int, resample: Any) -> Any:
    """Ultralytics' LetterBox(auto=False, center=True): scale to fit, pad the rest evenly."""
    Image = require_pillow()
    h, w = size
    iw, ih = image.size
    r = min(h / ih, w / iw)
    new_w, new_h = round(iw * r), round(ih * r)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), resample)
    dw, dh = (w - new_w) / 2, (h - new_h) / 2
    left, top = round(dw - 0.1), round(dh - 0.1)
    canvas = Image.new("RGB", (w, h), (pad, pad, pad))
    canvas.paste(image, (left, top))
    return canvas


def preprocess_image(
    image: Any, img_size: int | Sequence[int] = 224, crop_pct: float = CROP_PCT
) -> np.ndarray:
    """The official evaluation transform of one PIL image: ``3 x H x W`` float32, normalised.

    Resize (bicubic) so that the shorter side is ``floor(H / crop_pct)`` (square) or to
    ``floor(H / crop_pct) x floor(W / crop_pct)`` (non-square), center crop ``H x W``, scale to
    [0, 1] and normalise with the ImageNet mean and std (the ``imagenet`` preset).
    """
    recipe = IMAGENET if crop_pct == CROP_PCT else replace(IMAGENET, crop_pct=crop_pct)
    return recipe.apply(image, img_size)
