"""Finding calibration and check data the way people have it, before decoding anything.

* a folder of images, searched recursively (``.jpg .jpeg .png .webp .bmp``, any case; hidden files
  and folders are skipped);
* a text file listing image paths, one per line (relative paths are relative to the list file;
  blank lines and ``#`` comments are ignored);
* an ``.npy`` or ``.npz`` of already preprocessed tensors, ``N x 3 x H x W`` float32 (an ``.npz``
  holds them under ``input`` or as its only array);
* ``demo-photos`` (where no file of that name exists): the built-in photographs of
  :mod:`edge_biformer.calib.demo`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_biformer.errors import CalibrationDataError
from edge_biformer.onnx_io import INPUT_NAME

__all__ = [
    "IMAGE_EXTENSIONS",
    "LIST_EXTENSIONS",
    "TENSOR_EXTENSIONS",
    "CalibrationDataError",
    "ScanResult",
    "load_tensor_file",
    "scan",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
TENSOR_EXTENSIONS = (".npy", ".npz")
LIST_EXTENSIONS = (".txt", ".lst", ".list")


@dataclass
class ScanResult:
    """What was found at a data path before decoding."""

    kind: str  # "folder" | "list" | "tensors" | "demo"
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
        from edge_biformer.calib.demo import demo_photos, is_demo

        if is_demo(path):  # a file of that name would be the user's data
            return ScanResult(kind="demo", source=source, images=demo_photos())
        raise CalibrationDataError(
            f"calibration data {source} does not exist: give a folder of images, a .txt file listing "
            "image paths, an .npy/.npz of preprocessed N x 3 x H x W float32 tensors, or demo-photos "
            "(the built-in demo set)"
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


def load_tensor_file(path: Path) -> np.ndarray:
    """The array of an ``.npy`` file, or the input array of an ``.npz``."""
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
