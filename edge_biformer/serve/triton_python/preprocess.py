"""Triton Python-backend model: encoded images (JPEG, PNG, ...) -> the model's input tensor.

Written by ``edge-biformer serve-repo --ensemble`` as ``<model>_preprocess/1/model.py``. The transform
is the model's recorded recipe, rebuilt from the ``preprocess`` parameter of ``config.pbtxt`` (JSON, the
``edge_biformer.runtime.preprocessing.Preprocessing.to_dict()`` form: ``Preprocess.to_dict()`` plus
``img_size`` and ``channels``) by ``Preprocess.from_dict`` and applied by ``Preprocess.apply``: the
same code as the build's calibration and check data and the Predictor, not a copy. An image that cannot
be decoded fails its own request only. Needs edge-biformer importable in the serving environment
(``python -m edge_biformer.serve.cpu_server`` links it), numpy < 2 and Pillow.
"""

import io
import json

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

from edge_biformer.calib.preprocess import Preprocess


def recipe_of(parameter):
    """``(recipe, (H, W), channels)`` of the ``preprocess`` parameter (a JSON object or its text)."""
    record = json.loads(parameter) if isinstance(parameter, str) else parameter
    h, w = record["img_size"]
    return Preprocess.from_dict(record), (int(h), int(w)), int(record.get("channels", 3))


def apply(data, recipe, img_size, channels):
    """Encoded image bytes -> ``channels x H x W`` float32 by ``recipe``."""
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        return recipe.apply(opened, img_size, channels)


def preprocess(data, parameter):
    """Encoded image bytes -> ``channels x H x W`` float32, as the ``preprocess`` parameter says."""
    return apply(data, *recipe_of(parameter))


class TritonPythonModel:
    """``image`` (TYPE_STRING, the encoded file) -> ``input`` (TYPE_FP32, 3 x H x W)."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.recipe, self.img_size, self.channels = recipe_of(params["preprocess"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            try:
                tensors = [
                    apply(bytes(item), self.recipe, self.img_size, self.channels)
                    for item in encoded.reshape(-1)
                ]
            except Exception as err:
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"cannot decode the image: {err}"))
                )
                continue
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, np.stack(tensors))])
            )
        return responses
