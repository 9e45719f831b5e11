"""End-to-end ``edge-biformer build`` / ``check`` on the reduced BiFormer (CPU, no TensorRT)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_biformer.cli.main import main
from tests.conftest import polygraphy_exe
from tests.reduced_model import CHECKPOINT, arch_args, export_reduced, train_script

pytest.importorskip("PIL", reason="Pillow is needed for the image folders")

HAS_TRT = __import__("edge_biformer.engine", fromlist=["x"]).tensorrt_available()


def _hidden(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    script = train_script()
    return {
        "calib": script.write_image_folder(root / "calib", "calib", 64),
        "test": script.write_image_folder(root / "test", "test", 300),
    }


def _build(out: Path, precision: str, *extra: str) -> list[str]:
    return [
        "build", "--model", "biformer_tiny", "--weights", str(CHECKPOINT), *arch_args(), "--img-size", "48",
        "--precision", precision, "--output", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_fp32_fp16(precision: str, images: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(
        _build(out, precision, "--eval-data", str(images["test"]), "--check-num", "32", "--batch", "1,8,16")
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == precision and manifest["model"] == "biformer_tiny"
    assert manifest["weights_sha256"] and manifest["img_size"] == [48, 48]
    assert manifest["profile"]["shapes"]["max"] == [16, 3, 48, 48]
    assert manifest["tolerances"][precision]["atol_frac"] > 0
    assert manifest["versions"]["onnxruntime"] and manifest["check"]["passed"]
    report = json.loads((out / "report.json").read_text())
    by_kind = {c["kind"]: c for c in report["comparisons"]}
    assert by_kind["onnxrt"]["status"] == "pass"
    assert report["reference"]["top1_accuracy"] >= 0.95  # trained model on held-out images
    if precision == "fp16":
        assert (out / "model.fp16.onnx").is_file()
        fp16 = next(c for c in report["comparisons"] if c["name"].startswith("fp16 onnx"))
        assert fp16["status"] == "pass" and fp16["top1_agreement"] == 1.0
    if not HAS_TRT:
        assert not list(out.glob("*.engine")), "no fake engine without TensorRT"
        assert by_kind["tensorrt"]["status"] == "skipped"
        assert "edge-biformer build --from-onnx" in printed and "trtexec --onnx=" in printed
        assert "--stronglyTyped" in printed and "--minShapes=input:1x3x48x48" in printed
        assert manifest["engine"]["built"] is False and "TensorRT" in manifest["engine"]["reason"]
    assert "polygraphy run" in (out / "report.md").read_text()
    assert not _hidden(out)


@pytest.mark.slow
def test_int8_build_accuracy_on_trained_model(images: dict[str, Path], tmp_path: Path, capsys) -> None:
    """INT8 (Q/DQ, CPU calibration) of a trained model: accuracy within 1 point, agreement >= 97 %."""
    out = tmp_path / "int8"
    args = _build(
        out,
        "int8",
        "--calib-data",
        str(images["calib"]),
        "--eval-data",
        str(images["test"]),
        "--check-num",
        "300",
    )
    rc = main(args)
    printed = capsys.readouterr().out
    assert rc == 0, printed
    report = json.loads((out / "report.json").read_text())
    ref_acc = report["reference"]["top1_accuracy"]
    int8 = next(c for c in report["comparisons"] if c["name"].startswith("int8 onnx"))
    summary = (
        f"\nreduced BiFormer, {report['reference']['samples']} held-out images: FP32 top-1 {ref_acc:.2%}, "
        f"INT8 top-1 {int8['top1_accuracy']:.2%}, top-1 agreement {int8['top1_agreement']:.2%}, "
        f"top-5 agreement {int8['top5_agreement']:.2%}, min cosine {int8['min_cosine']:.4f}"
    )
    with capsys.disabled():
        print(summary)
    assert report["reference"]["samples"] == 300
    assert ref_acc >= 0.95
    assert (ref_acc - int8["top1_accuracy"]) * 100 <= 1.0
    assert int8["top1_agreement"] >= 0.97
    assert int8["status"] == "pass"
    plugin = [c for c in report["comparisons"] if c["kind"] == "cpu_session"]
    if (out / "model.int8.plugin.onnx").is_file():  # the graph rewrite is part of this installation
        assert plugin and plugin[0]["status"] == "pass", plugin
        assert (ref_acc - plugin[0]["top1_accuracy"]) * 100 <= 1.0 and plugin[0]["top1_agreement"] >= 0.97
        assert "--plugins" in plugin[0]["command"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["used"] == 64 and manifest["calibration"]["sha256"]
    assert (out / "model.int8.calib.cache").is_file()
    q = onnx.load(str(out / "model.int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)

    # The printed polygraphy commands run as printed and pass (those that run on the CPU).
    commands = [c["command"] for c in report["comparisons"] if c["kind"] == "onnxrt"]
    assert len(commands) == 2
    for command in commands:
        argv = command.split()
        assert argv[0] == "polygraphy"
        proc = subprocess.run([polygraphy_exe(), *argv[1:]], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "PASSED" in proc.stdout + proc.stderr, proc.stdout + proc.stderr

    # `check` reuses the saved reference and passes again; the calibration cache is reused.
    assert main(["check", str(out)]) == 0
    capsys.readouterr()
    rc = main([*args[:-2], "--check-num", "16", "--no-check"])
    assert rc == 0
    assert "calibration cache reused" in capsys.readouterr().out


def test_check_fails_with_exit_1_when_an_artifact_is_wrong(
    images: dict[str, Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert main(_build(out, "fp32", "--eval-data", str(images["test"]), "--check-num", "16")) == 0
    inputs_before = (out / "check" / "inputs.json").read_bytes()
    assert main(["check", str(out), "--recompute"]) == 0  # PyTorch again, on the saved inputs
    assert (out / "check" / "inputs.json").read_bytes() == inputs_before
    assert not list((out / "check").glob("*.replaced-*"))  # the same reference: nothing set aside
    # Replace the export by one with other (random) weights: the check must fail, with numbers.
    export_reduced(tmp_path / "other.onnx")
    shutil.copyfile(tmp_path / "other.onnx", out / "model.onnx")
    capsys.readouterr()
    assert main(["check", str(out)]) == 1
    assert "FAILED" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    assert "**FAIL**" in text and "## Failures" in text
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False


def test_recompute_uses_the_best_reference_and_keeps_the_replaced_one(
    images: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """Random weights: PyTorch cannot rebuild them, so --recompute takes the FP32 export, else refuses."""
    out = tmp_path / "out"
    build = ["build", "--model", "biformer_tiny", *arch_args(), "--img-size", "48", "--precision", "fp16"]
    assert main([*build, "--output", str(out), "--check-data", str(images["test"]), "--check-num", "16"]) == 0
    saved = json.loads((out / "report.json").read_text())["reference"]
    assert saved["runner"] == "pytorch"  # the model in hand during the build
    assert saved["random_weights"] and json.loads((out / "manifest.json").read_text())["random_weights"]
    assert "**Random weights**" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["check", str(out), "--recompute"]) == 0
    printed = capsys.readouterr().out
    assert f"reference = the FP32 export {out / 'model.onnx'} in onnxruntime" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["runner"] == "onnxrt_fp32"
    assert report["comparisons"][0]["name"] == "fp16 onnx (onnxruntime)"  # not the reference itself
    kept = sorted(p.name for p in (out / "check").glob("*.replaced-*"))
    assert [k.split(".")[0] for k in kept] == ["reference"]  # same inputs, another reference
    (out / "model.onnx").unlink()
    assert main(["check", str(out), "--recompute"]) == 2
    err = capsys.readouterr().err
    assert "random weights" in err and "no FP32 export" in err
    assert main(["check", str(out)]) == 0  # the saved reference still serves


def test_check_errors(tmp_path: Path, capsys) -> None:
    assert main(["check", str(tmp_path)]) == 2
    assert "manifest.json does not exist" in capsys.readouterr().err


def test_build_argument_errors(images: dict[str, Path], tmp_path: Path, capsys) -> None:
    assert main(["build", "--precision", "fp32", "--output", str(tmp_path / "o")]) == 2
    assert "--model NAME" in capsys.readouterr().err
    # (int8 without --calib-data calibrates on the demo photographs: test_int8_build_without_calib_data_...)
    assert main(_build(tmp_path / "o", "fp32", "--batch", "8,4,16")) == 2
    assert "MIN <= OPT <= MAX" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_build(tmp_path / "o", "int8", "--calib-data", str(empty))) == 2
    assert "no images in" in capsys.readouterr().err


def test_interrupted_build_leaves_no_partial_artifacts(
    images: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out = tmp_path / "out"

    def interrupted_save(model, path, *args, **kwargs):  # writes half a file, then Ctrl-C
        Path(path).write_bytes(b"\x08\x07partial")
        raise KeyboardInterrupt

    class OnnxWithInterruptedSave:  # the quantize stage's onnx: save is interrupted, the rest is onnx
        save = staticmethod(interrupted_save)

        def __getattr__(self, name: str):
            return getattr(onnx, name)

    import edge_biformer.quantize.fp16 as fp16_mod

    monkeypatch.setattr(fp16_mod, "onnx", OnnxWithInterruptedSave())
    rc = main(_build(out, "fp16", "--check-num", "8"))
    monkeypatch.undo()
    assert rc == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (out / "model.fp16.onnx").exists()
    assert not (out / "manifest.json").exists()  # written last, only by a finished build
    assert not _hidden(out)
    onnx.checker.check_model(str(out / "model.onnx"))  # the finished stage is complete


def test_from_onnx_runs_the_remaining_stages(images: dict[str, Path], tmp_path: Path, capsys) -> None:
    exported = export_reduced(tmp_path / "plain.onnx", weights=CHECKPOINT)
    out = tmp_path / "out"
    rc = main(
        ["build", "--from-onnx", str(exported), "--precision", "fp16", "--output", str(out), "--no-check"]
    )
    assert rc == 0, capsys.readouterr()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["from_onnx"]["graph"] == "plain" and (out / "model.fp16.onnx").is_file()
    # Starting from the converted graph skips the conversion and keeps the saved files.
    rc = main(
        [
            "build",
            "--from-onnx",
            str(out / "model.fp16.onnx"),
            "--precision",
            "fp16",
            "-o",
            str(out),
            "--no-check",
        ]
    )
    assert rc == 0
    assert json.loads((out / "manifest.json").read_text())["from_onnx"]["graph"] == "fp16"
    np.testing.assert_equal(len(_hidden(out)), 0)


def test_from_onnx_of_an_export_checks_against_its_model(
    images: dict[str, Path], tmp_path: Path, capsys
) -> None:
    """The command `edge-biformer export` prints next works: the export's manifest names the model."""
    exported = tmp_path / "reduced.onnx"
    rc = main(
        ["export", "--model", "biformer_tiny", "--weights", str(CHECKPOINT), *arch_args(), "--img-size", "48",
         "--output", str(exported)]
    )  # fmt: skip
    assert rc == 0
    assert f"edge-biformer build --from-onnx {exported}" in capsys.readouterr().out
    out = tmp_path / "out"
    rc = main(
        ["build", "--from-onnx", str(exported), "--precision", "fp32", "--output", str(out),
         "--eval-data", str(images["test"]), "--check-num", "16", "--batch", "1,8,8"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0, printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "biformer_tiny" and manifest["weights"] == str(CHECKPOINT.resolve())
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["top1_accuracy"] >= 0.95  # the trained model, not random weights


def test_from_onnx_with_random_weights_is_checked_against_its_export(tmp_path: Path, capsys) -> None:
    """Random weights cannot be rebuilt in PyTorch, but the FP32 export holds them: it is the reference."""
    exported = export_reduced(tmp_path / "random.onnx")  # random weights, no side-car manifest
    out = tmp_path / "out"
    rc = main(["build", "--from-onnx", str(exported), "--precision", "fp16", "--output", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert f"reference = the FP32 export {exported} in onnxruntime" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["runner"] == "onnxrt_fp32"
    checked = {c["name"]: c["status"] for c in report["comparisons"]}
    assert checked["fp16 onnx (onnxruntime)"] == "pass"
    assert not any(name.startswith("onnx export") for name in checked)  # not the reference against itself


def test_from_onnx_without_any_reference_warns_and_skips_the_check(tmp_path: Path, capsys) -> None:
    """A quantized graph whose export changed since: nothing to trust, a loud warning, exit 0."""
    exported = export_reduced(tmp_path / "random.onnx")
    assert main(["quantize", str(exported), "--precision", "fp16", "-o", str(tmp_path / "m.fp16.onnx")]) == 0
    export_reduced(exported, weights=CHECKPOINT)  # other weights under the recorded name
    out = tmp_path / "out"
    capsys.readouterr()
    rc = main(["build", "--from-onnx", str(tmp_path / "m.fp16.onnx"), "--precision", "fp16", "-o", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "WARNING: accuracy check skipped: no reference" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = manifest["check"]["skipped"]
    assert "names no PyTorch model" in skipped and "missing or changed" in skipped
    assert not (out / "report.md").exists()


def test_int8_build_without_calib_data_uses_the_demo_photographs(tmp_path: Path, capsys) -> None:
    """The first command of the Quickstart, on the reduced model: no data given, no data needed."""
    out = tmp_path / "int8"
    rc = main(_build(out, "int8"))
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "WARNING: no --calib-data: calibrating on the built-in demo set (16 photographs" in printed
    assert "demo-photos: BUILT-IN DEMO PHOTOGRAPHS (not for deployment), 16 of 16 found" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["kind"] == "demo" and manifest["check_data"]["kind"] == "demo"
    assert manifest["check"]["passed"]
    report = (out / "report.md").read_text()
    assert "**Warning: calibrated and checked on the built-in demo set**" in report
    commands = [c["command"] for c in json.loads((out / "report.json").read_text())["comparisons"]]
    onnxrt = [c for c in commands if "--onnxrt" in c]
    assert len(onnxrt) == 2
    for command in onnxrt:  # they pass as printed
        proc = subprocess.run(
            [polygraphy_exe(), *command.split()[1:]], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_printed_target_commands_follow_the_build(tmp_path: Path, capsys) -> None:
    """--no-rewrite is repeated in the target's build line; --target-trt 8.6 gives weakly typed commands."""
    plain = export_reduced(tmp_path / "plain.onnx", weights=CHECKPOINT)
    kept = tmp_path / "kept"
    assert (
        main(["build", "--from-onnx", str(plain), "--precision", "fp32", "--no-rewrite", "-o", str(kept)])
        == 0
    )
    assert "--no-rewrite" in json.loads((kept / "manifest.json").read_text())["engine"]["build_command"]
    out = tmp_path / "out"
    argv = ["build", "--from-onnx", str(plain), "--precision", "fp16", "--target-trt", "8.6", "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert "--target-trt 8.6" in manifest["engine"]["build_command"]
    assert "--no-rewrite" not in manifest["engine"]["build_command"]
    rows = json.loads((out / "report.json").read_text())["comparisons"]
    plugin_row = next(c for c in rows if c["kind"] == "cpu_session")  # Polygraphy builds it with --trt
    assert "--fp16" in plugin_row["command"] and "--strongly-typed" not in plugin_row["command"]
