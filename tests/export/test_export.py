"""ONNX export: graph structure, equality with PyTorch in onnxruntime, dynamic shapes, CLI errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

import edge_biformer
from edge_biformer.cli.main import main
from edge_biformer.errors import EdgeBiformerError, ExportError
from edge_biformer.export import check_input_size, export_onnx
from edge_biformer.testing import assert_close
from tests.conftest import REFERENCE_DIR, REPO_ROOT, SMALL_W7


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _expand_fed_gathers(model: onnx.ModelProto) -> list[str]:
    producers = {o: n for n in model.graph.node for o in n.output}
    bad = []
    for node in model.graph.node:
        if node.op_type == "GatherElements":
            src = producers.get(node.input[0])
            if src is not None and src.op_type == "Expand":
                bad.append(node.name)
    return bad


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = edge_biformer.create_model("biformer_tiny")
    path = tmp_path_factory.mktemp("tiny") / "biformer_tiny.onnx"
    result = export_onnx(model, path, verify_batches=(1,))
    assert result.input_shape == ["batch", 3, 224, 224]
    assert result.output_shape == ["batch", 1000]
    return model, path


@pytest.mark.parametrize("batch", [1, 4])
def test_tiny_matches_pytorch(tiny_export, batch: int) -> None:
    model, path = tiny_export
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        ref = model(x).numpy()
    out = _session(path).run(None, {"input": x.numpy()})[0]
    assert_close(out, ref, max_rel=1e-4)


def test_tiny_graph_has_no_expanded_gather(tiny_export) -> None:
    _, path = tiny_export
    graph = onnx.load(str(path))
    counts = _op_counts(graph)
    assert _expand_fed_gathers(graph) == []
    assert counts.get("GatherElements", 0) == 0
    assert counts["TopK"] == 12  # 2 + 2 + 8 BRA blocks; stage 4 is global attention
    constants = {i.name for i in graph.graph.initializer}
    constants |= {o for n in graph.graph.node if n.op_type == "Constant" for o in n.output}
    assert all(n.input[1] in constants for n in graph.graph.node if n.op_type == "TopK")  # constant K
    assert [i.name for i in graph.graph.input] == ["input"]
    assert [o.name for o in graph.graph.output] == ["logits"]


def test_official_expand_pattern_is_what_we_avoid(tmp_path) -> None:
    """Sanity check of the structural test: the official data path does export Expand -> GatherElements."""
    model = edge_biformer.create_model("biformer_tiny", gather_mode="expand", **SMALL_W7)
    path = tmp_path / "expand.onnx"
    export_onnx(model, path, verify_batches=(1,))
    assert len(_expand_fed_gathers(onnx.load(str(path)))) == 4
    official = onnx.load(str(REFERENCE_DIR / "official_small_w7.ts17.onnx"))
    assert len(_expand_fed_gathers(official)) == 4


def test_golden_through_onnx(tmp_path, golden) -> None:
    model = edge_biformer.create_model(
        "biformer_tiny", weights=REFERENCE_DIR / "official_small_w7.pth", **SMALL_W7
    )
    path = tmp_path / "small_w7.onnx"
    export_onnx(model, path, static_batch=1)
    out = _session(path).run(None, {"input": golden["x"]})[0]
    assert_close(out, golden["y"], max_rel=1e-4)
    assert out.argmax() == golden["y"].argmax()
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


@pytest.mark.slow
def test_dynamo_exporter(tmp_path) -> None:
    torch.manual_seed(1)
    model = edge_biformer.create_model("biformer_tiny", **SMALL_W7)
    path = tmp_path / "dynamo.onnx"
    result = export_onnx(model, path, exporter="dynamo", opset=18, verify_batches=(1, 3))
    assert result.verification is not None and result.verification.passed
    graph = onnx.load(str(path))
    assert _expand_fed_gathers(graph) == [] and _op_counts(graph)["TopK"] == 4


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_auto_pad_graph_takes_any_size(tmp_path, exporter: str) -> None:
    torch.manual_seed(2)
    model = edge_biformer.create_model("biformer_tiny", n_win=8, auto_pad=True, **SMALL_W7)
    path = tmp_path / "autopad.onnx"
    result = export_onnx(model, path, img_size=(200, 232), exporter=exporter, opset=18)
    assert result.input_shape[2:] != [200, 232]  # H and W are dynamic
    session = _session(path)
    for size in [(200, 232), (256, 256), (225, 301), (97, 130)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            ref = model(x).numpy()
        assert_close(session.run(None, {"input": x.numpy()})[0], ref, max_rel=1e-4, msg=str(size))


def test_input_size_rules() -> None:
    model = edge_biformer.create_model("biformer_tiny", **SMALL_W7)
    check_input_size(model, 224, 448)
    with pytest.raises(EdgeBiformerError, match=r"height 225 does not fit.*sides 57, 29, 15.*are 224 or 333"):
        check_input_size(model, 225, 224)
    # every size the message suggests is one the model runs at (the convs round up: 223 fits too)
    from edge_biformer.export import valid_sizes_near

    for size in (100, 225, 300, 640):
        for suggested in valid_sizes_near(size, 7, [0, 1, 2]):
            check_input_size(model, suggested, suggested)
    check_input_size(model, 223, 223)
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 223, 223)).shape[-1] == model.config["num_classes"]
    padded = edge_biformer.create_model("biformer_tiny", auto_pad=True, **SMALL_W7)
    check_input_size(padded, 225, 301)


def test_failed_verification_leaves_nothing(tmp_path) -> None:
    model = edge_biformer.create_model("biformer_tiny", **SMALL_W7)
    path = tmp_path / "out.onnx"
    with pytest.raises(ExportError, match=r"does not match PyTorch.*was not written"):
        export_onnx(model, path, tolerance=1e-12, verify_batches=(1,))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch) -> None:
    import edge_biformer.export as export_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "verify_onnx", interrupted)
    model = edge_biformer.create_model("biformer_tiny", **SMALL_W7)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(model, tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


_SMALL_ARCH = [f"--arch={k}={json.dumps(v)}" for k, v in SMALL_W7.items() if k != "num_classes"] + [
    "--num-classes=10"
]


def test_cli_export_small(tmp_path, capsys) -> None:
    out = tmp_path / "small.onnx"
    code = main(
        [
            "export",
            "--model",
            "biformer_tiny",
            "--weights",
            str(REFERENCE_DIR / "official_small_w7.pth"),
            *_SMALL_ARCH,
            "--output",
            str(out),
        ]
    )
    assert code == 0
    stdout = capsys.readouterr().out
    assert "export onnx (torchscript)" in stdout and "max rel diff" in stdout and "next:" in stdout
    manifest = json.loads((tmp_path / "small.manifest.json").read_text())
    assert manifest["model"] == "biformer_tiny" and manifest["verification"]["passed"]
    assert manifest["weights_sha256"] and manifest["config"]["depth"] == [1, 1, 2, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.manifest.json", "small.onnx"]


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--model", "biformer_tiny", "--weights", "{tmp}/missing.pth"], r"missing\.pth does not exist"),
        (["--model", "biformer_tiny", "--weights", "{tmp}/junk.pth"], r"junk\.pth could not be read"),
        (
            ["--model", "biformer_tiny", "--weights", str(REFERENCE_DIR / "official_small_w7.pth")],
            r"does not fit",
        ),
        (["--model", "biformer_tiny", "--img-size", "225"], r"--img-size height 225 does not fit"),
        (["--model", "biformer_large"], r"unknown model 'biformer_large'"),
        (["--model", "biformer_tiny", "--arch", "depth"], r"--arch expects KEY=VALUE"),
    ],
    ids=["missing", "not_checkpoint", "other_variant", "img_size", "unknown_model", "bad_arch"],
)
def test_cli_bad_input(tmp_path, capsys, extra: list[str], pattern: str) -> None:
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "out" / "model.onnx"
    code = main(["export", *[e.replace("{tmp}", str(tmp_path)) for e in extra], "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    assert re.search(pattern, captured.err), captured.err
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))


def test_console_script_end_to_end(tmp_path) -> None:
    """The installed entry point (``python -m edge_biformer``) exits non-zero with one clear line."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_biformer",
            "export",
            "--model",
            "biformer_tiny",
            "--weights",
            str(tmp_path / "none.pth"),
            "--output",
            str(tmp_path / "m.onnx"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("edge-biformer export: error: checkpoint")
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
