"""What the check compares with: the FP32 PyTorch model, or, where it cannot be rebuilt, the FP32 export.

In order of preference:

1. the FP32 PyTorch model: the one the caller holds (a build from ``--model``), or the one the
   manifest names when its checkpoint is at hand (rebuilt with :func:`edge_biformer.create_model`);
2. the plain FP32 export of the same weights in onnxruntime: the build's ``model.onnx``, or the
   export a ``--from-onnx`` graph comes from (found through the manifests' source chain, and used only
   while its bytes still match the SHA-256 the chain recorded). A model with random weights (no
   ``--weights``) cannot be rebuilt in PyTorch, but its export holds those very weights;
3. a float32 rewritten graph given as it is (``--from-onnx model.plugin.onnx`` of one's own): itself
   in :func:`edge_biformer.cpu_session` (the plugin op's CPU implementation, which the rewrite checked
   against the original graph);
4. none: the check cannot run, and says why.

A graph of one's own (``build --onnx``) with no manifest is its own FP32 reference (2.). Every
reference gives all outputs of the graph, by name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.check.finite import NonFiniteError, require_finite_initializers, require_finite_module
from edge_biformer.check.runners import path_of
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.manifest import source_path, sources
from edge_biformer.onnx_io import OUTPUT_NAME, graph_precision
from edge_biformer.utils import sha256_file

__all__ = [
    "NoReferenceError",
    "Reference",
    "find_reference",
    "keep_previous",
    "model_from_manifest",
    "module_outputs",
    "plain_export",
    "require_finite_reference",
]


class NoReferenceError(EdgeBiformerError):
    """No reference the check can trust: no rebuildable PyTorch model and no FP32 export."""


@dataclass
class Reference:
    """The reference of a check: its name in Polygraphy's results, a description, how to run it.

    ``run`` gives each batch's outputs as ``{output name: array}`` in the graph's order.
    """

    runner: str  # "pytorch" | "onnxrt_fp32" | "cpu_session_fp32"
    description: str
    run: Callable[[Sequence[np.ndarray]], list[dict[str, np.ndarray]]]
    path: str | None = None  # the FP32 graph, for an onnxruntime reference


def module_outputs(value: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """A PyTorch module's outputs (a tensor, a tuple/list, or a dict of tensors) by the graph's output names.

    Nested tuples/lists are flattened in order, as the ONNX exporters do.
    """
    if isinstance(value, Mapping):
        flat = list(value.values())
    else:
        flat = []
        stack = [value]
        while stack:
            item = stack.pop(0)
            if isinstance(item, (tuple, list)):
                stack[:0] = list(item)
            else:
                flat.append(item)
    if len(flat) != len(names):
        raise EdgeBiformerError(
            f"the PyTorch module returns {len(flat)} tensors, the graph has {len(names)} outputs "
            f"({', '.join(names)}): the module is not the model the graph was exported from"
        )
    # Contiguous: a backbone's stage outputs are often permuted views, which Polygraphy cannot save.
    return {
        n: np.ascontiguousarray(v.detach().float().cpu().numpy()) for n, v in zip(names, flat, strict=True)
    }


def _pytorch(model: Any, description: str, output_names: Sequence[str] = (OUTPUT_NAME,)) -> Reference:
    def run(batches: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        import torch

        require_finite_module(model, description)
        model.eval()
        with torch.inference_mode():
            outs = [model(torch.from_numpy(np.ascontiguousarray(b))) for b in batches]
        return [module_outputs(o, output_names) for o in outs]

    return Reference("pytorch", description, run)


def _onnxruntime(path: str, plugin: bool = False) -> Reference:
    def run(batches: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        import onnxruntime as ort

        from edge_biformer.check.runners import float32_outputs, session_runner
        from edge_biformer.onnx_io import graph_interface, load_model

        require_finite_initializers(load_model(path, check=False), path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if plugin:
            from edge_biformer.runtime.cpu import cpu_session

            session = cpu_session(path)
        else:
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        one = session_runner(session, graph_interface(path).input.name)
        return [float32_outputs(one(np.ascontiguousarray(b))) for b in batches]

    if plugin:
        what = f"the FP32 rewritten graph {path} in cpu_session (the plugin op's CPU implementation)"
        return Reference("cpu_session_fp32", what, run, path)
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
    from edge_biformer.onnx_io import graph_kind

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
    names = [o["name"] for o in manifest.get("outputs") or []] or [OUTPUT_NAME]
    if model is not None:
        return _pytorch(model, f"FP32 PyTorch ({getattr(model, 'variant', type(model).__name__)})", names)
    try:
        rebuilt = model_from_manifest(manifest)
    except NoReferenceError as err:
        why = str(err)
    else:
        return _pytorch(rebuilt, f"FP32 PyTorch ({manifest['model']}, {manifest['weights']})", names)
    export = plain_export(manifest, Path(outdir))
    if export is not None:
        return _onnxruntime(export)
    rewritten = _fp32_plugin_source(manifest)
    if rewritten is not None:  # a rewritten graph of one's own, given as it is: its float32 self
        return _onnxruntime(rewritten, plugin=True)
    raise NoReferenceError(
        f"no reference for the accuracy check of {outdir}: {why}, and no FP32 export of the same weights "
        "is at hand (its model.onnx, or the export a --from-onnx graph comes from, is missing or changed). "
        "Build from --model with --weights, or keep the export beside the graph"
    )


def _fp32_plugin_source(manifest: dict[str, Any]) -> str | None:
    """The float32 rewritten graph a ``--from-onnx`` build started from, when it is unchanged."""
    start = manifest.get("from_onnx") or {}
    path = start.get("path")
    if start.get("graph") != "plugin" or not path or not Path(path).is_file():
        return None
    if sha256_file(path) != start.get("sha256") or graph_precision(path) != "fp32":
        return None
    return str(path)


def require_finite_reference(reference: Reference, outputs: Sequence[Any]) -> None:
    """The reference's outputs must be finite: NaN/Inf there leaves nothing to judge against."""
    rows = [
        np.asarray(v).reshape(len(v), -1)
        for o in outputs
        for v in (o.values() if isinstance(o, Mapping) else [o])
        if np.issubdtype(np.asarray(v).dtype, np.floating)
    ]
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
