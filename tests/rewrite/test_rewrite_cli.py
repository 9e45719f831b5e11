"""``edge-biformer rewrite``: log lines, per-stage table, manifest, errors and exit codes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

import edge_biformer
from edge_biformer.cli.args import parse_input_shape
from edge_biformer.cli.main import main
from edge_biformer.export import export_onnx
from edge_biformer.utils import sha256_file
from tests.conftest import REPO_ROOT, SMALL_W7


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small torchscript exports: plain BRA, soft routing (partial), and no BRA at all."""
    directory = tmp_path_factory.mktemp("surgery_cli")
    paths = {}
    for name, overrides in {
        "bra": SMALL_W7,
        "soft": {**SMALL_W7, "soft_routing": True},
        "no_bra": {**SMALL_W7, "topks": [-1, -1, -1, -2]},
    }.items():
        torch.manual_seed(0)
        model = edge_biformer.create_model("biformer_tiny", **overrides)
        paths[name] = directory / f"{name}.onnx"
        export_onnx(model, paths[name], verify=False)
    return paths


def test_rewrite_command(graphs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bra.plugin.onnx"
    assert main(["rewrite", str(graphs["bra"]), "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    for stage in (
        "load onnx",
        "find bra blocks",
        "check blocks",
        "rewrite",
        "verify (cpu_session)",
        "write onnx",
    ):
        assert f"[edge-biformer] {stage} " in stdout, stage
    assert "4/4 blocks equal the op reference" in stdout and ": PASS" in stdout
    table = stdout[stdout.index("BRA blocks per stage:") :].splitlines()
    assert table[1].split()[:8] == ["stage", "found", "replaced", "n_win", "topk", "heads", "C_qk", "C_v"]
    assert [line.split()[:8] for line in table[2:5]] == [
        ["1", "1", "1", "7", "1", "1", "32", "32"],
        ["2", "1", "1", "7", "4", "2", "64", "64"],
        ["3", "2", "2", "7", "16", "4", "128", "128"],
    ]
    assert table[5].split() == ["total", "4", "4"]
    assert "next:" in stdout and f"trtexec --onnx={out}" in stdout
    assert sum(n.op_type == "BiLevelRoutingAttention" for n in onnx.load(str(out)).graph.node) == 4

    manifest = json.loads((tmp_path / "bra.plugin.manifest.json").read_text())
    assert manifest["artifact"] == out.name and manifest["kind"] == "onnx"
    assert (manifest["found"], manifest["replaced"]) == (4, 4)
    assert manifest["source"]["sha256"] == sha256_file(graphs["bra"])
    assert manifest["plugin"] == {
        "op_type": "BiLevelRoutingAttention",
        "domain": "trt.plugins",
        "opset_version": 1,
        "plugin_version": "1",
        "plugin_namespace": "edge_biformer",
    }
    assert [b["topk"] for b in manifest["blocks"]] == [1, 4, 16, 16]
    assert [b["stage"] for b in manifest["blocks"]] == [1, 2, 3, 3]
    assert manifest["verification"]["max_rel_diff"] <= 1e-4


def test_no_verify_and_input_shape(graphs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "a.onnx"
    assert main(["rewrite", str(graphs["bra"]), "-o", str(out), "--no-verify"]) == 0
    stdout = capsys.readouterr().out
    assert "check blocks" not in stdout and "verify (cpu_session)" not in stdout
    manifest = json.loads((tmp_path / "a.manifest.json").read_text())
    assert manifest["verification"] is None and manifest["verification_skipped"] == "--no-verify"
    assert main(["rewrite", str(graphs["bra"]), "-o", str(out), "--input-shape", "input:1x3x224x224"]) == 0
    assert "{'input': [1, 3, 224, 224]}" in capsys.readouterr().out


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-biformer rewrite: error: ") and "\n" not in err  # one paragraph
    return err


def test_no_bra_fails_cleanly_unless_allowed(graphs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "none.onnx"
    assert main(["rewrite", str(graphs["no_bra"]), "-o", str(out)]) == 2
    assert "found no BiFormer routed attention (BRA) block" in _error(capsys)
    assert list(tmp_path.iterdir()) == []
    assert main(["rewrite", str(graphs["no_bra"]), "-o", str(out), "--allow-none"]) == 0
    assert out.read_bytes() == graphs["no_bra"].read_bytes()
    assert json.loads((tmp_path / "none.manifest.json").read_text())["replaced"] == 0


def test_partial_blocks_fail_with_the_reason(graphs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "soft.onnx"
    assert main(["rewrite", str(graphs["soft"]), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert "total      4         0" in captured.out  # the table is printed before the error
    err = captured.err.strip()
    assert "4 BRA block(s) match only in part" in err and "soft routing" in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.onnx", "-o", "out.onnx"], "missing.onnx: no such file"),
        (["{bra}", "-o", "out.txt"], "should end in .onnx"),
        (["{bra}", "-o", "out.onnx", "--input-shape", "image:1x3x224x224"], "the graph's inputs are input"),
    ],
)
def test_user_errors(graphs, tmp_path: Path, capsys, monkeypatch, args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a.format(bra=graphs["bra"]) for a in args]
    assert main(["rewrite", *args]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "out.onnx").exists()


def test_input_shape_parsing() -> None:
    assert parse_input_shape("input:2x3x512x640") == ("input", [2, 3, 512, 640])
    assert parse_input_shape("images:[1,3,224,224]") == ("images", [1, 3, 224, 224])
    for bad in ("input", "input:axb", "input:0x3", ":1x2"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"NAME:DIMS|positive"):
            parse_input_shape(bad)


def test_command_is_registered() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_biformer", "rewrite", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--allow-none" in result.stdout and "--skip-partial" in result.stdout


def test_old_module_name_still_imports_with_a_warning() -> None:
    import importlib
    import sys

    sys.modules.pop("edge_biformer.surgery", None)
    with pytest.warns(DeprecationWarning, match="edge_biformer.rewrite"):
        surgery = importlib.import_module("edge_biformer.surgery")
    from edge_biformer.rewrite import rewrite_onnx

    assert surgery.rewrite_onnx is rewrite_onnx
