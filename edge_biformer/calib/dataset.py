"""Calibration and check data ready to feed: selection, decoding, preprocessing, batching.

Files that are not images (by extension) are ignored, images that cannot be decoded are skipped;
both are counted in the log. A source with no usable image is an error.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_biformer.calib.preprocess import CROP_PCT, IMAGENET, Preprocess, require_pillow
from edge_biformer.calib.scan import IMAGE_EXTENSIONS, CalibrationDataError, load_tensor_file, scan
from edge_biformer.onnx_io import INPUT_NAME
from edge_biformer.utils.sizes import image_hw

__all__ = ["CalibrationData", "DataSpec", "default_calibration", "load", "load_data", "synthetic"]


@dataclass
class CalibrationData:
    """Preprocessed tensors ready to feed: ``tensors`` is ``N x 3 x H x W`` float32."""

    tensors: np.ndarray
    source: str
    kind: str
    img_size: tuple[int, int]
    batch_size: int
    files: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    found: int = 0
    used: int = 0
    skipped_unreadable: int = 0
    unreadable_files: list[str] = field(default_factory=list)
    ignored_non_image: int = 0
    missing: int = 0
    seed: int = 0
    #: The recipe the images went through (``None``: precomputed tensors, or noise).
    preprocess: Preprocess | None = None

    def __len__(self) -> int:
        return int(self.tensors.shape[0])

    def batches(self) -> Iterator[np.ndarray]:
        """Consecutive batches of ``batch_size`` (the last one may be smaller)."""
        for start in range(0, len(self), self.batch_size):
            yield self.tensors[start : start + self.batch_size]

    def feeds(self, input_name: str = INPUT_NAME) -> Iterator[dict[str, np.ndarray]]:
        """Batches as feed dicts ``{input_name: batch}`` (Polygraphy / onnxruntime style)."""
        for batch in self.batches():
            yield {input_name: batch}

    @property
    def sha256(self) -> str:
        """Hash of the preprocessed tensors (and labels): the identity of the calibration set."""
        digest = hashlib.sha256()
        digest.update(
            json.dumps({"shape": list(self.tensors.shape), "dtype": str(self.tensors.dtype)}).encode()
        )
        digest.update(np.ascontiguousarray(self.tensors).tobytes())
        if self.labels is not None:
            digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """The facts a manifest or report records about this set."""
        return {
            "source": self.source,
            "path": None if self.kind in ("synthetic", "demo") else os.path.abspath(self.source),
            "kind": self.kind,
            "found": self.found,
            "used": self.used,
            "skipped_unreadable": self.skipped_unreadable,
            "unreadable_files": self.unreadable_files,
            "ignored_non_image": self.ignored_non_image,
            "missing": self.missing,
            "img_size": list(self.img_size),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "preprocessing": (
                "precomputed tensors"
                if self.kind == "tensors"
                else "seeded standard-normal noise"
                if self.kind == "synthetic"
                else (self.preprocess or IMAGENET).describe(self.img_size)
            ),
            "labelled": self.labels is not None,
            "sha256": self.sha256,
        }

    def log_line(self) -> str:
        """One line for the CLI log."""
        parts = [f"{self.used} of {self.found} found", f"batch {self.batch_size}"]
        if self.kind == "demo":
            parts.insert(0, "BUILT-IN DEMO PHOTOGRAPHS (not for deployment)")
        if self.skipped_unreadable:
            named = ", ".join(self.unreadable_files[:5])
            more = f" and {self.skipped_unreadable - 5} more" if self.skipped_unreadable > 5 else ""
            parts.append(f"{self.skipped_unreadable} unreadable skipped ({named}{more})")
        if self.ignored_non_image:
            parts.append(f"{self.ignored_non_image} non-image files ignored")
        if self.missing:
            parts.append(f"{self.missing} listed paths missing")
        return ", ".join(parts)


def _select(n: int, num: int | None, fraction: float | None, seed: int) -> list[int]:
    """Indices of the images to use: all, or a seeded random subset (kept in file order)."""
    count = n
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise CalibrationDataError(f"--calib-fraction must be in (0, 1], got {fraction}")
        count = max(1, math.ceil(n * fraction))
    if num is not None:
        if num < 1:
            raise CalibrationDataError(f"--calib-num must be >= 1, got {num}")
        count = min(count, num)
    if count >= n:
        return list(range(n))
    rng = random.Random(seed)
    return sorted(rng.sample(range(n), count))


def load(
    path: str | os.PathLike[str],
    *,
    img_size: int | Sequence[int] = 224,
    num: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    batch_size: int = 8,
    labelled: bool = False,
    crop_pct: float = CROP_PCT,
    preprocess: Preprocess | None = None,
    channels: int = 3,
) -> CalibrationData:
    """Discover, select and preprocess the data at ``path``.

    Args:
        path: folder of images (recursive), ``.txt`` list of image paths, or ``.npy``/``.npz``.
        img_size: network input ``H`` (= ``W``) or ``(H, W)``.
        num: use at most this many images (a seeded random subset when there are more).
        fraction: use this fraction of the images (rounded up; combined with ``num``: the smaller).
        seed: seed of the subset selection.
        batch_size: batch size of :meth:`CalibrationData.batches`; a set smaller than one batch
            gives one smaller batch.
        labelled: ImageNet-style ``class_dir/image`` folder; labels are sorted class indices.
        crop_pct: center-crop fraction of the default recipe (timm's default 0.875).
        preprocess: the recipe for images (default: ``imagenet`` with ``crop_pct``).
        channels: the graph's input channels (tensors must have them; images are converted).

    Raises:
        CalibrationDataError: nothing usable at ``path``, or tensors of the wrong shape.
    """
    h, w = image_hw(img_size)
    recipe = preprocess or (IMAGENET if crop_pct == CROP_PCT else Preprocess(crop_pct=crop_pct))
    if batch_size < 1:
        raise CalibrationDataError(f"--calib-batch must be >= 1, got {batch_size}")
    found = scan(path, labelled=labelled)
    if found.kind == "tensors":
        array = load_tensor_file(found.source)
        if array.ndim != 4 or array.shape[1] != channels or tuple(array.shape[2:]) != (h, w):
            raise CalibrationDataError(
                f"{found.source} holds an array of shape {tuple(array.shape)}, expected N x {channels} x "
                f"{h} x {w} (preprocessed images of the graph's {channels}-channel input at --img-size "
                f"{h}x{w}); re-create it at that shape or pass the images"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise CalibrationDataError(
                f"{found.source} holds {array.dtype} data; expected preprocessed float32 tensors "
                "(normalised with the ImageNet mean/std), or pass the images themselves"
            )
        if array.shape[0] == 0:
            raise CalibrationDataError(f"{found.source} holds no tensors (N = 0)")
        keep = _select(array.shape[0], num, fraction, seed)
        tensors = np.ascontiguousarray(array[keep], dtype=np.float32)
        return CalibrationData(
            tensors=tensors,
            source=str(found.source),
            kind="tensors",
            img_size=(h, w),
            batch_size=batch_size,
            found=int(array.shape[0]),
            used=len(keep),
            seed=seed,
        )

    Image = require_pillow()
    candidates = found.images
    if not candidates:
        raise CalibrationDataError(
            f"no images in {found.source} (looked for {', '.join(IMAGE_EXTENSIONS)}"
            f"{', recursively' if found.kind == 'folder' else ''}; {found.ignored} other files ignored"
            f"{f', {found.missing} listed paths missing' if found.missing else ''}): "
            "point --calib-data at a folder of images, a .txt list of image paths, or an .npy/.npz"
        )
    if num is not None and num < 1:
        raise CalibrationDataError(f"--calib-num must be >= 1, got {num}")
    order = _select(len(candidates), None, fraction, seed)
    target = len(order) if num is None else min(num, len(order))
    # Random order (seeded) so that skipping an unreadable image draws the next one of the subset.
    rng = random.Random(seed)
    pool = list(order)
    if target < len(pool):
        rng.shuffle(pool)
    arrays: list[np.ndarray] = []
    files: list[str] = []
    labels: list[int] = []
    skipped = 0
    unreadable: list[str] = []
    for i in pool:
        if len(arrays) >= target:
            break
        p = candidates[i]
        try:
            with Image.open(p) as img:
                img.load()
                arrays.append(recipe.apply(img, (h, w), channels))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            skipped += 1
            unreadable.append(f"{p}: {type(err).__name__}")
            continue
        files.append(str(p))
        if found.labels is not None:
            labels.append(found.labels[i])
    if not arrays:
        raise CalibrationDataError(
            f"none of the {len(candidates)} image files in {found.source} could be decoded "
            f"({skipped} unreadable, e.g. {', '.join(unreadable[:3])}): check that they are real "
            "JPEG/PNG/WebP/BMP/TIFF images"
        )
    # Keep file order in the final set so that the same files always give the same tensor order.
    order_idx = sorted(range(len(files)), key=lambda k: files[k])
    tensors = np.stack([arrays[k] for k in order_idx]).astype(np.float32, copy=False)
    return CalibrationData(
        tensors=tensors,
        source=str(found.source),
        kind=found.kind,
        img_size=(h, w),
        batch_size=batch_size,
        files=[files[k] for k in order_idx],
        labels=np.asarray([labels[k] for k in order_idx], np.int64) if found.labels is not None else None,
        classes=found.classes,
        found=len(candidates),
        used=len(arrays),
        skipped_unreadable=skipped,
        unreadable_files=unreadable,
        ignored_non_image=found.ignored,
        missing=found.missing,
        seed=seed,
        preprocess=recipe,
    )


@dataclass(frozen=True)
class DataSpec:
    """Where data is and which part of it to use, before the image size is known.

    The commands take this from their options; the stage that knows the network's input size
    loads it (:meth:`load`). ``labelled``: an ImageNet-style ``class_dir/image`` folder.
    """

    path: str
    num: int | None = None
    fraction: float | None = None
    seed: int = 0
    batch_size: int = 8
    labelled: bool = False
    #: The recipe for images (``None``: ``imagenet``); the build sets the one it records.
    preprocess: Preprocess | None = None
    #: The graph input's channel count.
    channels: int = 3

    def load(self, img_size: int | Sequence[int], batch_size: int | None = None) -> CalibrationData:
        """:func:`load` at ``img_size`` (``batch_size`` replaces the spec's)."""
        return load(
            self.path,
            img_size=img_size,
            num=self.num,
            fraction=self.fraction,
            seed=self.seed,
            batch_size=batch_size or self.batch_size,
            labelled=self.labelled,
            preprocess=self.preprocess,
            channels=self.channels,
        )


def load_data(
    spec: DataSpec, img_size: int | Sequence[int], what: str, batch_size: int | None = None
) -> CalibrationData:
    """Load ``spec`` at ``img_size`` with one log line naming ``what`` (calibration data, check data)."""
    from edge_biformer.utils import stage

    with stage(what) as st:
        data = spec.load(img_size, batch_size)
        st.details.append(f"{data.source}: {data.log_line()}")
    return data


def synthetic(
    n: int, img_size: int | Sequence[int] = 224, batch_size: int = 8, seed: int = 0, channels: int = 3
) -> CalibrationData:
    """Seeded standard-normal tensors, for checks when the user gave no data (not for calibration)."""
    h, w = image_hw(img_size)
    rng = np.random.default_rng(seed)
    tensors = rng.standard_normal((n, channels, h, w), dtype=np.float32)
    return CalibrationData(
        tensors=tensors,
        source=f"synthetic(seed={seed})",
        kind="synthetic",
        img_size=(h, w),
        batch_size=batch_size,
        found=n,
        used=n,
        seed=seed,
    )


def default_calibration(batch_size: int = 8) -> DataSpec:
    """The built-in demo set as calibration data, announced loudly (a command given no ``--calib-data``)."""
    from edge_biformer.calib.demo import DEMO_SOURCE, WARNING, demo_photos
    from edge_biformer.utils import log

    log(WARNING.format(count=len(demo_photos())))
    return DataSpec(DEMO_SOURCE, batch_size=batch_size)
