"""The reduced trained model exported once per test session, with its side-car manifest and test images.

``edge-biformer export --weights tests/data/reduced_biformer_shapes10.pth`` writes the graph and the
manifest that names the checkpoint (so predictors find its ``classes``); ``images`` is a labelled
folder of held-out test images (``<label>_<class>/<index>.png``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.reduced_model import CHECKPOINT, arch_args, train_script


@dataclass(frozen=True)
class ReducedExport:
    onnx: Path
    images: Path
    classes: tuple[str, ...]

    def image_files(self) -> list[Path]:
        return sorted(self.images.rglob("*.png"))

    def torch_logits(self, batch: np.ndarray) -> np.ndarray:
        """FP32 PyTorch logits of the reduced model (the reference)."""
        import torch

        with torch.inference_mode():
            return _torch_model()(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


@functools.lru_cache(maxsize=1)
def _torch_model():
    """The reduced model in PyTorch, made once (eval mode; only read, so threads may share it)."""
    from edge_biformer import create_model

    return create_model("biformer_tiny", weights=CHECKPOINT, **train_script().REDUCED_CONFIG).eval()


def export(folder: Path, images: int = 12) -> ReducedExport:
    """Export the reduced model into ``folder`` with the CLI and write ``images`` test images."""
    from edge_biformer.cli.main import main

    onnx_path = folder / "reduced.onnx"
    size = str(train_script().IMG_SIZE)
    args = ["export", "--model", "biformer_tiny", "--weights", str(CHECKPOINT), *arch_args()]
    args += ["--img-size", size]
    assert main([*args, "--output", str(onnx_path)]) == 0
    image_dir = train_script().write_image_folder(folder / "images", "test", images)
    return ReducedExport(onnx_path, image_dir, tuple(train_script().CLASSES))


@pytest.fixture(scope="session")
def reduced(tmp_path_factory: pytest.TempPathFactory) -> ReducedExport:
    """The reduced trained model as ONNX (with its manifest) and 12 held-out test images."""
    return export(tmp_path_factory.mktemp("reduced_export"))
