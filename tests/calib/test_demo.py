"""The built-in demo set: scikit-image's photographs, as data for a command given none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_biformer import calib
from edge_biformer.calib import DEMO_SOURCE, CalibrationDataError
from edge_biformer.calib.demo import DEMO_PHOTOS

pytest.importorskip("PIL", reason="Pillow is needed to read the photographs")
pytest.importorskip("skimage", reason="scikit-image (a default dependency) bundles the photographs")


def test_demo_set_is_real_rgb_photographs() -> None:
    files = calib.demo_photos()
    assert [f.name for f in files] == list(DEMO_PHOTOS) and len(files) >= 12
    data = calib.load(DEMO_SOURCE, img_size=64, batch_size=4)
    assert data.kind == "demo" and data.tensors.shape == (len(files), 3, 64, 64)
    assert "BUILT-IN DEMO PHOTOGRAPHS" in data.log_line()
    summary = data.summary()
    assert summary["kind"] == "demo" and summary["path"] is None and summary["source"] == DEMO_SOURCE
    # photographs, not flat or synthetic pictures: every image has real spatial structure
    per_image_std = data.tensors.reshape(len(files), -1).std(axis=1)
    assert (per_image_std > 0.2).all(), per_image_std
    # grayscale photographs become RGB with equal channels; colour ones keep their colour
    from PIL import Image

    with Image.open(files[DEMO_PHOTOS.index("camera.png")]) as img:
        assert img.mode == "L"
    assert np.isfinite(data.tensors).all()
    astronaut = data.tensors[DEMO_PHOTOS.index("astronaut.png")]
    assert np.abs(astronaut[0] * 0.229 - astronaut[2] * 0.225).mean() > 0.02  # R and B differ


def test_a_real_folder_of_that_name_is_the_users_data(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEMO_SOURCE).mkdir()
    with pytest.raises(CalibrationDataError, match="no images in demo-photos"):
        calib.load(DEMO_SOURCE, img_size=32)


def test_missing_scikit_image_is_a_clear_error(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a)
    )
    with pytest.raises(CalibrationDataError, match=r"scikit-image, which is not installed.*--calib-data DIR"):
        calib.load(DEMO_SOURCE, img_size=32)
