"""The built-in demo set: real photographs to calibrate and check on when the user gave no data.

scikit-image's wheel bundles a handful of well-known photographs (``skimage.data``): they are read
from its installed files (scikit-image itself is not imported), converted to RGB by the usual
loader (grayscale ones included) and preprocessed like any folder of images. Synthetic pictures
(the chessboards, the phantom, the logo, the colour chart) and non-images are left out.

Sixteen photographs are enough to try the tool and far too few to deploy with: every stage that
uses them says so, the manifest records ``kind: demo``, and the report repeats it. A deployment
calibrates on a few hundred of its own images (``--calib-data DIR``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edge_biformer.errors import CalibrationDataError

__all__ = ["DEMO_PHOTOS", "DEMO_SOURCE", "WARNING", "demo_photos", "is_demo"]

#: What ``--calib-data`` / ``--check-data`` take for the demo set (and what manifests record).
DEMO_SOURCE = "demo-photos"

#: The photographs of ``skimage.data`` in the demo set (colour first; the rest are grayscale).
DEMO_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "clock_motion.png",
)

#: The line a calibration on the demo set prints.
WARNING = (
    "WARNING: no --calib-data: calibrating on the built-in demo set ({count} photographs bundled with "
    "scikit-image). Enough to try the tool, not to deploy: calibrate a deployment on a few hundred of "
    "its own images (--calib-data DIR)"
)


def is_demo(path: object) -> bool:
    """Whether a data path names the demo set."""
    return str(path) == DEMO_SOURCE


def demo_photos() -> list[Path]:
    """The files of the demo set, from the installed scikit-image (not imported).

    Raises:
        CalibrationDataError: scikit-image is not installed, or its data files are missing.
    """
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise CalibrationDataError(
            "the built-in demo photographs come from scikit-image, which is not installed (it is a "
            "dependency of edge-biformer: `pip install scikit-image`), or pass your own images with "
            "--calib-data DIR"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    found = [folder / name for name in DEMO_PHOTOS if (folder / name).is_file()]
    if not found:
        raise CalibrationDataError(
            f"scikit-image's bundled photographs are not in {folder} (a trimmed installation?): "
            "reinstall scikit-image, or pass your own images with --calib-data DIR"
        )
    return found
