"""``edge_biformer.build(module, example_input, ...)``: the whole pipeline for a PyTorch module of one's own.

The module (a YOLO with BRA plug-ins, a BRA U-Net, a backbone: anything with one image input) is
exported to ONNX, verified in onnxruntime against PyTorch, and then built exactly as
``edge-biformer build --onnx`` builds a graph (rewrite, FP16/INT8, engine or its target commands,
check), with the module itself as the check's FP32 reference.

Exporter choice (``exporter="auto"``): the torchscript exporter first (it gives the plainest graphs
and handles the data-dependent Python of most research code), then, when it fails, the dynamo
exporter, saying why the first one failed (e.g. ``adaptive_avg_pool2d`` with a window that depends on
a dynamic size cannot be expressed by torchscript's symbolic).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_biformer.errors import ExportError
from edge_biformer.utils import atomic_output, log

__all__ = ["EXPORTERS", "build", "export_module"]

#: ``exporter=`` choices of :func:`build` / :func:`export_module`.
EXPORTERS = ("auto", "torchscript", "dynamo")


def _flat_outputs(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _flat_outputs(v)]
    return [value]


def _export_once(
    module: Any, example: Any, path: Path, exporter: str, input_name: str, output_names: list[str],
    dynamic_batch: bool, opset: int,
) -> None:  # fmt: skip
    import torch

    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            axes = {name: {0: "batch"} for name in (input_name, *output_names)} if dynamic_batch else None
            torch.onnx.export(
                module, (example,), str(path), input_names=[input_name], output_names=output_names,
                dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False,
            )  # fmt: skip
            return
        from torch.export import Dim

        first = next(iter(inspect.signature(module.forward).parameters), "x")
        program = torch.onnx.export(
            module, (example,), input_names=[input_name], output_names=output_names,
            dynamic_shapes={first: {0: Dim.DYNAMIC}} if dynamic_batch else None,
            opset_version=max(opset, 18), dynamo=True, external_data=False, verbose=False,
        )  # fmt: skip
        program.save(str(path), external_data=False)


def export_module(
    module: Any,
    example_input: Any,
    output: str | os.PathLike[str],
    *,
    exporter: str = "auto",
    input_name: str = "input",
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    opset: int = 17,
) -> Path:
    """Export ``module`` (eval mode, float32) to ``output`` and verify it in onnxruntime against PyTorch.

    Args:
        module: the ``nn.Module``; it takes one image tensor ``N x C x H x W``.
        example_input: an example batch (its H and W are the graph's).
        exporter: ``auto`` (torchscript, then dynamo when it fails), ``torchscript`` or ``dynamo``.
        input_name / output_names: graph names (default ``input`` and ``output0``, ``output1``, ...).
        dynamic_batch: a dynamic batch axis (else the example's batch is fixed).

    Raises:
        ExportError: both exporters failed, or the graph differs from PyTorch beyond the export
            tolerance.
    """
    import torch

    from edge_biformer import manifest as manifests
    from edge_biformer.check import compare
    from edge_biformer.check.tolerances import TOLERANCES

    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not isinstance(example_input, torch.Tensor) or example_input.ndim != 4:
        raise ExportError(
            "example_input must be one image batch, a torch.Tensor N x C x H x W (e.g. torch.rand(1, 3, 640, "
            f"640)); got {type(example_input).__name__}"
            + (f" of shape {tuple(example_input.shape)}" if isinstance(example_input, torch.Tensor) else "")
        )
    module = module.eval().float()
    example = example_input.float()
    with torch.inference_mode():
        expected = [t.detach().float().numpy() for t in _flat_outputs(module(example))]
    names = list(output_names) if output_names else [f"output{i}" for i in range(len(expected))]
    if len(names) != len(expected):
        raise ExportError(f"output_names has {len(names)} names, the module returns {len(expected)} tensors")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    order = ("torchscript", "dynamo") if exporter == "auto" else (exporter,)
    failures: list[str] = []
    for i, name in enumerate(order):
        t0 = time.perf_counter()
        try:
            with atomic_output(output, suffix=".onnx") as tmp:
                _export_once(module, example, Path(tmp), name, input_name, names, dynamic_batch, opset)
        except Exception as err:  # any exporter failure falls back or is reported
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            failures.append(f"{name}: {type(err).__name__}: {first[:300]}")
            more = f"; trying the {order[i + 1]} exporter" if i + 1 < len(order) else ""
            log(f"export with the {name} exporter failed ({failures[-1]}){more}")
            continue
        size = output.stat().st_size / 1024
        log(f"export ({name})  {time.perf_counter() - t0:.2f} s  -> {output} ({size:.1f} KB)")
        break
    else:
        raise ExportError(
            f"{type(module).__name__} could not be exported to ONNX ({'; '.join(failures)}): simplify the "
            "forward (no data-dependent Python control flow, static window sizes), or export it yourself "
            "and run `edge-biformer build --onnx`"
        )
    import onnxruntime as ort

    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    got = session.run(names, {session.get_inputs()[0].name: example.numpy()})
    result = compare(
        dict(zip(names, got, strict=True)), dict(zip(names, expected, strict=True)), TOLERANCES["export"]
    )
    if not result.passed:
        output.unlink(missing_ok=True)
        raise ExportError(
            f"the ONNX export of {type(module).__name__} differs from PyTorch in onnxruntime ("
            + "; ".join(result.failures)
            + "): the module's forward probably depends on Python values the exporter froze; try "
            "exporter='dynamo'"
        )
    log(
        f"verify onnxruntime vs pytorch  max rel diff {result.max_rel_diff:.3e} "
        f"(tolerance {TOLERANCES['export'].max_rel:.0e}): PASS"
    )
    record = manifests.make_manifest(
        output, kind="onnx", stage="export", module=type(module).__qualname__,
        verification=result.to_dict(), exporter=name, exporter_failures=failures,
    )  # fmt: skip
    manifests.write_manifest(manifests.manifest_path(output), record)
    return output


def build(
    module: Any,
    example_input: Any,
    *,
    precision: str,
    output: str | os.PathLike[str],
    calib_data: str | os.PathLike[str] | None = None,
    check_data: str | os.PathLike[str] | None = None,
    preprocess: Any = None,
    exporter: str = "auto",
    input_name: str = "input",
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    batch: str = "1,8,32",
    rewrite: bool = True,
    check: bool = True,
) -> Any:
    """Export a PyTorch module of one's own and build it like ``edge-biformer build --onnx``.

    Args:
        module: an ``nn.Module`` with one image input (BRA inside it is rewritten to the plugin).
        example_input: an example batch ``N x C x H x W`` (fixes H and W).
        precision: ``fp32``, ``fp16`` or ``int8``.
        output: the build directory (``model.onnx`` is the export).
        calib_data / check_data: image folders (default: the built-in demo photographs).
        preprocess: a preset name (``imagenet``, ``yolo``, ``unit``, ``imagenet-resize``) or a
            :class:`edge_biformer.calib.preprocess.Preprocess`; default ``imagenet``.
        exporter, input_name, output_names, dynamic_batch: see :func:`export_module`.
        batch: the engine profile ``MIN,OPT,MAX`` (a static batch fixes it).

    Returns:
        the :class:`edge_biformer.pipeline.BuildResult` (manifest, report); the module itself is the
        check's reference.
    """
    from edge_biformer import pipeline
    from edge_biformer.calib import DataSpec
    from edge_biformer.calib.preprocess import Preprocess, preset
    from edge_biformer.check.stage import CheckOptions
    from edge_biformer.engine.options import BatchProfile, EngineOptions
    from edge_biformer.quantize.stage import QuantizeOptions
    from edge_biformer.rewrite import RewriteOptions

    out = Path(output)
    recipe = preset(preprocess) if isinstance(preprocess, str) else preprocess
    if recipe is not None and not isinstance(recipe, Preprocess):
        raise ExportError(
            f"preprocess must be a preset name or a Preprocess, got {type(preprocess).__name__}"
        )
    exported = export_module(
        module, example_input, out / "model.onnx", exporter=exporter, input_name=input_name,
        output_names=output_names, dynamic_batch=dynamic_batch,
    )  # fmt: skip
    h, w = int(example_input.shape[2]), int(example_input.shape[3])
    options = pipeline.BuildOptions(
        precision=precision,
        output=out,
        engine=EngineOptions(precision, (h, w), BatchProfile.parse(batch)),
        from_onnx=exported,
        quantize=QuantizeOptions(precision, calib=DataSpec(str(calib_data)) if calib_data else None),
        rewrite=RewriteOptions() if rewrite else None,
        check=CheckOptions(outdir=out, data=DataSpec(str(check_data)) if check_data else None)
        if check
        else None,
        preprocess=recipe,
    )
    return pipeline.run(options, model=module)
