"""Every "next" command a stage prints runs as printed (the ones that run on a CPU), as a new user would.

The flow of the README: export -> (its next commands: rewrite, polygraphy, build --from-onnx);
quantize int8 -> rewrite (its printed next command); rewrite -> build --from-onnx (at the graph's
precision) and the cpu_session one-liner; build -> the onnxruntime polygraphy commands it prints.
Commands for the target GPU (trtexec, polygraphy --trt) are recognised and not run here.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from edge_biformer.cli.main import main
from tests.conftest import polygraphy_exe
from tests.reduced_model import CHECKPOINT, arch_args, train_script

pytest.importorskip(
    "modelopt.onnx.quantization", reason="nvidia-modelopt (a default dependency) is not installed"
)


def _next_commands(stdout: str) -> list[str]:
    """The commands printed after ``next:`` (on the same line or indented below it)."""
    commands: list[str] = []
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        _, sep, rest = line.partition("[edge-biformer] next:")
        if not sep:
            continue
        if rest.strip():
            commands.append(rest.strip())
        for follow in lines[i + 1 :]:
            if not follow.startswith("  "):
                break
            commands.append(follow.strip())
    return commands


def _on_target(command: str) -> bool:
    return command.startswith("trtexec ") or " --trt" in command or "# on the target GPU" in command


def _run(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    """Run one printed command; returns what it printed. Fails with its output if it fails."""
    argv = shlex.split(command, comments=True)
    if argv[0] == "edge-biformer":
        rc = main(argv[1:])
        out = capsys.readouterr()
        assert rc == 0, f"{command}\n{out.out}\n{out.err}"
        return out.out
    exe = {"polygraphy": polygraphy_exe(), "python": sys.executable}[argv[0]]
    proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_printed_next_commands_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)  # the printed paths are relative, as a user types them
    calib = train_script().write_image_folder(tmp_path / "calib", "calib", 16)
    size = str(train_script().IMG_SIZE)
    weights = ["--weights", str(CHECKPOINT), *arch_args()]
    assert main(["export", "--model", "biformer_tiny", *weights, "--img-size", size, "-o", "m.onnx"]) == 0
    export_next = _next_commands(capsys.readouterr().out)
    assert [c.split()[:2] for c in export_next] == [
        ["edge-biformer", "rewrite"],
        ["polygraphy", "run"],
        ["edge-biformer", "build"],
    ]
    ran: list[str] = []
    builds: list[str] = []  # what the builds printed
    for command in export_next:
        printed = _run(command, capsys)
        ran.append(command)
        if command.startswith("edge-biformer rewrite"):
            rewrite_next = _next_commands(printed)
            assert "--precision fp32" in rewrite_next[0]
            for follow in rewrite_next:
                if not _on_target(follow):
                    _run(follow, capsys)
                    ran.append(follow)
        if command.startswith("edge-biformer build"):
            assert "accuracy check" in printed and (Path("m_fp16") / "report.md").is_file()
            builds.append(printed)

    # quantize int8 -> its printed rewrite -> the rewrite's printed build (at int8).
    assert (
        main(["quantize", "m.onnx", "--precision", "int8", "--calib-data", str(calib), "-o", "m.int8.onnx"])
        == 0
    )
    quantize_next = _next_commands(capsys.readouterr().out)
    assert quantize_next == ["edge-biformer rewrite m.int8.onnx --output m.int8.plugin.onnx"]
    rewrite_next = _next_commands(_run(quantize_next[0], capsys))
    build = next(c for c in rewrite_next if c.startswith("edge-biformer build"))
    assert "--precision int8" in build
    builds.append(_run(build, capsys))
    ran += [quantize_next[0], build]

    # The builds print the polygraphy commands that repeat their comparisons: the CPU ones pass.
    rerun = [
        line.strip() for out in builds for line in out.splitlines() if line.startswith("  polygraphy run")
    ]
    assert rerun and any(not _on_target(c) for c in rerun)
    for command in rerun:
        if not _on_target(command):
            assert "PASSED" in _run(command, capsys) + "PASSED"  # exit 0 is the verdict
            ran.append(command)
    assert len(ran) >= 7, ran
