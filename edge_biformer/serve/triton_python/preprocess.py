"""Triton Python-backend model: encoded images (JPEG, PNG, ...) -> the model's input tensor.

Written by ``edge-biformer serve-repo --ensemble`` as ``<model>_preprocess/1/model.py``. The transform
is the model's recorded preprocessing (``edge_biformer.runtime.preprocessing.Preprocessing``; the tests
check that both give the same tensors), by default the official BiFormer evaluation transform of
``edge_biformer.calib.preprocess_image``: RGB (16-bit and float images scaled to 8 bits), bicubic
resize of the shorter side to ``resize_to`` (or to ``H x W`` for non-square inputs), center crop
``img_size``, scale to [0, 1], normalise with ``mean`` and ``std``; ``resize`` may also be
``letterbox`` (fit, pad with ``pad_value``) or ``stretch``, ``channel_order`` ``BGR``. The recipe comes
from the ``preprocessing`` parameter of ``config.pbtxt`` (JSON). An image that cannot be decoded fails its own
request only. Needs numpy < 2 and Pillow in the serving environment.
"""

import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def to_rgb8(image):
    """8-bit RGB, scaling 16-bit and float samples to 0..255 instead of clipping them."""
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


_METHODS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def _geometry(image, recipe):
    """Resize (and crop or pad) an RGB image to ``img_size`` as the recipe's ``resize`` mode says."""
    h, w = recipe["img_size"]
    interp = _METHODS[recipe.get("interpolation", "bicubic")]
    mode = recipe.get("resize", "center_crop")
    iw, ih = image.size
    if mode == "stretch":
        return image.resize((w, h), interp) if (iw, ih) != (w, h) else image
    if mode == "letterbox":
        scale = min(w / iw, h / ih)
        nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
        if (nw, nh) != (iw, ih):
            image = image.resize((nw, nh), interp)
        pad = int(recipe.get("pad_value", 114))
        canvas = Image.new("RGB", (w, h), (pad, pad, pad))
        canvas.paste(image, ((w - nw) // 2, (h - nh) // 2))
        return canvas
    target = recipe["resize_to"]  # center_crop: resize by crop_pct, then crop
    if isinstance(target, int):
        if iw <= ih:
            new_w, new_h = target, max(1, int(target * ih / iw))
        else:
            new_w, new_h = max(1, int(target * iw / ih)), target
    else:
        new_h, new_w = target
    if (new_w, new_h) != (iw, ih):
        image = image.resize((new_w, new_h), interp)
    top, left = round((new_h - h) / 2.0), round((new_w - w) / 2.0)
    return image.crop((left, top, left + w, top + h))


def preprocess(data, recipe):
    """Encoded image bytes -> ``3 x H x W`` float32."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = to_rgb8(opened)
    array = np.asarray(_geometry(image, recipe), dtype=np.float32) / 255.0
    if recipe.get("channel_order", "RGB") == "BGR":
        array = array[..., ::-1]
    array = (array - np.asarray(recipe["mean"], np.float32)) / np.asarray(recipe["std"], np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32)


class TritonPythonModel:
    """``image`` (TYPE_STRING, the encoded file) -> ``input`` (TYPE_FP32, 3 x H x W)."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.recipe = json.loads(params["preprocessing"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            try:
                tensors = [preprocess(bytes(item), self.recipe) for item in encoded.reshape(-1)]
            except Exception as err:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"cannot decode the image: {err}"))
                )
                continue
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, np.stack(tensors))])
            )
        return responses
