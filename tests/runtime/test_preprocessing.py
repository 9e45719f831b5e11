"""The one reader of a manifest's preprocessing record: defaults = what our build applies, presets,
overrides, tolerance of unknown keys, clear errors for values it cannot apply; and the Triton
preprocessing model (a standalone copy of the transform) gives the same tensors for every recipe."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from edge_biformer.calib import demo_photos, preprocess_image
from edge_biformer.calib.preprocess import IMAGENET_MEAN, IMAGENET_STD
from edge_biformer.runtime.preprocessing import (
    Preprocessing,
    PreprocessingError,
    preprocessing_record,
    read_preprocessing,
)


def _image(h: int = 70, w: int = 90) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_without_a_record_the_build_default_is_the_official_transform():
    prep = read_preprocessing({"stage": "export"}, {"kind": "build", "img_size": [48, 64]})
    assert prep == Preprocessing((48, 64)) and prep.official
    np.testing.assert_array_equal(prep(_image()), preprocess_image(_image(), (48, 64)))
    # a calibration summary's free-text "preprocessing" is a description, not a record
    assert preprocessing_record({"preprocessing": "resize 256 bicubic, ..."}, {}) == (None, "")
    assert prep.describe() == "resize 54x73 bicubic, center crop 48x64, ImageNet mean/std, RGB"


def test_records_presets_and_overrides_are_read_tolerantly():
    own = {"preprocessing": {"preset": "yolo", "future_key": {"anything": 1}}, "img_size": [32, 32]}
    prep = read_preprocessing(own, {}, (32, 32))
    assert (prep.resize, prep.mean, prep.std, prep.channel_order, prep.pad_value) == (
        "letterbox", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "RGB", 114,
    )  # fmt: skip
    assert prep.describe() == "letterbox 32x32 bilinear (pad 114), scaled to 0..1, RGB"
    bgr = read_preprocessing(
        {"preprocessing": {"preset": "imagenet", "color": "bgr", "crop_pct": 1.0}}, {}, (48, 48)
    )
    assert bgr.channel_order == "BGR" and bgr.crop_pct == 1.0 and bgr.mean == IMAGENET_MEAN
    # the build manifest wins over the side-car; the source chain is read last
    chain = {"source": {"path": "a.onnx", "manifest": {"preprocessing": "yolo"}}}
    assert read_preprocessing(chain, {}, (16, 16)).resize == "letterbox"
    assert read_preprocessing(chain, {"preprocessing": {"resize": "stretch"}}, (16, 16)).resize == "stretch"
    # a record's own img_size wins over the fallback
    assert read_preprocessing({"preprocessing": {"img_size": [20, 24]}}, {}, (16, 16)).img_size == (20, 24)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"preset": "detectron"}, "preset 'detectron', which this version does not know"),
        ({"resize": "fisheye"}, "resize 'fisheye'"),
        ({"channel_order": "GBR"}, "channel_order 'GBR'"),
        ({"std": [1, 0, 1]}, "std > 0"),
        ({"mean": "zero"}, "malformed"),
    ],
)
def test_values_it_cannot_apply_are_named(record, message):
    with pytest.raises(PreprocessingError, match=message) as info:
        read_preprocessing({"preprocessing": record}, {}, (32, 32))
    assert "the preprocessing record of the manifest" in str(info.value) or "manifest" in str(info.value)


def test_letterbox_stretch_and_bgr_geometry():
    wide = Image.new("RGB", (80, 40), (200, 10, 30))
    box = Preprocessing((40, 40), resize="letterbox", mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest")
    x = box(wide)
    assert x.shape == (3, 40, 40)
    np.testing.assert_allclose(x[:, 0, 0], [114 / 255] * 3, rtol=1e-6)  # padded rows above
    np.testing.assert_allclose(x[:, 20, 20], [200 / 255, 10 / 255, 30 / 255], rtol=1e-6)
    bgr = Preprocessing((40, 40), resize="stretch", channel_order="BGR", mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(bgr(wide)[:, 5, 5], [30 / 255, 10 / 255, 200 / 255], rtol=1e-5)
    # ImageNet values in another channel order: the official geometry, normalised per channel
    ref = preprocess_image(_image(), 48)
    swapped = Preprocessing((48, 48), channel_order="BGR", mean=IMAGENET_MEAN[::-1], std=IMAGENET_STD[::-1])
    np.testing.assert_allclose(swapped(_image()), ref[::-1], atol=1e-5)


def _triton_preprocess() -> types.ModuleType:
    from edge_biformer.serve.triton_python import FOLDER

    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("eb_template_preprocess_recipes", FOLDER / "preprocess.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "prep",
    [
        Preprocessing((48, 64)),
        Preprocessing((40, 40), resize="letterbox", interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1)),
        Preprocessing((32, 48), resize="stretch", channel_order="BGR"),
        Preprocessing((48, 48), crop_pct=0.95, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3),
    ],
    ids=["official", "letterbox", "stretch-bgr", "center-crop-bilinear"],
)
def test_triton_preprocessing_model_equals_the_predictor(prep):
    module = _triton_preprocess()
    recipe = json.loads(json.dumps(prep.to_dict()))
    for photo in demo_photos()[:4]:
        np.testing.assert_array_equal(module.preprocess(photo.read_bytes(), recipe), prep(Image.open(photo)))
