"""End-to-end ``edge-biformer build`` of DeBiFormer on the CPU: FP16 and INT8 of the reduced trained model.

The reduced DeBiFormer (``tests/data/reduced_debiformer_shapes10.pth``, trained by
``scripts/train_reduced_biformer.py --family debiformer`` on the generated shapes-10 data) has real
decision margins: FP16 and INT8 builds (the default INT8 policy) must pass their checks, keep the
held-out top-1 within 0.5 points of FP32 and agree with FP32 on >= 99 % of the images, through the
converted graph (onnxruntime) and the rewritten plugin graph (``cpu_session``); the printed
onnxruntime Polygraphy commands pass.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from edge_biformer.cli.main import main
from tests.conftest import polygraphy_exe
from tests.reduced_model import DEBI_CHECKPOINT, arch_args, train_script

pytest.importorskip("PIL", reason="Pillow is needed for the image folders")
pytest.importorskip(
    "modelopt.onnx.quantization", reason="nvidia-modelopt (a default dependency) is not installed"
)

HELD_OUT = 300


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    script = train_script()
    return {
        "calib": script.write_image_folder(root / "calib", "calib", 64),
        "test": script.write_image_folder(root / "test", "test", HELD_OUT),
    }


def _build(out: Path, precision: str, *extra: str) -> list[str]:
    size = str(train_script().DEBI_IMG_SIZE)
    return [
        "build", "--model", "debiformer_tiny", "--weights", str(DEBI_CHECKPOINT), *arch_args("debiformer"),
        "--img-size", size, "--precision", precision, "--output", str(out), *extra,
    ]  # fmt: skip


def _summary(report: dict, name: str) -> str:
    ref = report["reference"]
    c = next(c for c in report["comparisons"] if c["name"].startswith(name))
    return (
        f"\nreduced DeBiFormer, {ref['samples']} held-out images: FP32 top-1 {ref['top1_accuracy']:.2%}, "
        f"{name} top-1 {c['top1_accuracy']:.2%}, top-1 agreement {c['top1_agreement']:.2%}, "
        f"min cosine {c['min_cosine']:.4f}"
    )


@pytest.fixture(scope="module")
def builds(
    images: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[int, str, Path]]:
    """FP16 and INT8 builds of the reduced DeBiFormer, checked on the held-out images, run from an
    empty working directory (``"cwd"``)."""
    import contextlib
    import io
    import os

    results = {}
    cwd = tmp_path_factory.mktemp("cwd")  # the user's folder: nothing may be written there
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        for precision in ("fp16", "int8"):
            out = tmp_path_factory.mktemp(precision) / "out"
            extra = ["--eval-data", str(images["test"]), "--check-num", str(HELD_OUT)]
            if precision == "int8":
                extra += ["--calib-data", str(images["calib"])]
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                rc = main(_build(out, precision, *extra))
            results[precision] = (rc, printed.getvalue(), out)
    finally:
        os.chdir(previous)
    results["cwd"] = (0, "", cwd)
    return results


def _checked(report: dict, precision: str) -> list[dict]:
    return [
        c for c in report["comparisons"] if c["name"].startswith(f"{precision} ") and c["status"] != "skipped"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_build_accuracy_on_trained_model(precision: str, builds, capsys) -> None:
    """The build passes its checks; top-1 within 0.5 points of FP32 and >= 99 % agreement, held out."""
    rc, printed, out = builds[precision]
    assert rc == 0, printed
    report = json.loads((out / "report.json").read_text())
    ref_acc = report["reference"]["top1_accuracy"]
    assert report["reference"]["samples"] == HELD_OUT
    assert ref_acc >= 0.95  # the trained model on held-out images, not random weights
    with capsys.disabled():
        print(_summary(report, f"{precision} onnx"))
    checked = _checked(report, precision)
    assert {c["kind"] for c in checked} == {"onnxrt", "cpu_session"}  # Q/DQ or FP16 graph, and plugin graph
    for comparison in checked:
        assert comparison["status"] == "pass", comparison
        assert (ref_acc - comparison["top1_accuracy"]) * 100 <= 0.5
        assert comparison["top1_agreement"] >= 0.99, comparison["name"]
    assert (out / f"model.{precision}.plugin.onnx").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "debiformer_tiny" and manifest["check"]["passed"]
    assert "polygraphy run" in (out / "report.md").read_text()


@pytest.mark.slow
def test_builds_write_nothing_into_the_working_directory(builds) -> None:
    """onnxruntime's symbolic shape inference saves scratch files into the current directory when it
    cannot finish (it cannot on DeBiFormer graphs); the rewrite runs it in a folder of its own."""
    _, _, cwd = builds["cwd"]
    assert sorted(p.name for p in cwd.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_printed_onnxruntime_polygraphy_commands_pass(precision: str, builds) -> None:
    """What a user reruns by hand: every printed onnxruntime command exits 0 (Polygraphy's verdict)."""
    _, _, out = builds[precision]
    commands = [
        c["command"]
        for c in json.loads((out / "report.json").read_text())["comparisons"]
        if "--onnxrt" in c["command"]
    ]
    assert len(commands) == 2  # the FP32 export and the FP16 or Q/DQ graph
    for command in commands:
        proc = subprocess.run(
            [polygraphy_exe(), *shlex.split(command)[1:]], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
