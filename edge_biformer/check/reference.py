"""What the check compares with: the FP32 PyTorch model, or, where it cannot be rebuilt, the FP32 export.

In order of preference:

1. the FP32 PyTorch model: the one the caller holds (a build from ``--model``), or the one the
   manifest names when its checkpoint is at hand (rebuilt with :func:`edge_biformer.create_model`);
2. the plain FP32 export of the same weights in onnxruntime: the build's ``model.onnx``, or the
   export a ``--from-onnx`` graph comes from (found through the manifests' source chain, and used only
   while its bytes still match the SHA-256 the chain recorded). A model with random weights (no
   ``--weights``) cannot be rebuilt in PyTorch, but its export holds those very weights;
3. none: the check cannot run, and says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.check.finite import NonFiniteError, require_finite_initializers, require_finite_module
from edge_biformer.check.runners import path_of
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.manifest import source_path, sources
from edge_biformer.onnx_io import INPUT_NAME
from edge_biformer.utils import sha256_file

__all__ = [
    "NoReferenceError",
    "Reference",
    "find_reference",
    "keep_previous",
    "model_from_manifest",
    "plain_export",
    "require_finite_reference",
]


class NoReferenceError(EdgeBiformerError):
    """No reference the check can trust: no rebuildable PyTorch model and no FP32 export."""


@dataclass
class Reference:
    """The reference of a check: its name in Polygraphy's results, a description, how to run it."""

    runner: str  # "pytorch" | "onnxrt_fp32"
    description: str
    run: Callable[[Sequence[np.ndarray]], list[np.ndarray]]
    path: str | None = None  # the FP32 export, for an onnxruntime reference


def _pytorch(model: Any, description: str) -> Reference:
    def run(batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        require_finite_module(model, description)
        model.eval()
        with torch.inference_mode():
            return [model(torch.from_numpy(np.ascontiguousarray(b))).float().numpy() for b in batches]

    return Reference("pytorch", description, run)


def _onnxruntime(path: str) -> Reference:
    def run(batches: Sequence[np.ndarray]) -> list[np.ndarray]:
        import onnxruntime as ort

        from edge_biformer.onnx_io import load_model

        require_finite_initializers(load_model(path, check=False), path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return [
            np.asarray(session.run(None, {INPUT_NAME: np.ascontiguousarray(b)})[0], np.float32)
            for b in batches
        ]

    return Reference("onnxrt_fp32", f"the FP32 export {path} in onnxruntime", run, path)


def model_from_manifest(manifest: dict[str, Any]) -> Any:
    """The FP32 PyTorch model a manifest names, when it can be rebuilt exactly (its checkpoint exists).

    Raises:
        NoReferenceError: no model named, random weights (no checkpoint), or the checkpoint is gone.
    """
    from edge_biformer.models import create_model

    name, weights = manifest.get("model"), manifest.get("weights")
    if not name:
        raise NoReferenceError("the manifest names no PyTorch model")
    if not weights:
        raise NoReferenceError(
            f"{name} was built with random weights (no --weights): PyTorch cannot rebuild those weights"
        )
    if not Path(weights).is_file():
        raise NoReferenceError(f"the checkpoint {weights} of {name} is not there any more")
    return create_model(name, weights=weights, **(manifest.get("config") or {}))


def _is_plain_export(record: Any, path: Path) -> bool:
    """Whether a source is an FP32 export: its manifest says so, or (without one) its graph does."""
    if record.get("manifest"):
        return record["manifest"].get("stage") == "export"
    from edge_biformer.onnx_io import graph_kind, graph_precision

    return graph_kind(path) == "plain" and graph_precision(path) == "fp32"


def plain_export(manifest: dict[str, Any], outdir: Path) -> str | None:
    """The FP32 export of this build: its own ``model.onnx``, or the export in the source chain.

    A source whose bytes changed since the chain recorded them is not the same model any more.
    """
    own = (manifest.get("artifacts") or {}).get("onnx")
    if own and Path(path_of(outdir, own)).is_file():
        return path_of(outdir, own)
    for record in sources(manifest):
        path = source_path(record)
        if path is None or not Path(path).is_file() or sha256_file(path) != record.get("sha256"):
            continue
        if _is_plain_export(record, path):
            return str(path)
    return None


def find_reference(manifest: dict[str, Any], outdir: Path, model: Any = None) -> Reference:
    """The best reference for a build directory (see the module docstring).

    Raises:
        NoReferenceError: with the reasons, when neither PyTorch nor an FP32 export can serve.
    """
    if model is not None:
        return _pytorch(model, f"FP32 PyTorch ({getattr(model, 'variant', type(model).__name__)})")
    try:
        rebuilt = model_from_manifest(manifest)
    except NoReferenceError as err:
        why = str(err)
    else:
        return _pytorch(rebuilt, f"FP32 PyTorch ({manifest['model']}, {manifest['weights']})")
    export = plain_export(manifest, Path(outdir))
    if export is not None:
        return _onnxruntime(export)
    raise NoReferenceError(
        f"no reference for the accuracy check of {outdir}: {why}, and no FP32 export of the same weights "
        "is at hand (its model.onnx, or the export a --from-onnx graph comes from, is missing or changed). "
        "Build from --model with --weights, or keep the export beside the graph"
    )


def require_finite_reference(reference: Reference, outputs: Sequence[np.ndarray]) -> None:
    """The reference's outputs must be finite: NaN/Inf there leaves nothing to judge against."""
    rows = [np.asarray(o).reshape(len(o), -1) for o in outputs]
    bad = sum(int((~np.isfinite(r)).any(axis=1).sum()) for r in rows)
    if bad:
        total = sum(len(r) for r in rows)
        raise NonFiniteError(
            f"the reference ({reference.description}) gives NaN/Inf outputs for {bad} of {total} check "
            "inputs, although its weights are finite: the check cannot judge anything against it. Check the "
            "inputs (preprocessed like the training data?) and the model (an overflow in float32?)"
        )


def keep_previous(path: Path) -> Path | None:
    """Move an existing file aside (``<name>.replaced-<UTC time><suffix>``) before it is replaced."""
    if not path.is_file():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.stem}.replaced-{stamp}{path.suffix}")
    path.replace(kept)
    return kept
