"""``serve-repo``: the repositories it writes, validated against Triton's own ModelConfig protobuf."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_biformer.calib import demo_photos, preprocess_image
from edge_biformer.cli.main import main
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.manifest import manifest_path, write_manifest
from edge_biformer.serve.config import (
    Batching,
    ConfigError,
    InstanceGroup,
    ModelSpec,
    Tensor,
    model_config,
    validate_config,
)

pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient (the [serve] extra) is needed"
)


def _parse(path: Path):
    return validate_config(path.read_text(), str(path))


@pytest.fixture()
def fake_engine(reduced, tmp_path) -> Path:
    """An engine file with the manifest the engine stage writes (source: the reduced ONNX, plugin needed)."""
    from edge_biformer.manifest import source_record

    engine = tmp_path / "build" / "model.fp16.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"a serialized plan")
    write_manifest(
        manifest_path(engine),
        {
            "kind": "engine",
            "source": source_record(reduced.onnx),
            "options": {"batch": {"min": 1, "opt": 4, "max": 16}},
            "plugin_library": {"path": None, "needed": True},
        },
    )
    (engine.parent / "libedge_biformer_plugins.so").write_bytes(b"\x7fELF plugin")
    return engine


def test_tensorrt_repository(fake_engine, tmp_path, capsys):
    repo = tmp_path / "repo"
    code = main(["serve-repo", "--engine", str(fake_engine), "--output", str(repo), "--name", "tiny",
                 "--instances", "2", "--gpus", "0,1", "--ensemble"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    config = _parse(repo / "tiny" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert list(config.instance_group[0].gpus) == [0, 1] and config.instance_group[0].count == 2
    assert [(t.name, list(t.dims)) for t in config.input] == [("input", [3, 48, 48])]
    assert [(t.name, list(t.dims), t.label_filename) for t in config.output] == [
        ("logits", [10], "labels.txt")
    ]
    assert (repo / "tiny" / "1" / "model.plan").read_bytes() == b"a serialized plan"
    assert (repo / "tiny" / "libedge_biformer_plugins.so").is_file()
    plugin = repo.resolve() / "tiny" / "libedge_biformer_plugins.so"
    assert f"--backend-config=tensorrt,plugins={plugin}" in out
    assert (repo / "tiny" / "labels.txt").read_text().split() == list(_classes())
    pre = _parse(repo / "tiny_preprocess" / "config.pbtxt")
    ensemble = validate_config(
        (repo / "tiny_ensemble" / "config.pbtxt").read_text(),
        "ensemble",
        {"tiny": config, "tiny_preprocess": pre},
    )
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["tiny_preprocess", "tiny"]
    # the preprocessing model's parameter is the recorded recipe (none here: the imagenet default)
    from edge_biformer.calib.preprocess import IMAGENET
    from edge_biformer.runtime import Preprocessing

    parameter = json.loads(pre.parameters["preprocess"].string_value)
    assert Preprocessing.from_dict(parameter) == Preprocessing((48, 48), IMAGENET)
    readme = (repo / "README.md").read_text()
    assert "--backend-config" in readme and "edge-biformer must be importable by Triton" in readme


def _classes() -> tuple[str, ...]:
    from tests.reduced_model import train_script

    return tuple(train_script().CLASSES)


def test_cpu_repository_files(reduced, tmp_path):
    repo = tmp_path / "repo"
    assert main(["serve-repo", "--onnx", str(reduced.onnx), "--output", str(repo)]) == 0
    config = _parse(repo / "biformer" / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 8
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["plugin_nodes"] == "false" and params["graph_optimization"] == "default"
    assert (repo / "biformer" / "1" / "model.onnx").read_bytes() == reduced.onnx.read_bytes()
    assert "class TritonPythonModel" in (repo / "biformer" / "1" / "model.py").read_text()
    # an existing repository is kept unless --force
    with pytest.raises(EdgeBiformerError, match="exists and is not empty"):
        from edge_biformer.serve import RepositoryOptions, write_repository

        write_repository(RepositoryOptions(output=repo, onnx=reduced.onnx))
    assert (
        main(
            ["serve-repo", "--onnx", str(reduced.onnx), "--output", str(repo), "--force", "--max-batch", "4"]
        )
        == 0
    )
    assert _parse(repo / "biformer" / "config.pbtxt").max_batch_size == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo.")]  # no temporary folder left


def test_bad_inputs_are_one_paragraph(reduced, tmp_path, capsys):
    assert (
        main(["serve-repo", "--engine", str(tmp_path / "none.engine"), "--output", str(tmp_path / "r")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    lone = tmp_path / "lone.engine"
    lone.write_bytes(b"plan")
    assert main(["serve-repo", "--engine", str(lone), "--output", str(tmp_path / "r")]) == 2
    assert "keep the build folder together" in capsys.readouterr().err
    assert (
        main(["serve-repo", "--onnx", str(reduced.onnx), "--output", str(tmp_path / "r"), "--name", "a b"])
        == 2
    )
    assert not (tmp_path / "r").exists()


def test_validation_refuses_what_triton_refuses():
    t_in, t_out = Tensor("input", "TYPE_FP32", (3, 48, 48)), Tensor("logits", "TYPE_FP32", (10,))
    good = ModelSpec(
        "m", [t_in], [t_out], Batching(8, (4, 8)), platform="tensorrt_plan", instances=InstanceGroup()
    )
    validate_config(model_config(good))
    cases = {
        "preferred_batch_size 16 outside": ModelSpec(
            "m", [t_in], [t_out], Batching(8, (16,)), platform="tensorrt_plan"
        ),
        "runs on GPUs only": ModelSpec(
            "m",
            [t_in],
            [t_out],
            Batching(8),
            platform="tensorrt_plan",
            instances=InstanceGroup(1, "KIND_CPU"),
        ),
        "invalid dims": ModelSpec(
            "m", [Tensor("input", "TYPE_FP32", (3, 0, 48))], [t_out], Batching(8), backend="python"
        ),
    }
    for message, spec in cases.items():
        with pytest.raises(ConfigError, match=message):
            validate_config(model_config(spec))
    unbatched = model_config(ModelSpec("m", [t_in], [t_out], Batching(0), backend="python"))
    with pytest.raises(ConfigError, match="dynamic_batching needs max_batch_size > 0"):
        validate_config(unbatched + "dynamic_batching { }\n")
    with pytest.raises(ConfigError, match="not a valid Triton ModelConfig"):
        validate_config('name: "m"\nmax_batch_size: "eight"\n')


def _load_template(name: str) -> types.ModuleType:
    """A Triton Python-backend model file, imported with a stand-in for Triton's utils module."""
    from edge_biformer.serve.triton_python import FOLDER

    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location(f"eb_template_{name}", FOLDER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_preprocess_model_equals_the_official_transform(tmp_path):
    from edge_biformer.runtime import Preprocessing

    module = _load_template("preprocess")
    for img_size in ((224, 224), (48, 64)):
        recipe = json.dumps(Preprocessing(img_size).to_dict())  # the config.pbtxt parameter
        for photo in demo_photos()[:6] + demo_photos()[-3:]:
            expected = preprocess_image(Image.open(photo), img_size)
            np.testing.assert_array_equal(module.preprocess(photo.read_bytes(), recipe), expected)
    wide = tmp_path / "wide.png"  # a 16-bit grayscale PNG: scaled, not clipped
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(wide)
    np.testing.assert_array_equal(
        module.preprocess(wide.read_bytes(), Preprocessing((48, 48)).to_dict()),
        preprocess_image(Image.open(wide), 48),
    )
