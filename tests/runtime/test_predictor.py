"""The Predictor on the CPU (ONNX in onnxruntime, rewritten graphs in cpu_session) and the engine runtime's
plugin discovery and errors where TensorRT is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_biformer.calib import preprocess_image
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.runtime import Predictor, Preprocessing
from edge_biformer.runtime.engine import EngineError, find_plugin_library
from edge_biformer.runtime.labels import read_labels, resolve_labels
from edge_biformer.testing import assert_close


def _true_labels(files: list[Path]) -> list[int]:
    return [int(f.parent.name.split("_")[0]) for f in files]


def test_predictor_matches_pytorch_and_classifies(reduced):
    files = reduced.image_files()
    with Predictor(reduced.onnx, top_k=3) as predictor:
        assert predictor.backend == "onnxruntime"
        assert predictor.preprocessing.img_size == (48, 48)  # from the graph / the export's manifest
        predictions = predictor.predict(files)
        # The same preprocessing as the official evaluation transform, and the logits of PyTorch.
        batch = np.stack([preprocess_image(Image.open(f), 48) for f in files])
        outputs = predictor.infer(batch)
        assert predictor.input_name == "input" and predictor.classifier_output == "logits"
        assert [(o.name, o.kind) for o in predictor.outputs] == [("logits", "classifier")]
        assert set(outputs) == {"logits"}
        outputs = outputs["logits"]
    assert_close(outputs, reduced.torch_logits(batch), "export")
    assert predictor.labels_source == "checkpoint reduced_biformer_shapes10.pth"
    top1 = [p.top[0].index for p in predictions]
    assert sum(t == y for t, y in zip(top1, _true_labels(files), strict=True)) >= len(files) - 1
    first = predictions[0]
    np.testing.assert_array_equal(first.outputs["logits"], outputs[0])  # every output, by name
    assert first.to_dict()["outputs"]["logits"]["shape"] == [len(reduced.classes)]
    assert first.top[0].label == reduced.classes[first.top[0].index]
    assert (
        len(first.top) == 3
        and first.top[0].probability >= first.top[1].probability >= first.top[2].probability
    )
    probs = np.exp(outputs[0] - outputs[0].max())
    assert first.top[0].probability == pytest.approx(float(probs.max() / probs.sum()), rel=1e-6)


def test_predictor_runs_the_rewritten_graph_in_cpu_session(reduced, tmp_path):
    from edge_biformer.cli.main import main

    plugin = tmp_path / "reduced.plugin.onnx"
    assert main(["rewrite", str(reduced.onnx), "--output", str(plugin)]) == 0
    files = reduced.image_files()[:4]
    with Predictor(plugin) as rewritten, Predictor(reduced.onnx) as plain:
        assert rewritten.backend == "cpu_session"
        batch = np.stack([rewritten.preprocessing(Image.open(f)) for f in files])
        assert_close(rewritten.infer(batch)["logits"], plain.infer(batch)["logits"], "rewrite.graph.float32")
        # the labels travel down the manifest chain (rewrite -> export -> checkpoint)
        assert rewritten.predict(files)[0].top[0].label in reduced.classes


def test_preprocessing_recipe_and_manifest_size():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    prep = Preprocessing.from_manifests({}, {"img_size": [48, 48]}, None)
    assert prep.img_size == (48, 48)
    np.testing.assert_array_equal(prep(image), preprocess_image(image, 48))
    assert prep.to_dict()["img_size"] == [48, 48] and prep.describe().startswith(
        "imagenet: resize 54 bicubic"
    )
    with pytest.raises(EdgeBiformerError, match="pass --img-size"):
        Preprocessing.from_manifests({}, {}, None)


def test_nan_output_is_an_error(reduced):
    predictor = Predictor(reduced.onnx)
    predictor.runtime = lambda x: {"logits": np.full((x.shape[0], 10), np.nan, np.float32)}
    with pytest.raises(EdgeBiformerError, match="NaN/Inf values in its output 'logits'"):
        predictor.predict(reduced.image_files()[:1])


def test_unreadable_files_are_skipped_and_reported(reduced, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    files = [reduced.image_files()[0], bad, tmp_path / "missing.png", reduced.image_files()[1]]
    skipped: list[tuple[str, str]] = []
    consumed: list[int] = []
    with Predictor(reduced.onnx, batch_size=2) as predictor:
        out = list(
            predictor.predict_files(
                files, on_skip=lambda p, w: skipped.append((p, w)), on_batch=consumed.append
            )
        )
    assert [p.source for p in out] == [str(files[0]), str(files[3])]
    assert [s for s, _ in skipped] == [str(bad), str(files[2])]
    assert "not a readable image" in skipped[0][1] and "no such file" in skipped[1][1]
    assert sum(consumed) == 4


def test_labels(tmp_path):
    names = tmp_path / "labels.txt"
    names.write_text("# comment\ncat\n\ndog\n")
    assert read_labels(names) == ["cat", "dog"]
    assert resolve_labels(2, None, names) == (["cat", "dog"], str(names))
    with pytest.raises(EdgeBiformerError, match=r"has 2 names, but the model has 3 classes"):
        resolve_labels(3, None, names)
    imagenet, source = resolve_labels(1000)
    assert source == "ImageNet-1k" and imagenet[0] == "tench" and len(set(imagenet)) == 1000
    assert resolve_labels(4)[0] == ["class_0", "class_1", "class_2", "class_3"]


def test_unknown_model_file(tmp_path):
    model = tmp_path / "model.bin"
    model.write_bytes(b"x")
    with pytest.raises(EdgeBiformerError, match="unknown model file type"):
        Predictor(model)
    with pytest.raises(EdgeBiformerError, match="does not exist"):
        Predictor(tmp_path / "none.onnx")


def test_plugin_library_discovery(tmp_path, monkeypatch):
    from edge_biformer import plugins
    from edge_biformer.manifest import write_manifest

    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    monkeypatch.setattr(plugins, "candidate_paths", lambda: [tmp_path / "nowhere" / plugins.LIBRARY_NAME])
    engine = tmp_path / "build" / "model.int8.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"plan")
    assert find_plugin_library(engine) is None  # no manifest: a plain engine needs none
    write_manifest(
        tmp_path / "build" / "model.int8.engine.manifest.json", {"plugin_library": {"needed": True}}
    )
    with pytest.raises(EngineError, match=r"plugin library libedge_biformer_plugins\.so was not found"):
        find_plugin_library(engine)
    beside = engine.parent / plugins.LIBRARY_NAME
    beside.write_bytes(b"so")
    assert find_plugin_library(engine) == beside.resolve()
    env_lib = tmp_path / "env.so"
    env_lib.write_bytes(b"so")
    monkeypatch.setenv(plugins.ENV_VAR, str(env_lib))
    assert find_plugin_library(engine) == env_lib.resolve()
    explicit = tmp_path / "explicit.so"
    explicit.write_bytes(b"so")
    assert find_plugin_library(engine, explicit) == explicit.resolve()
    with pytest.raises(EngineError, match="does not exist"):
        find_plugin_library(engine, tmp_path / "missing.so")
    monkeypatch.setenv(plugins.ENV_VAR, str(tmp_path / "gone.so"))
    with pytest.raises(EngineError, match="no file there"):
        find_plugin_library(engine)


def test_engine_without_tensorrt_is_a_clear_error(tmp_path):
    from edge_biformer.engine.tensorrt import tensorrt_available
    from edge_biformer.runtime import Engine

    if tensorrt_available():
        pytest.skip("TensorRT is installed here: the missing-TensorRT error cannot be shown")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(EngineError, match="TensorRT is not installed here"):
        Engine(engine)
    with pytest.raises(EngineError, match="does not exist"):
        Engine(tmp_path / "none.engine")


@pytest.mark.tensorrt
def test_engine_top5_matches_polygraphy():
    """On a GPU: our Engine and Polygraphy's TrtRunner give the same top-5 on a build's check inputs.

    Needs EDGE_BIFORMER_TEST_BUILD: a build folder (``edge-biformer build`` on the GPU) with an engine.
    """
    from edge_biformer.engine.tensorrt import missing_reason

    if missing_reason():
        pytest.skip(missing_reason())
    build = Path(os.environ.get("EDGE_BIFORMER_TEST_BUILD", ""))
    engines = sorted(build.glob("model.*.engine")) if build.name else []
    if not engines:
        pytest.skip("set EDGE_BIFORMER_TEST_BUILD to a build folder holding an engine (built on this GPU)")
    import tensorrt as trt
    from polygraphy.backend.trt import TrtRunner
    from polygraphy.json import load_json

    from edge_biformer.engine.tensorrt import logger
    from edge_biformer.runtime import Engine

    inputs = load_json(str(build / "check" / "inputs.json"))
    for path in engines:
        with Engine(path) as engine:  # loads the plugin library into the registry
            plan = trt.Runtime(logger(trt)).deserialize_cuda_engine(path.read_bytes())
            with TrtRunner(plan) as runner:
                for feed in inputs:
                    ours = engine.run(feed["input"])
                    theirs = np.asarray(next(iter(runner.infer(feed).values())))
                    top5 = np.argsort(-ours, axis=1)[:, :5]
                    np.testing.assert_array_equal(top5, np.argsort(-theirs, axis=1)[:, :5])
                    assert_close(ours, theirs, max_rel=1e-5)


def test_predictor_and_predict_on_a_detector_of_ones_own(tmp_path, capsys):
    """A graph of one's own (``build --onnx``): the graph's input name, the recorded yolo recipe, every
    output by name, no top-k for dense outputs; equal to onnxruntime on the same preprocessed tensor."""
    import json

    import onnxruntime as ort

    from edge_biformer.calib import demo_photos
    from edge_biformer.calib.preprocess import PRESETS
    from edge_biformer.cli.main import main
    from edge_biformer.runtime import cpu_session
    from tests.pipeline.own_models import export_detector

    source = export_detector(tmp_path / "det.onnx")  # static 'images' 1x3x64x64 -> boxes, scores
    out = tmp_path / "out"
    assert (
        main(["build", "--onnx", str(source), "--precision", "fp32", "--preprocess", "yolo", "-o", str(out)])
        == 0
    )
    plugin = out / "model.fp32.plugin.onnx"
    files = [str(p) for p in demo_photos()[:3]]
    with Predictor(plugin) as predictor:
        assert (predictor.backend, predictor.input_name) == ("cpu_session", "images")
        prep = predictor.preprocessing
        assert (prep.recipe, prep.img_size, prep.channels) == (PRESETS["yolo"], (64, 64), 3)
        assert [(o.name, o.shape, o.kind) for o in predictor.outputs] == [
            ("boxes", (1, 4, 64), "dense"), ("scores", (1, 5, 64), "dense"),
        ]  # fmt: skip
        assert predictor.classifier_output is None
        predictions = predictor.predict(files)  # 3 images through the static batch of 1
    batch = np.stack([PRESETS["yolo"].apply(Image.open(f), (64, 64)) for f in files])
    plugin_session, original = cpu_session(plugin), ort.InferenceSession(str(source))
    for i, p in enumerate(predictions):
        assert not p.top and list(p.outputs) == ["boxes", "scores"]
        feed = {"images": batch[i : i + 1]}
        # the Predictor adds nothing: exactly the plugin graph's outputs on the same tensor
        for name, expected in zip(["boxes", "scores"], plugin_session.run(None, feed), strict=True):
            np.testing.assert_array_equal(p.outputs[name], expected[0])
        # and the plugin graph is the original graph in onnxruntime, to the rewrite's tolerance
        for name, expected in zip(["boxes", "scores"], original.run(None, feed), strict=True):
            assert_close(p.outputs[name], expected[0], "rewrite.graph.float32")

    report = tmp_path / "predictions.json"
    assert main(["predict", "--onnx", str(plugin), *files, "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(report.read_text())
    assert data["input"] == "images" and data["preprocess"]["name"] == "yolo"
    assert data["preprocess"]["img_size"] == [64, 64]
    for p, row in zip(predictions, data["predictions"], strict=True):
        assert "top" not in row and list(row["outputs"]) == ["boxes", "scores"]
        for name, value in p.outputs.items():
            stats = row["outputs"][name]
            assert stats["shape"] == list(value.shape)
            assert (stats["min"], stats["max"]) == (float(value.min()), float(value.max()))
            assert stats["mean"] == pytest.approx(float(value.astype(np.float64).mean()), rel=1e-12)
    assert "boxes [4, 64] min" in printed and "scores [5, 64] min" in printed
