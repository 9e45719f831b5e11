"""Shared fixtures: the reference data beside the checkout and small model configurations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _find_reference_dir() -> Path:
    # CI clones the repo beside shared/; a git worktree may sit elsewhere, so also try /work/shared.
    for candidate in (REPO_ROOT.parent / "shared" / "reference", Path("/work/shared/reference")):
        if (candidate / "README.md").is_file():
            return candidate
    raise FileNotFoundError(
        f"reference data not found beside the checkout ({REPO_ROOT.parent / 'shared' / 'reference'})"
    )


REFERENCE_DIR = _find_reference_dir()

#: The architecture of ../shared/reference/official_small_w7.* (overrides of biformer_tiny).
SMALL_W7 = {
    "depth": [1, 1, 2, 1],
    "embed_dim": [32, 64, 128, 256],
    "qk_dims": [32, 64, 128, 256],
    "mlp_ratios": [2, 2, 2, 2],
    "num_classes": 10,
}


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` (official-model facts, a small checkpoint, its golden output and ONNX)."""
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def golden() -> dict[str, np.ndarray]:
    """Input ``x`` and official logits ``y`` of ``official_small_w7``."""
    data = np.load(REFERENCE_DIR / "official_small_w7.golden.npz")
    return {"x": data["x"], "y": data["y"]}
