"""The benchmark script's CPU smoke mode (the GPU modes need a CUDA device)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the kernel needs Triton (the kernels/test extra)")

REPO = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_kernel.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
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
