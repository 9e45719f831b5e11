"""Calibration and evaluation data: discovery (:mod:`.scan`), the official evaluation preprocessing
(:mod:`.preprocess`), selection and batching (:mod:`.dataset`).

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
both are counted (and the unreadable ones named) in the log. A source with no usable image is an
error. 16-bit and float images are scaled to 8 bits before the transform (Pillow's own RGB
conversion would clip them to white).
"""

from edge_biformer.calib.dataset import CalibrationData, DataSpec, load, load_data, synthetic
from edge_biformer.calib.demo import DEMO_SOURCE, demo_photos, is_demo
from edge_biformer.calib.preprocess import (
    CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    preprocess_image,
    resize_size,
    to_rgb8,
)
from edge_biformer.calib.scan import (
    IMAGE_EXTENSIONS,
    LIST_EXTENSIONS,
    TENSOR_EXTENSIONS,
    CalibrationDataError,
    ScanResult,
    scan,
)
from edge_biformer.onnx_io import INPUT_NAME

__all__ = [
    "CROP_PCT",
    "DEMO_SOURCE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "INPUT_NAME",
    "LIST_EXTENSIONS",
    "TENSOR_EXTENSIONS",
    "CalibrationData",
    "CalibrationDataError",
    "DataSpec",
    "ScanResult",
    "demo_photos",
    "is_demo",
    "load",
    "load_data",
    "preprocess_image",
    "resize_size",
    "scan",
    "synthetic",
    "to_rgb8",
]
