"""Image sizes as the API (``224`` or ``(H, W)``) and the command line (``224`` or ``512x640``) give them."""

from __future__ import annotations

from collections.abc import Sequence

from edge_biformer.errors import EdgeBiformerError


def image_hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    """``224`` -> ``(224, 224)``; ``(H, W)`` or ``[N]`` -> ``(H, W)``."""
    if isinstance(img_size, int):
        return img_size, img_size
    values = [int(v) for v in img_size]
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise EdgeBiformerError(f"img_size must be one int or (height, width), got {img_size}")


def parse_image_size(text: str) -> tuple[int, int]:
    """``"224"`` or ``"512x640"`` (height x width); raises ``ValueError`` otherwise."""
    try:
        parts = [int(p) for p in text.strip().lower().split("x")]
    except ValueError:
        raise ValueError(f"expected N or HxW, got {text!r}") from None
    if len(parts) not in (1, 2):
        raise ValueError(f"expected N or HxW, got {text!r}")
    return image_hw(parts)
