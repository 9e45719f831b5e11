"""PyTorch -> ONNX export of BiFormer, verified against PyTorch in onnxruntime.

The exported graph has one input ``input`` (N, 3, H, W float32) and one output ``logits``. The
batch is dynamic unless a static batch is asked for; the spatial size is fixed at export, except
for ``auto_pad`` models, whose padding is computed from the runtime shape: their graphs take any
H and W (both dynamic).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edge_biformer import __version__
from edge_biformer.errors import EdgeBiformerError, ExportError
from edge_biformer.utils import atomic_output
from edge_biformer.utils.sizes import image_hw

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTERS = ("torchscript", "dynamo")
#: Default verification tolerance: max |onnx - torch| / max |torch| for float32 graphs.
DEFAULT_RTOL = 1e-4


@dataclass
class Verification:
    """Result of comparing an exported graph with PyTorch on the same inputs."""

    batch_sizes: list[int]
    input_shapes: list[list[int]]
    max_abs_diff: float
    max_rel_diff: float
    tolerance: float
    passed: bool


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured."""

    path: str
    input_shape: list[int | str]
    output_shape: list[int | str]
    opset: int
    exporter: str
    seconds: float
    verification: Verification | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _stage_sizes(size: int, n_stages: int = 4) -> list[int]:
    """Feature-map side per stage: the stem divides by 4, each downsampling by 2 (ceil, k3 s2 p1)."""
    sizes = []
    for i in range(n_stages):
        size = (size + 1) // 2 if i else (((size + 1) // 2) + 1) // 2
        sizes.append(size)
    return sizes


def valid_sizes_near(size: int, n_win: int, routed_stages: Sequence[int]) -> list[int]:
    """The two valid input sides closest to ``size`` (for error messages)."""
    candidates = [
        s
        for s in range(max(32, size - 64 * n_win), size + 64 * n_win + 1)
        if _side_ok(s, n_win, routed_stages)
    ]
    return sorted(candidates, key=lambda s: (abs(s - size), s))[:2]


def _side_ok(side: int, n_win: int, routed_stages: Sequence[int]) -> bool:
    sizes = _stage_sizes(side)
    return all(sizes[i] % n_win == 0 and sizes[i] > 0 for i in routed_stages)


def check_input_size(model: nn.Module, height: int, width: int) -> None:
    """Raise a clear error if (height, width) is not a size the model can run at."""
    config = getattr(model, "config", {})
    n_win = config.get("n_win", 7)
    if height < 32 or width < 32:
        raise EdgeBiformerError(f"--img-size {height}x{width} is too small: BiFormer needs at least 32x32")
    if config.get("auto_pad", False):
        return
    routed = [i for i, k in enumerate(config.get("topks", [])) if k > 0]
    for side, name in ((height, "height"), (width, "width")):
        if not _side_ok(side, n_win, routed):
            near = " or ".join(str(s) for s in valid_sizes_near(side, n_win, routed))
            raise EdgeBiformerError(
                f"--img-size {name} {side} does not fit the model: every routed-attention stage needs a "
                f"feature map that is a multiple of n_win={n_win} (stage strides 4, 8, 16, 32), so the "
                f"input must be a multiple of {32 * n_win} for the released models. Use {near}, or "
                "build the model with auto_pad=True (--auto-pad) to accept any size"
            )


def _export_graph(
    model: nn.Module,
    path: Path,
    example: torch.Tensor,
    *,
    opset: int,
    static_batch: int | None,
    dynamic_hw: bool,
    exporter: str,
) -> None:
    """Run a torch.onnx exporter into ``path`` (one file, no external data)."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            input_axes: dict[int, str] = {} if static_batch else {0: "batch"}
            if dynamic_hw:
                input_axes.update({2: "height", 3: "width"})
            dynamic_axes = {INPUT_NAME: input_axes, OUTPUT_NAME: {} if static_batch else {0: "batch"}}
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={k: v for k, v in dynamic_axes.items() if v} or None,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        else:
            from torch.export import Dim

            axes: dict[int, Any] = {} if static_batch else {0: Dim.DYNAMIC}
            if dynamic_hw:
                axes.update({2: Dim.DYNAMIC, 3: Dim.DYNAMIC})
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": axes} if axes else None,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            program.save(str(path), external_data=False)


def _onnx_shape(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def verify_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    inputs: Sequence[torch.Tensor],
    tolerance: float = DEFAULT_RTOL,
) -> Verification:
    """Run the graph in onnxruntime (CPU) and PyTorch on each input; compare the logits.

    The relative difference is ``max|onnx - torch| / max|torch|`` over all inputs.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    max_abs, max_ref = 0.0, 0.0
    for x in inputs:
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(None, {INPUT_NAME: x.numpy()})[0]
        if out.shape != ref.shape:
            raise ExportError(f"{path}: onnxruntime returned shape {out.shape}, PyTorch {ref.shape}")
        max_abs = max(max_abs, float(np.abs(out - ref).max()))
        max_ref = max(max_ref, float(np.abs(ref).max()))
    rel = max_abs / max(max_ref, 1e-12)
    return Verification(
        batch_sizes=[int(x.shape[0]) for x in inputs],
        input_shapes=[list(x.shape) for x in inputs],
        max_abs_diff=max_abs,
        max_rel_diff=rel,
        tolerance=tolerance,
        passed=bool(rel <= tolerance),
    )


def export_onnx(
    model: nn.Module,
    output: str | os.PathLike[str],
    *,
    img_size: int | Sequence[int] = 224,
    opset: int = 17,
    static_batch: int | None = None,
    exporter: str = "torchscript",
    verify: bool = True,
    verify_batches: Sequence[int] = (1, 2),
    tolerance: float = DEFAULT_RTOL,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` to ``output`` and (by default) verify it against PyTorch.

    Nothing is left at ``output`` if the export or the verification fails: the graph is written
    to a temporary sibling and renamed only when it passed.

    Args:
        model: a BiFormer from :func:`edge_biformer.create_model` (eval mode).
        output: path of the ``.onnx`` file.
        img_size: H=W or (H, W) of the input at export (any size for ``auto_pad`` models, whose
            graphs take dynamic H and W).
        opset: ONNX opset (17 or newer; the dynamo exporter needs 18 or newer).
        static_batch: fix the batch to this size instead of a dynamic batch axis.
        exporter: ``"torchscript"`` (``torch.onnx.export(dynamo=False)``) or ``"dynamo"``.
        verify: compare onnxruntime with PyTorch on seeded random inputs.
        verify_batches: batch sizes to verify with (ignored with ``static_batch``).
        tolerance: maximum ``max|onnx - torch| / max|torch|``.
        seed: seed of the verification inputs.
    """
    if exporter not in EXPORTERS:
        raise EdgeBiformerError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if opset < 17:
        raise EdgeBiformerError(f"opset {opset} is too old: LayerNormalization needs opset 17 or newer")
    if exporter == "dynamo" and opset < 18:
        raise EdgeBiformerError(f"the dynamo exporter emits opset 18 or newer; use --opset 18 (got {opset})")
    if static_batch is not None and static_batch < 1:
        raise EdgeBiformerError(f"--static-batch must be >= 1, got {static_batch}")
    height, width = image_hw(img_size)
    check_input_size(model, height, width)
    dynamic_hw = bool(getattr(model, "config", {}).get("auto_pad", False))
    output = Path(output)
    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(static_batch or 1, 3, height, width, generator=generator)

    start = time.perf_counter()
    with atomic_output(output, suffix=".onnx") as tmp:
        try:
            _export_graph(
                model,
                tmp,
                example,
                opset=opset,
                static_batch=static_batch,
                dynamic_hw=dynamic_hw,
                exporter=exporter,
            )
            onnx.checker.check_model(str(tmp))
        except EdgeBiformerError:
            raise
        except Exception as err:  # exporter internals: report them as one clear error
            root = err
            while root.__cause__ is not None:
                root = root.__cause__
            detail = str(root).strip().splitlines()[0] if str(root).strip() else ""
            raise ExportError(
                f"exporting {getattr(model, 'variant', 'the model')} to {output} with the {exporter} "
                f"exporter failed ({type(root).__name__}: {detail}). Try the other exporter "
                "(--exporter torchscript|dynamo) or another opset"
            ) from err
        seconds = time.perf_counter() - start
        graph = onnx.load(str(tmp), load_external_data=False).graph
        result = ExportResult(
            path=str(output),
            input_shape=_onnx_shape(graph.input[0]),
            output_shape=_onnx_shape(graph.output[0]),
            opset=opset,
            exporter=exporter,
            seconds=seconds,
        )
        if verify:
            batches = [static_batch] if static_batch else list(verify_batches)
            inputs = [torch.randn(b, 3, height, width, generator=generator) for b in batches]
            result.verification = verify_onnx(model, tmp, inputs, tolerance=tolerance)
            if not result.verification.passed:
                v = result.verification
                raise ExportError(
                    f"the exported graph does not match PyTorch: max relative difference "
                    f"{v.max_rel_diff:.3g} > tolerance {v.tolerance:.3g} (max abs {v.max_abs_diff:.3g}); "
                    f"{output} was not written. Try the other exporter or report this as a bug"
                )
    return result


def write_manifest(
    path: str | os.PathLike[str],
    result: ExportResult,
    *,
    model: nn.Module,
    weights: str | os.PathLike[str] | None,
    weights_sha256: str | None,
) -> None:
    """Write the side-car manifest (JSON) of an export, atomically."""
    import onnxruntime

    manifest = {
        "artifact": Path(result.path).name,
        "kind": "onnx",
        "model": getattr(model, "variant", None),
        "config": getattr(model, "config", None),
        "weights": str(Path(weights).resolve()) if weights else None,
        "weights_sha256": weights_sha256,
        "input": {"name": INPUT_NAME, "shape": result.input_shape, "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": result.output_shape, "dtype": "float32"},
        "opset": result.opset,
        "exporter": result.exporter,
        "verification": asdict(result.verification) if result.verification else None,
        "versions": {
            "edge_biformer": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_output(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
