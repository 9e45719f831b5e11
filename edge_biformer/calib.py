"""Calibration and evaluation data: discovery, the official evaluation preprocessing, batching.

Data comes the way people have it:

* a folder of images, searched recursively (``.jpg .jpeg .png .webp .bmp``, any case);
* a text file listing image paths, one per line (relative paths are relative to the list file;
  blank lines and ``#`` comments are ignored);
* an ``.npy`` or ``.npz`` of already preprocessed tensors, ``N x 3 x H x W`` float32 (an ``.npz``
  holds them under ``input`` or as its only array).

Images get the evaluation preprocessing of the official BiFormer models (timm's eval transform with
``crop_pct=0.875``): resize the shorter side to ``floor(224 / 0.875) = 256`` with bicubic
interpolation, center crop 224, scale to [0, 1], normalise with the ImageNet mean and std. Other
sizes scale the same way (``--img-size 448`` resizes to 512 and crops 448; a non-square ``HxW``
resizes to ``floor(H/0.875) x floor(W/0.875)`` and crops ``HxW``, as timm does).

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
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils.sizes import image_hw

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TENSOR_EXTENSIONS = (".npy", ".npz")
LIST_EXTENSIONS = (".txt", ".lst", ".list")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: timm's default eval crop fraction, used by the official BiFormer evaluation.
CROP_PCT = 0.875
INPUT_NAME = "input"


class CalibrationDataError(EdgeBiformerError):
    """Calibration or evaluation data that cannot be used."""


def _require_pillow() -> Any:
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


def preprocess_image(
    image: Any, img_size: int | Sequence[int] = 224, crop_pct: float = CROP_PCT
) -> np.ndarray:
    """The official evaluation transform of one PIL image: ``3 x H x W`` float32, normalised.

    Resize (bicubic) so that the shorter side is ``floor(H / crop_pct)`` (square) or to
    ``floor(H / crop_pct) x floor(W / crop_pct)`` (non-square), center crop ``H x W``, scale to
    [0, 1] and normalise with the ImageNet mean and std.
    """
    Image = _require_pillow()
    h, w = image_hw(img_size)
    image = image.convert("RGB")
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


@dataclass
class ScanResult:
    """What was found at a data path before decoding."""

    kind: str  # "folder" | "list" | "tensors"
    source: Path
    images: list[Path] = field(default_factory=list)
    labels: list[int] | None = None
    classes: list[str] | None = None
    ignored: int = 0  # files that are not images (by extension)
    missing: int = 0  # list entries that do not exist


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def scan(path: str | os.PathLike[str], labelled: bool = False) -> ScanResult:
    """Find the images (or the tensor file) at ``path`` without decoding anything.

    With ``labelled=True`` the folder must be ImageNet-style (``class_dir/image``): labels are the
    indices of the sorted class folder names.
    """
    source = Path(path)
    if not source.exists():
        raise CalibrationDataError(
            f"calibration data {source} does not exist: give a folder of images, a .txt file listing "
            "image paths, or an .npy/.npz of preprocessed N x 3 x H x W float32 tensors"
        )
    if source.is_dir():
        result = ScanResult(kind="folder", source=source)
        files = sorted(
            p
            for p in source.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
        )  # hidden files and everything inside hidden folders (.ipynb_checkpoints, .git) are skipped
        if labelled:
            classes = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not classes:
                raise CalibrationDataError(
                    f"labelled data {source} has no class folders: expected ImageNet style "
                    "<folder>/<class name>/<image>, class indices in sorted order of the folder names"
                )
            index = {name: i for i, name in enumerate(classes)}
            result.classes = classes
            result.labels = []
        for f in files:
            if not _is_image(f):
                result.ignored += 1
                continue
            if labelled:
                rel = f.relative_to(source)
                if len(rel.parts) < 2:
                    result.ignored += 1  # images at the top level have no class
                    continue
                result.labels.append(index[rel.parts[0]])  # type: ignore[union-attr]
            result.images.append(f)
        return result
    suffix = source.suffix.lower()
    if suffix in TENSOR_EXTENSIONS:
        return ScanResult(kind="tensors", source=source)
    if labelled:
        raise CalibrationDataError(
            f"labelled data {source} must be a folder of class folders (<folder>/<class name>/<image>)"
        )
    if suffix in LIST_EXTENSIONS:
        result = ScanResult(kind="list", source=source)
        try:
            lines = source.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise CalibrationDataError(f"cannot read the image list {source}: {err}") from None
        for line in lines:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            p = Path(entry)
            if not p.is_absolute():
                p = source.parent / p
            if not p.is_file():
                result.missing += 1
            elif not _is_image(p):
                result.ignored += 1
            else:
                result.images.append(p)
        return result
    raise CalibrationDataError(
        f"calibration data {source} is neither a folder, a list of image paths (.txt), nor an .npy/.npz "
        "of preprocessed tensors; give one of these"
    )


def _load_tensor_file(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as data:
                keys = list(data.keys())
                if INPUT_NAME in keys:
                    array = data[INPUT_NAME]
                elif len(keys) == 1:
                    array = data[keys[0]]
                else:
                    raise CalibrationDataError(
                        f"{path} holds several arrays ({', '.join(keys)}): name the input tensors "
                        f"'{INPUT_NAME}' (np.savez(path, {INPUT_NAME}=x)) or save only one array"
                    )
    except CalibrationDataError:
        raise
    except Exception as err:
        raise CalibrationDataError(
            f"cannot read the tensors in {path} ({type(err).__name__}: {err})"
        ) from None
    return array


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
    ignored_non_image: int = 0
    missing: int = 0
    seed: int = 0

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
            "kind": self.kind,
            "found": self.found,
            "used": self.used,
            "skipped_unreadable": self.skipped_unreadable,
            "ignored_non_image": self.ignored_non_image,
            "missing": self.missing,
            "img_size": list(self.img_size),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "preprocessing": (
                "precomputed tensors"
                if self.kind == "tensors"
                else f"resize {resize_size(self.img_size)} bicubic, center crop "
                f"{self.img_size[0]}x{self.img_size[1]}, ImageNet mean/std"
            ),
            "labelled": self.labels is not None,
            "sha256": self.sha256,
        }

    def log_line(self) -> str:
        """One line for the CLI log."""
        parts = [f"{self.used} of {self.found} found", f"batch {self.batch_size}"]
        if self.skipped_unreadable:
            parts.append(f"{self.skipped_unreadable} unreadable skipped")
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
        crop_pct: center-crop fraction (timm's default 0.875).

    Raises:
        CalibrationDataError: nothing usable at ``path``, or tensors of the wrong shape.
    """
    h, w = image_hw(img_size)
    if batch_size < 1:
        raise CalibrationDataError(f"--calib-batch must be >= 1, got {batch_size}")
    found = scan(path, labelled=labelled)
    if found.kind == "tensors":
        array = _load_tensor_file(found.source)
        if array.ndim != 4 or array.shape[1] != 3 or tuple(array.shape[2:]) != (h, w):
            raise CalibrationDataError(
                f"{found.source} holds an array of shape {tuple(array.shape)}, expected N x 3 x {h} x {w} "
                f"(preprocessed images at --img-size {h}x{w}); re-create it at that size or pass the images"
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

    Image = _require_pillow()
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
    for i in pool:
        if len(arrays) >= target:
            break
        p = candidates[i]
        try:
            with Image.open(p) as img:
                img.load()
                arrays.append(preprocess_image(img, (h, w), crop_pct))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            skipped += 1
            continue
        files.append(str(p))
        if found.labels is not None:
            labels.append(found.labels[i])
    if not arrays:
        raise CalibrationDataError(
            f"none of the {len(candidates)} image files in {found.source} could be decoded "
            f"({skipped} unreadable): check that they are real JPEG/PNG/WebP/BMP images"
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
        ignored_non_image=found.ignored,
        missing=found.missing,
        seed=seed,
    )


def synthetic(
    n: int, img_size: int | Sequence[int] = 224, batch_size: int = 8, seed: int = 0
) -> CalibrationData:
    """Seeded standard-normal tensors, for checks when the user gave no data (not for calibration)."""
    h, w = image_hw(img_size)
    rng = np.random.default_rng(seed)
    tensors = rng.standard_normal((n, 3, h, w), dtype=np.float32)
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
