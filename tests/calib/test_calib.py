"""Calibration data: discovery, preprocessing, selection, edge cases and the Polygraphy loader."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge_biformer import calib
from edge_biformer.calib import CalibrationDataError
from tests.conftest import polygraphy_exe

PIL = pytest.importorskip("PIL", reason="Pillow is needed to read calibration images")
from PIL import Image  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


def _image(path: Path, size: tuple[int, int] = (80, 64), seed: int = 0, fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def test_preprocess_matches_official_eval_transform() -> None:
    # 300x400 (w x h): shorter side -> 256 bicubic, crop 224 at the centre, ImageNet normalisation.
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (400, 300, 3), dtype=np.uint8))
    out = calib.preprocess_image(img, 224)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    resized = np.asarray(img.resize((256, 341), Image.BICUBIC), np.float32) / 255.0
    top, left = round((341 - 224) / 2), round((256 - 224) / 2)
    crop = resized[top : top + 224, left : left + 224]
    expected = ((crop - np.array(calib.IMAGENET_MEAN)) / np.array(calib.IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_resize_size_scales_with_input() -> None:
    assert calib.resize_size(224) == 256
    assert calib.resize_size(448) == 512
    assert calib.resize_size((224, 448)) == (256, 512)
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8))
    assert calib.preprocess_image(img, (64, 96)).shape == (3, 64, 96)


def test_folder_recursive_mixed_files_and_corrupt_images(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg", seed=1, fmt="JPEG")
    _image(tmp_path / "sub" / "b.PNG", seed=2, fmt="PNG")
    _image(tmp_path / "sub" / "deeper" / "c.webp", seed=3, fmt="WEBP")
    _image(tmp_path / "d.bmp", seed=4, fmt="BMP")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "labels.csv").write_text("a,1")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "sub" / "b.PNG").read_bytes()[:60])
    data = calib.load(tmp_path, img_size=32, batch_size=3)
    assert data.tensors.shape == (4, 3, 32, 32)
    assert data.found == 6 and data.used == 4
    assert data.skipped_unreadable == 2
    assert data.ignored_non_image == 2
    assert "2 unreadable skipped" in data.log_line() and "2 non-image files ignored" in data.log_line()
    # the unreadable files are named, in the log line and in the summary a manifest records
    assert "broken.jpg" in data.log_line() and "truncated.png" in data.log_line()
    assert sorted(Path(f.split(":")[0]).name for f in data.summary()["unreadable_files"]) == [
        "broken.jpg",
        "truncated.png",
    ]
    assert [b.shape[0] for b in data.batches()] == [3, 1]
    assert np.isfinite(data.tensors).all()


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match=r"no images in .*--calib-data"):
        calib.load(tmp_path, img_size=32)


def test_folder_with_only_non_images_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(CalibrationDataError, match="1 other files ignored"):
        calib.load(tmp_path, img_size=32)


def test_only_corrupt_images_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(b"garbage")
    (tmp_path / "y.png").write_bytes(b"")
    with pytest.raises(CalibrationDataError, match=r"none of the 2 image files .* could be decoded"):
        calib.load(tmp_path, img_size=32)


def test_missing_path_and_unknown_file_type(tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match="does not exist"):
        calib.load(tmp_path / "nope", img_size=32)
    other = tmp_path / "model.onnx"
    other.write_bytes(b"x")
    with pytest.raises(CalibrationDataError, match=r"neither a folder"):
        calib.load(other, img_size=32)


@pytest.mark.parametrize("bits", [16, 32])
def test_wide_grayscale_images_are_scaled_not_clipped(tmp_path: Path, bits: int) -> None:
    """A 16-bit PNG (mode I;16) or 32-bit TIFF (mode I): Pillow's convert("RGB") clips it to white."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64)
    if bits == 16:
        Image.fromarray(ramp.astype(np.uint16)).save(tmp_path / "g16.png")
    else:
        Image.fromarray(ramp.astype(np.int32), "I").save(tmp_path / "g32.tif")  # 32-bit TIFF
    (path,) = tmp_path.iterdir()
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")
        clipped = np.asarray(img.convert("RGB"), np.float64).mean()
        scaled = np.asarray(calib.to_rgb8(img), np.float64)
    assert clipped > 250  # what the plain conversion gives
    assert scaled.mean() == pytest.approx(ramp.mean() / 257, abs=1.0)
    assert scaled.min() == 0 and scaled.max() == 255
    data = calib.load(tmp_path, img_size=32)
    eight_bit = tmp_path / "eight" / "g8.png"
    eight_bit.parent.mkdir()
    Image.fromarray((ramp / 257).round().astype(np.uint8)).save(eight_bit)
    same = calib.load(eight_bit.parent, img_size=32)
    assert np.abs(data.tensors - same.tensors).max() < 0.03  # the same picture, not a white one


def test_float_images_are_scaled(tmp_path: Path) -> None:
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    out = np.asarray(calib.to_rgb8(Image.fromarray(ramp, "F")), np.float64)
    assert out.shape == (32, 32, 3) and out.mean() == pytest.approx(127.5, abs=1.0)


def test_fewer_images_than_the_batch(tmp_path: Path) -> None:
    _image(tmp_path / "one.png", seed=5)
    _image(tmp_path / "two.png", seed=6)
    data = calib.load(tmp_path, img_size=32, batch_size=8)
    assert [b.shape for b in data.batches()] == [(2, 3, 32, 32)]


def test_list_file_with_relative_missing_and_comments(tmp_path: Path) -> None:
    _image(tmp_path / "imgs" / "a.png", seed=1)
    _image(tmp_path / "imgs" / "b.jpg", seed=2, fmt="JPEG")
    lst = tmp_path / "calib.txt"
    lst.write_text(f"# calibration\nimgs/a.png\n\n{tmp_path / 'imgs' / 'b.jpg'}\nimgs/gone.png\n")
    data = calib.load(lst, img_size=32)
    assert data.kind == "list" and data.used == 2 and data.missing == 1


def test_selection_num_fraction_seed(tmp_path: Path) -> None:
    for i in range(10):
        _image(tmp_path / f"{i:02d}.png", seed=i, size=(40, 40))
    a = calib.load(tmp_path, img_size=32, num=4, seed=0)
    b = calib.load(tmp_path, img_size=32, num=4, seed=0)
    c = calib.load(tmp_path, img_size=32, num=4, seed=1)
    assert a.used == 4 and a.files == b.files and a.sha256 == b.sha256
    assert a.files != c.files
    assert calib.load(tmp_path, img_size=32, fraction=0.25).used == 3  # ceil(2.5)
    assert calib.load(tmp_path, img_size=32, fraction=0.5, num=2).used == 2
    with pytest.raises(CalibrationDataError, match="calib-fraction"):
        calib.load(tmp_path, img_size=32, fraction=1.5)
    with pytest.raises(CalibrationDataError, match="calib-num"):
        calib.load(tmp_path, img_size=32, num=0)


def test_unreadable_image_in_subset_is_replaced(tmp_path: Path) -> None:
    for i in range(5):
        _image(tmp_path / f"{i}.png", seed=i, size=(40, 40))
    for i in range(5):
        (tmp_path / f"bad{i}.png").write_bytes(b"nope")
    data = calib.load(tmp_path, img_size=32, num=4, seed=3)
    assert data.used == 4 and data.skipped_unreadable >= 1  # seed 3 draws unreadable files first


def test_npy_and_npz_tensors(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", input=x, other=x[:1])
    np.savez(tmp_path / "single.npz", anything=x)
    np.savez(tmp_path / "ambiguous.npz", a=x, b=x)
    for name in ("x.npy", "x.npz", "single.npz"):
        data = calib.load(tmp_path / name, img_size=32, batch_size=2)
        np.testing.assert_array_equal(data.tensors, x)
        assert data.kind == "tensors"
    with pytest.raises(CalibrationDataError, match="several arrays"):
        calib.load(tmp_path / "ambiguous.npz", img_size=32)
    with pytest.raises(CalibrationDataError, match=r"expected N x 3 x 64 x 64"):
        calib.load(tmp_path / "x.npy", img_size=64)
    np.save(tmp_path / "u8.npy", np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(CalibrationDataError, match="uint8"):
        calib.load(tmp_path / "u8.npy", img_size=32)


def test_labelled_folder(tmp_path: Path) -> None:
    _image(tmp_path / "cat" / "1.png", seed=1)
    _image(tmp_path / "cat" / "2.png", seed=2)
    _image(tmp_path / "dog" / "1.png", seed=3)
    _image(tmp_path / "stray.png", seed=4)
    data = calib.load(tmp_path, img_size=32, labelled=True)
    assert data.classes == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 1]


def _identity_onnx(path: Path, size: int) -> None:
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, size, size])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_polygraphy_data_loader_script(tmp_path: Path) -> None:
    for i in range(3):
        _image(tmp_path / "imgs" / f"{i}.png", seed=i)
    model = tmp_path / "relu.onnx"
    _identity_onnx(model, 32)
    env = dict(os.environ, EDGE_BIFORMER_CALIB_DATA=str(tmp_path / "imgs"), EDGE_BIFORMER_IMG_SIZE="32")
    env["EDGE_BIFORMER_CALIB_BATCH"] = "2"
    outputs = tmp_path / "out.json"
    cmd = [
        polygraphy_exe(), "run", str(model), "--onnxrt",
        "--data-loader-script", f"{REPO_ROOT / 'calib' / 'data_loader.py'}:load_data",
        "--save-inputs", str(tmp_path / "inputs.json"), "--save-outputs", str(outputs),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    feeds = load_json(str(tmp_path / "inputs.json"))
    expected = calib.load(tmp_path / "imgs", img_size=32, batch_size=2)
    assert [f["input"].shape[0] for f in feeds] == [2, 1]
    np.testing.assert_array_equal(np.concatenate([f["input"] for f in feeds]), expected.tensors)
    results = RunResults.load(str(outputs))
    (_runner, iterations) = next(iter(results.items()))
    assert len(iterations) == 2
    np.testing.assert_array_equal(iterations[1]["logits"], np.maximum(expected.tensors[2:], 0))


def test_hidden_folders_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / ".ipynb_checkpoints").mkdir()
    _image(tmp_path / "cat" / "a.png", seed=0, size=(40, 40))
    _image(tmp_path / ".ipynb_checkpoints" / "b.png", seed=1, size=(40, 40))
    _image(tmp_path / "cat" / ".c.png", seed=2, size=(40, 40))
    assert calib.load(tmp_path, img_size=32).used == 1
    labelled = calib.load(tmp_path, img_size=32, labelled=True)
    assert labelled.used == 1
