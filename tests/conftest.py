"""Shared fixtures: the reference data beside the checkout, small model configurations, BRA op inputs.

The reference data (``../shared/reference``: official-model facts, a small official checkpoint, its
golden output and ONNX export) is found relative to the repository, or where
``EDGE_BIFORMER_REFERENCE_DIR`` points. Where it is absent (a GPU machine with only the repo), the
tests that read it are skipped with that reason and every other test runs.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("EDGE_BIFORMER_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference"))
HAVE_REFERENCE = (REFERENCE_DIR / "README.md").is_file()

#: The architecture of ../shared/reference/official_small_w7.* (overrides of biformer_tiny).
SMALL_W7 = {
    "depth": [1, 1, 2, 1],
    "embed_dim": [32, 64, 128, 256],
    "qk_dims": [32, 64, 128, 256],
    "mlp_ratios": [2, 2, 2, 2],
    "num_classes": 10,
}

#: The architecture of ../shared/reference/debiformer/debiformer_small_cfg.* (overrides of debiformer_tiny):
#: stage 1 = BRA(topk 1) + DBRA(topk 4), stage 2 = DBRA + DBRA (topk 49), stages 3-4 downsampling only.
DEBI_SMALL_CFG = {
    "depth": [1, 1, 0, 0],
    "embed_dim": [64, 128, 32, 32],
    "qk_dims": [64, 128, 32, 32],
    "mlp_ratios": [1, 1, 1, 1],
    "topks": [4, -2, 16, -2],
    "num_classes": 10,
}
DEBI_DIR = REFERENCE_DIR / "debiformer"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without the reference data, skip the tests that read it (by name or through its fixtures)."""
    if HAVE_REFERENCE:
        return
    skip = pytest.mark.skip(
        reason=f"reference data not found at {REFERENCE_DIR} (set EDGE_BIFORMER_REFERENCE_DIR)"
    )
    for item in items:
        func = getattr(item, "function", None)
        uses_fixture = {"golden", "debi_golden", "reference_dir"} & set(getattr(item, "fixturenames", ()))
        try:
            uses_name = func is not None and "REFERENCE_DIR" in inspect.getsource(item.module)
        except (OSError, TypeError):
            uses_name = False
        if uses_fixture or uses_name:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` (official-model facts, a small checkpoint, its golden output and ONNX)."""
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    """Input ``x`` and official logits ``y`` of ``official_small_w7``."""
    data = np.load(REFERENCE_DIR / "official_small_w7.golden.npz")
    return {"x": data["x"], "y": data["y"]}


@pytest.fixture(scope="session")
def debi_golden() -> dict[str, np.ndarray]:
    """Input ``x`` and official logits ``y`` of ``debiformer/debiformer_small_cfg``."""
    data = np.load(DEBI_DIR / "debiformer_small_cfg.golden.npz")
    return {"x": data["x"], "y": data["y"]}


def polygraphy_exe() -> str:
    """The polygraphy CLI of this environment (a dependency)."""
    import shutil
    import sys

    exe = shutil.which("polygraphy") or str(Path(sys.executable).with_name("polygraphy"))
    assert Path(exe).exists(), "the polygraphy CLI (a dependency) is not installed"
    return exe
