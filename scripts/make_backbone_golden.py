"""Make ``tests/data/biformer_backbone_golden.pt``: outputs of the official BiFormer dense backbones.

Runs the official mmdet (``object_detection/models_mm/biformer_mm.py``) and mmseg
(``semantic_segmentation/models_mm/biformer_mm.py``) ``BiFormer_mm`` backbones of
rayleizhu/BiFormer on a small configuration with deterministic weights, at input sizes that are not
multiples of the region grid (so ``auto_pad`` pads in every routed stage), and saves their four
outputs and the weights (as an mmdet-style ``backbone.``-prefixed checkpoint) for
``tests/models/test_backbone.py``.

The official code is read from a git mirror of the repository (its ``HEAD``), extracted into a
temporary folder and imported from there; nothing of it is copied into this project. Its
framework imports are stubbed here only: ``mmcv_custom.load_checkpoint``, the mmdet/mmseg
``BACKBONES`` registry and logger, fairscale's ``checkpoint_wrapper`` (unused: no gradient
checkpointing) and timm's model registry. timm's layers (``LayerNorm2d``, ``DropPath``,
``to_2tuple``, ``trunc_normal_``) are the real ones, loaded from an installed timm without its
package ``__init__`` (which needs torchvision). Needs ``pip install --no-deps timm einops`` in the
environment that runs this script (they are not dependencies of edge-biformer).

Usage::

    python scripts/make_backbone_golden.py --mirror /path/to/BiFormer.git \
        --output tests/data/biformer_backbone_golden.pt
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import torch
from torch import nn

#: The small configuration (official ``BiFormer`` constructor arguments, as in the dense configs
#: of the official repository except the sizes).
CONFIG: dict = {
    "depth": [1, 1, 2, 1],
    "embed_dim": [16, 32, 48, 64],
    "qk_dims": [16, 32, 48, 64],
    "mlp_ratios": [2, 2, 2, 2],
    "head_dim": 16,
    "kv_downsample_mode": "identity",
    "kv_per_wins": [-1, -1, -1, -1],
    "topks": [1, 4, 16, -2],
    "side_dwconv": 5,
    "before_attn_dwconv": 3,
    "layer_scale_init_value": -1,
    "param_routing": False,
    "diff_routing": False,
    "soft_routing": False,
    "pre_norm": True,
    "pe": None,
    "auto_pad": True,
}
#: (n_win, (height, width)): the segmentation (8) and detection (16) region grids, padded sizes.
CASES = ((8, (200, 232)), (16, (104, 136)))
SEED = 0


def golden_input(height: int, width: int) -> torch.Tensor:
    """The deterministic (1, 3, H, W) input of a case (a closed form: no RNG, no stored pixels)."""
    h = torch.arange(height, dtype=torch.float64).view(1, 1, height, 1)
    w = torch.arange(width, dtype=torch.float64).view(1, 1, 1, width)
    c = torch.arange(3, dtype=torch.float64).view(1, 3, 1, 1)
    x = torch.sin(0.37 * h + 0.23 * w + 1.1 * c) + 0.5 * torch.cos(0.011 * h * w + 0.7 * c)
    return x.to(torch.float32)


def _extract(mirror: Path, into: Path) -> Path:
    """``git archive`` the mirror's HEAD into ``into``; return the extracted tree."""
    archive = into / "head.tar"
    subprocess.run(
        ["git", "-C", str(mirror), "archive", "--format=tar", "-o", str(archive), "HEAD"], check=True
    )
    tree = into / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path is not None else []
    sys.modules[name] = module
    return module


def _install_stubs(tree: Path) -> None:
    """Make the official modules importable: real timm layers, stubbed framework registries."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("timm is not installed: pip install --no-deps timm einops")
    timm_dir = Path(next(iter(spec.submodule_search_locations)))
    _package("timm", timm_dir)
    _package("timm.layers", timm_dir / "layers")
    from timm.layers.drop import DropPath
    from timm.layers.helpers import to_2tuple
    from timm.layers.norm import LayerNorm2d
    from timm.layers.weight_init import trunc_normal_

    timm_models = _package("timm.models")
    timm_models.register_model = lambda fn: fn
    layers = _package("timm.models.layers")
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_, layers.LayerNorm2d = (
        DropPath,
        to_2tuple,
        trunc_normal_,
        LayerNorm2d,
    )
    vit = _package("timm.models.vision_transformer")
    vit._cfg = lambda url="", **kwargs: {"url": url, **kwargs}

    fairscale = _package("fairscale")
    fairscale.nn = _package("fairscale.nn")
    checkpoint = _package("fairscale.nn.checkpoint")
    checkpoint.checkpoint_wrapper = lambda module, *a, **k: module

    class _Registry:
        def register_module(self, *args, **kwargs):
            return (lambda cls: cls) if not args or not isinstance(args[0], type) else args[0]

    for framework in ("mmdet", "mmseg"):
        _package(framework)
        _package(f"{framework}.models")
        builder = _package(f"{framework}.models.builder")
        builder.BACKBONES = _Registry()
        utils = _package(f"{framework}.utils")
        utils.get_root_logger = lambda *a, **k: None
    mmcv_custom = _package("mmcv_custom")
    mmcv_custom.load_checkpoint = lambda *a, **k: sys.exit("no checkpoint loading in the golden script")

    # models_cls is a symlink to ../models in both dense folders; ops/ is a plain folder.
    _package("models_cls", tree / "models")
    _package("ops", tree / "ops")


def _load(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def deterministic_weights(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Non-trivial weights (norms and BN statistics included), rounded to float16 values."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith("running_var"):
            new = 0.5 + noise.abs()
        elif key.endswith("running_mean") or key.endswith("bias"):
            new = 0.1 * noise
        elif value.dim() == 1:  # norm weights
            new = 1.0 + 0.2 * noise
        else:
            fan_in = value[0].numel()
            new = noise * fan_in**-0.5
        state[key] = new.to(torch.float16).to(torch.float32)
    return state


def main() -> None:
    """Run the official backbones and write the golden file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True, type=Path, help="git directory of rayleizhu/BiFormer")
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "-C", str(args.mirror), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    torch.manual_seed(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        tree = _extract(args.mirror, Path(tmp))
        _install_stubs(tree)
        det = _load("official_det_backbone", tree / "object_detection" / "models_mm" / "biformer_mm.py")
        seg = _load("official_seg_backbone", tree / "semantic_segmentation" / "models_mm" / "biformer_mm.py")
        state = None
        cases = []
        for n_win, (height, width) in CASES:
            det_model = det.BiFormer_mm(num_classes=80, n_win=n_win, **CONFIG)
            seg_model = seg.BiFormer_mm(n_win=n_win, **CONFIG)
            for model in (det_model, seg_model):
                model.eval()  # (the mmdet class's train() returns None, so eval() does too)
            if state is None:
                state = deterministic_weights(det_model, SEED)
            for model in (det_model, seg_model):
                model.load_state_dict(state, strict=True)
            x = golden_input(height, width)
            with torch.no_grad():
                det_out = det_model(x)
                seg_out = seg_model(x)
            for a, b in zip(det_out, seg_out, strict=True):
                assert torch.equal(a, b), "the mmdet and mmseg backbones differ"
            shapes = [tuple(o.shape) for o in det_out]
            print(f"n_win {n_win} input {height}x{width}: outputs {shapes}")
            cases.append(
                {"n_win": n_win, "img_size": [height, width], "outputs": [o.clone() for o in det_out]}
            )
    assert state is not None
    checkpoint = {
        "meta": {"source": f"rayleizhu/BiFormer@{commit} BiFormer_mm (mmdet and mmseg)", "seed": SEED},
        # as an mmdet/mmseg checkpoint: backbone.-prefixed, next to a neck/head that is not the backbone's
        "state_dict": {
            **{
                f"backbone.{k}": v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()
            },
            "neck.lateral_convs.0.conv.weight": torch.zeros(4, 16, 1, 1, dtype=torch.float16),
        },
        "config": CONFIG,
        "cases": cases,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.output)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB), official commit {commit}")


if __name__ == "__main__":
    main()
