"""The benchmark script's CPU modes and the GPU session's dry run (the GPU modes need a CUDA device).

On the CPU every mode runs the interpreted kernel on tiny shapes (and the AOT launcher on the mock
CUDA driver): the times are not measurements, but every code path the GPU session takes runs, and
the rows reach their files as they are produced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the kernel needs Triton (the kernels/test extra)")

REPO = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> subprocess.CompletedProcess:
    return _run(sys.executable, str(REPO / "scripts" / "bench_kernel.py"), *args)


def _run(*cmd: str, **env: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, **env}
    return subprocess.run(
        list(cmd),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


def test_bench_cpu_smoke() -> None:
    proc = _bench("--device", "cpu", "--smoke")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" ok;") == 4 and proc.stdout.strip().endswith("smoke: ok")


def test_bench_without_gpu_says_how_to_run() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run")
    proc = _bench("--batch", "1")
    assert proc.returncode == 2 and "no CUDA GPU visible" in proc.stderr


def test_bench_cpu_rows_reach_the_file_as_measured(tmp_path: Path) -> None:
    rows = tmp_path / "bench.jsonl"
    proc = _bench("--device", "cpu", "--jsonl", str(rows), "--out", str(tmp_path / "bench.md"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    assert len(lines) == 6 and all(r["ok"] for r in lines)  # 3 tiny stages x fused + official eager
    assert {r["impl"] for r in lines} == {"fused (Triton)", "official eager"}
    assert "## Routed-attention kernel\n" in (tmp_path / "bench.md").read_text()


def test_bench_cpu_tune_checks_every_tile(tmp_path: Path) -> None:
    rows = tmp_path / "tune.jsonl"
    proc = _bench("--device", "cpu", "--tune", "--tune-max", "2", "--jsonl", str(rows))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    assert len(lines) == 6 and all(r["ok"] for r in lines)
    assert sum(r["policy"] for r in lines) == 3  # the policy's tile first, then an alternative


@pytest.mark.slow
def test_gpu_session_dry_run(tmp_path: Path) -> None:
    """``scripts/gpu_session.sh --dry-run``: every step passes on the CPU, results in one folder."""
    out = tmp_path / "session"
    proc = _run("bash", str(REPO / "scripts" / "gpu_session.sh"), "--dry-run", OUT=str(out), BUDGET="900")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    for step in ("env", "check", "bench64", "pytest", "tune", "bench"):
        assert f"== {step}: rc=0" in summary, summary
    assert "check: all passed" in summary
    assert (
        (out / "check.jsonl").is_file() and (out / "bench.jsonl").is_file() and (out / "bench.md").is_file()
    )
