"""Polygraphy data-loader script: serves edge-biformer's calibration tensors to Polygraphy.

The same tensors that ``edge-biformer quantize/build`` calibrate with (same discovery, same
official evaluation preprocessing, same seeded subset), for::

    EDGE_BIFORMER_CALIB_DATA=/data/calib polygraphy run model.onnx --onnxrt \\
        --data-loader-script calib/data_loader.py:load_data

    EDGE_BIFORMER_CALIB_DATA=/data/calib polygraphy convert model.onnx --int8 \\
        --data-loader-script calib/data_loader.py:load_data -o model.int8.plan

Configuration (environment variables; only the first is required):

==============================  ===========================================  ========
variable                        meaning                                      default
==============================  ===========================================  ========
``EDGE_BIFORMER_CALIB_DATA``    folder of images, .txt list, or .npy/.npz    (none)
``EDGE_BIFORMER_IMG_SIZE``      ``224`` or ``HxW``                           224
``EDGE_BIFORMER_CALIB_BATCH``   batch size of each feed                      8
``EDGE_BIFORMER_CALIB_NUM``     use at most this many images                 all
``EDGE_BIFORMER_CALIB_FRACTION`` use this fraction of the images             1.0
``EDGE_BIFORMER_CALIB_SEED``    seed of the subset selection                 0
``EDGE_BIFORMER_INPUT_NAME``    graph input name                             input
==============================  ===========================================  ========

``load_data`` is the default function name Polygraphy looks for, so
``--data-loader-script calib/data_loader.py`` alone works too. For a fixed-batch engine or a
TensorRT calibrator whose profile does not allow a smaller last batch, set
``EDGE_BIFORMER_CALIB_DROP_LAST=1``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# Inside a checkout, use the package beside this script (same version as the script), else the
# installed one.
_CHECKOUT = Path(__file__).resolve().parents[1]
if (_CHECKOUT / "edge_biformer" / "calib" / "__init__.py").is_file() and str(_CHECKOUT) not in sys.path:
    sys.path.insert(1, str(_CHECKOUT))
    for _name in [m for m in sys.modules if m == "edge_biformer" or m.startswith("edge_biformer.")]:
        del sys.modules[_name]
from edge_biformer import calib as _calib  # noqa: E402
from edge_biformer.utils.sizes import parse_image_size  # noqa: E402


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _img_size() -> tuple[int, int]:
    text = os.environ.get("EDGE_BIFORMER_IMG_SIZE", "224")
    try:
        return parse_image_size(text)
    except ValueError as err:
        raise SystemExit(f"calib/data_loader.py: EDGE_BIFORMER_IMG_SIZE: {err}") from None


def load_calibration() -> _calib.CalibrationData:
    """The calibration set the environment variables describe."""
    path = os.environ.get("EDGE_BIFORMER_CALIB_DATA", "").strip()
    if not path:
        raise SystemExit(
            "calib/data_loader.py: set EDGE_BIFORMER_CALIB_DATA to a folder of images, a .txt list of "
            "image paths or an .npy/.npz of preprocessed tensors"
        )
    fraction = os.environ.get("EDGE_BIFORMER_CALIB_FRACTION", "").strip()
    try:
        return _calib.load(
            path,
            img_size=_img_size(),
            num=_env_int("EDGE_BIFORMER_CALIB_NUM", None),
            fraction=float(fraction) if fraction else None,
            seed=_env_int("EDGE_BIFORMER_CALIB_SEED", 0) or 0,
            batch_size=_env_int("EDGE_BIFORMER_CALIB_BATCH", 8) or 8,
        )
    except _calib.CalibrationDataError as err:
        raise SystemExit(f"calib/data_loader.py: {err}") from None


def load_data() -> Iterator[dict[str, np.ndarray]]:
    """Yield feed dicts ``{input_name: N x 3 x H x W float32}`` (Polygraphy's data-loader protocol)."""
    data = load_calibration()
    name = os.environ.get("EDGE_BIFORMER_INPUT_NAME", _calib.INPUT_NAME)
    drop_last = os.environ.get("EDGE_BIFORMER_CALIB_DROP_LAST", "") not in ("", "0")
    print(f"[edge-biformer] calib/data_loader.py: {data.source}: {data.log_line()}", file=sys.stderr)
    for batch in data.batches():
        if drop_last and batch.shape[0] < data.batch_size and len(data) >= data.batch_size:
            break
        yield {name: batch}
