"""The official BiFormer evaluation preprocessing of one image (timm's eval transform, ``crop_pct=0.875``).

Resize the shorter side to ``floor(224 / 0.875) = 256`` with bicubic interpolation, center crop
224, scale to [0, 1], normalise with the ImageNet mean and std. Other sizes scale the same way
(``448`` resizes to 512 and crops 448; a non-square ``HxW`` resizes to
``floor(H/0.875) x floor(W/0.875)`` and crops ``HxW``, as timm does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_biformer.calib.scan import CalibrationDataError
from edge_biformer.utils.sizes import image_hw

__all__ = [
    "CROP_PCT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "preprocess_image",
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


def preprocess_image(
    image: Any, img_size: int | Sequence[int] = 224, crop_pct: float = CROP_PCT
) -> np.ndarray:
    """The official evaluation transform of one PIL image: ``3 x H x W`` float32, normalised.

    Resize (bicubic) so that the shorter side is ``floor(H / crop_pct)`` (square) or to
    ``floor(H / crop_pct) x floor(W / crop_pct)`` (non-square), center crop ``H x W``, scale to
    [0, 1] and normalise with the ImageNet mean and std.
    """
    Image = require_pillow()
    h, w = image_hw(img_size)
    image = to_rgb8(image)
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
        image = image.resize((new_w, new_h), Image.BICUBIC)
    # Center crop, rounding the offsets as torchvision does.
    top = round((new_h - h) / 2.0)
    left = round((new_w - w) / 2.0)
    if top < 0 or left < 0:  # only for crop_pct > 1: pad like torchvision would (rare)
        raise CalibrationDataError(f"crop_pct {crop_pct} larger than 1 is not supported")
    image = image.crop((left, top, left + w, top + h))
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)
