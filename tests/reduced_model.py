"""Test helpers: the reduced BiFormer and DeBiFormer of scripts/train_reduced_biformer.py and their data."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO_ROOT / "tests" / "data" / "reduced_biformer_shapes10.pth"
DEBI_CHECKPOINT = REPO_ROOT / "tests" / "data" / "reduced_debiformer_shapes10.pth"


@lru_cache(maxsize=1)
def train_script() -> ModuleType:
    """``scripts/train_reduced_biformer.py`` as a module (data generator, config)."""
    path = REPO_ROOT / "scripts" / "train_reduced_biformer.py"
    spec = importlib.util.spec_from_file_location("train_reduced_biformer", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def arch_args(family: str = "biformer") -> list[str]:
    """The reduced config of ``family`` as ``--arch KEY=VALUE`` CLI arguments."""
    import json

    config = dict(train_script().FAMILIES[family]["config"])
    num_classes = config.pop("num_classes")
    args = ["--num-classes", str(num_classes)]
    for key, value in config.items():
        args += ["--arch", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    return args


def export_reduced(path: Path, weights: Path | None = None) -> Path:
    """Export the reduced model (random weights unless ``weights``) at its 48x48 size."""
    import torch

    from edge_biformer import create_model
    from edge_biformer.export import export_onnx

    torch.manual_seed(0)
    model = create_model("biformer_tiny", weights=weights, **train_script().REDUCED_CONFIG)
    export_onnx(model, path, img_size=train_script().IMG_SIZE)
    return path
