"""The one reader of a manifest's ``preprocess`` record (``Preprocess.to_dict()``, what the build writes):
defaults = what our build applies, presets, overrides, tolerance of unknown keys, clear errors naming the
manifest for values it cannot apply; all pixel work is ``Preprocess.apply``; and the Triton preprocessing
model, which rebuilds the recipe from its parameter, gives the same tensors for every recipe."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from edge_biformer.calib import demo_photos, preprocess_image
from edge_biformer.calib.preprocess import IMAGENET, IMAGENET_MEAN, IMAGENET_STD, PRESETS, Preprocess, preset
from edge_biformer.runtime.preprocessing import (
    Preprocessing,
    PreprocessingError,
    preprocess_record,
    read_preprocessing,
)


def _image(h: int = 70, w: int = 90) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_without_a_record_the_build_default_is_the_official_transform():
    prep = read_preprocessing({"stage": "export"}, {"kind": "build", "img_size": [48, 64]})
    assert prep == Preprocessing((48, 64)) and prep.recipe is IMAGENET and prep.channels == 3
    np.testing.assert_array_equal(prep(_image()), preprocess_image(_image(), (48, 64)))
    # an H x W x 3 uint8 array is the same image
    np.testing.assert_array_equal(prep(np.asarray(_image())), preprocess_image(_image(), (48, 64)))
    # a calibration summary's free-text "preprocessing" is another key, not the record
    assert preprocess_record({"calibration": {"preprocessing": "resize 256 bicubic, ..."}}, {}) == (None, "")
    assert prep.describe() == "imagenet: resize 54x73 bicubic, center crop 48x64, ImageNet mean/std, RGB"
    assert prep.describe() == IMAGENET.describe((48, 64))


def test_the_builds_record_is_read_with_presets_overrides_and_unknown_keys():
    # yolo, as `build --preprocess yolo` records it, with a key of a future version
    own = {"preprocess": {**PRESETS["yolo"].to_dict(), "future_key": {"anything": 1}}, "img_size": [32, 32]}
    prep = read_preprocessing(own, {}, (32, 32))
    assert prep.recipe == PRESETS["yolo"]
    assert (prep.recipe.resize, prep.recipe.mean, prep.recipe.std, prep.recipe.channel_order) == (
        "letterbox", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "rgb",
    )  # fmt: skip
    assert prep.describe() == "yolo: letterbox to 32x32 bilinear (pad 114), 0-1, no normalisation, RGB"
    wide = Image.new("RGB", (80, 40), (200, 10, 30))
    x = read_preprocessing(own, {}, (40, 40))(wide)  # letterbox: padded rows above, the image centred
    assert x.shape == (3, 40, 40)
    np.testing.assert_allclose(x[:, 0, 0], [114 / 255] * 3, rtol=1e-6)
    np.testing.assert_allclose(x[:, 20, 20], [200 / 255, 10 / 255, 30 / 255], rtol=1e-6)
    np.testing.assert_array_equal(x, PRESETS["yolo"].apply(wide, (40, 40)))
    # overrides (--preprocess imagenet --channel-order bgr --crop-pct 1), recorded as the build writes them
    custom = preset("imagenet", channel_order="bgr", crop_pct=1.0)
    bgr = read_preprocessing({"preprocess": json.loads(json.dumps(custom.to_dict()))}, {}, (48, 48))
    assert bgr.recipe == custom and bgr.recipe.name == "imagenet+custom"
    assert (bgr.recipe.channel_order, bgr.recipe.crop_pct, bgr.recipe.mean) == ("bgr", 1.0, IMAGENET_MEAN)
    np.testing.assert_array_equal(bgr(_image()), custom.apply(_image(), 48))
    # ImageNet values in another channel order: the official geometry, channels reversed
    swapped = Preprocess("bgr", channel_order="bgr", mean=IMAGENET_MEAN[::-1], std=IMAGENET_STD[::-1])
    np.testing.assert_allclose(
        Preprocessing((48, 48), swapped)(_image()), preprocess_image(_image(), 48)[::-1], atol=1e-5
    )
    # a partial record: the missing keys take the dataclass defaults (the imagenet values)
    partial = read_preprocessing({"preprocess": {"resize": "stretch"}}, {}, (16, 16))
    assert partial.recipe == Preprocess(resize="stretch")
    # the build manifest wins over the side-car; the source chain is read last
    chain = {"source": {"path": "a.onnx", "manifest": {"preprocess": PRESETS["yolo"].to_dict()}}}
    assert read_preprocessing(chain, {}, (16, 16)).recipe == PRESETS["yolo"]
    build = {"kind": "build", "preprocess": PRESETS["unit"].to_dict(), "img_size": [20, 24]}
    from_build = read_preprocessing(chain, build, (16, 16))
    assert from_build.recipe == PRESETS["unit"] and from_build.img_size == (20, 24)  # the build's size wins
    # the build manifest's input record gives the channel count (a grey model)
    grey = read_preprocessing({}, {"img_size": [16, 16], "input": {"name": "x", "shape": ["N", 1, 16, 16]}})
    assert grey.channels == 1 and grey(_image()).shape == (1, 16, 16)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"resize": "fisheye"}, "resize must be one of crop, letterbox, stretch, got 'fisheye'"),
        ({"channel_order": "gbr"}, "channel order must be rgb or bgr, got 'gbr'"),
        ({"interpolation": "lanczos"}, "interpolation must be bicubic or bilinear"),
        ({"std": [1, 0, 1]}, "std must not be 0"),
        ({"mean": "zero"}, "mean is malformed"),
        ({"crop_pct": "most"}, "crop_pct is malformed"),
        ({"pad_value": 300}, "pad_value must be in 0..255"),
        ("imagenet", "not a recipe"),
    ],
)
def test_values_it_cannot_apply_are_named(record, message, tmp_path):
    with pytest.raises(PreprocessingError, match=message) as info:
        read_preprocessing({"preprocess": record}, {}, (32, 32))
    assert "the preprocess record of the manifest" in str(info.value)
    # with the artifact known, the manifest is named by its file
    with pytest.raises(PreprocessingError, match=r"build manifest .*manifest\.json"):
        read_preprocessing({}, {"preprocess": record}, (32, 32), artifact=tmp_path / "model.onnx")


def test_input_size_recorded_nowhere_is_an_error():
    with pytest.raises(PreprocessingError, match="pass --img-size"):
        read_preprocessing({}, {}, None)


def test_to_dict_round_trips():
    for recipe in PRESETS.values():
        prep = Preprocessing((40, 48), recipe, 1)
        record = json.loads(json.dumps(prep.to_dict()))
        assert record["img_size"] == [40, 48] and record["channels"] == 1
        assert Preprocessing.from_dict(record) == prep
        assert Preprocess.from_dict(record) == recipe  # img_size / channels are ignored by the recipe


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
        Preprocessing((40, 40), PRESETS["yolo"]),
        Preprocessing((32, 48), preset("imagenet-resize", channel_order="bgr")),
        Preprocessing(
            (48, 48),
            preset("imagenet", crop_pct=0.95, interpolation="bilinear", mean=[0.5] * 3, std=[0.5] * 3),
        ),
        Preprocessing((32, 32), PRESETS["unit"], channels=1),
    ],
    ids=["official", "yolo-letterbox", "stretch-bgr", "center-crop-bilinear", "grey"],
)
def test_triton_preprocessing_model_equals_the_predictor(prep):
    module = _triton_preprocess()
    parameter = json.dumps(prep.to_dict())  # as serve-repo writes it into config.pbtxt
    recipe, img_size, channels = module.recipe_of(parameter)
    assert (recipe, img_size, channels) == (prep.recipe, prep.img_size, prep.channels)
    for photo in demo_photos()[:4]:
        np.testing.assert_array_equal(
            module.preprocess(photo.read_bytes(), parameter), prep(Image.open(photo))
        )
