"""The export stage: PyTorch -> ONNX of BiFormer, verified against PyTorch in onnxruntime.

The exported graph has one input ``input`` (N, 3, H, W float32) and one output ``logits``; a
dense backbone (``create_model(..., features_only=True)``) has one output per stage of its
``out_indices`` instead, ``feat0`` .. ``feat3`` (named by stage; stride 4, 8, 16, 32). The batch is
dynamic unless a static batch is asked for; the spatial size is fixed at export, except for
``auto_pad`` models, whose padding is computed from the runtime shape: their graphs take any H and
W (both dynamic, and so are the outputs' H and W).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from edge_biformer import manifest as manifests
from edge_biformer.calib.preprocess import IMAGENET
from edge_biformer.check import TOLERANCES, Comparison, Tolerance, compare
from edge_biformer.check.finite import require_finite_module
from edge_biformer.errors import EdgeBiformerError, ExportError
from edge_biformer.onnx_io import INPUT_NAME, OUTPUT_NAME, feature_output_name, save_model
from edge_biformer.utils import atomic_output, check_onnx_output, log, sha256_file, stage
from edge_biformer.utils.sizes import image_hw

EXPORTERS = ("torchscript", "dynamo")


@dataclass
class ExportOptions:
    """The export stage: the model to build (``model``, ``weights``, ``overrides``) and how to export it.

    ``tolerance`` replaces the ``max_rel`` of the ``export`` entry of the tolerance table;
    ``verify_batches`` are the batch sizes of the onnxruntime-vs-PyTorch check (ignored with
    ``static_batch``); ``seed`` seeds its inputs and, without ``weights``, the model's random
    initialisation (so that such a build is the same every time).
    """

    output: Path | None = None
    model: str | None = None
    weights: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    img_size: tuple[int, int] = (224, 224)
    opset: int = 17
    static_batch: int | None = None
    exporter: str = "torchscript"
    verify: bool = True
    verify_batches: tuple[int, ...] = (1, 2)
    tolerance: float | None = None
    seed: int = 0
    #: ``--target-trt``: write the graph for the ONNX parser of this TensorRT (see :func:`for_tensorrt`).
    target_tensorrt: str | None = None


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured (``verification``: onnxruntime against PyTorch)."""

    path: str
    input_shape: list[int | str]
    output_shape: list[int | str]
    opset: int
    exporter: str
    seconds: float
    verification: Comparison | None = None
    verify_batches: list[int] = field(default_factory=list)
    manifest: str | None = None
    #: The shapes of all outputs (a backbone has one per stage; ``output_shape`` is the first's).
    output_shapes: list[list[int | str]] = field(default_factory=list)

    def verification_record(self) -> dict[str, Any] | None:
        """The manifest's ``verification`` record."""
        if self.verification is None:
            return None
        return {**self.verification.to_dict(), "batch_sizes": self.verify_batches}


def _stage_sizes(size: int, n_stages: int = 4) -> list[int]:
    """Feature-map side per stage: the stem divides by 4, each downsampling by 2 (ceil, k3 s2 p1)."""
    sizes = []
    for i in range(n_stages):
        size = (size + 1) // 2 if i else (((size + 1) // 2) + 1) // 2
        sizes.append(size)
    return sizes


def valid_sizes_near(
    size: int, n_win: int, routed_stages: Sequence[int], strides: Sequence[int | None] | None = None
) -> list[int]:
    """The nearest valid input side below ``size`` and the nearest above it (for error messages)."""
    below = next((s for s in range(size - 1, 31, -1) if _side_ok(s, n_win, routed_stages, strides)), None)
    above = next(
        s for s in range(size + 1, size + 64 * n_win + 1) if _side_ok(s, n_win, routed_stages, strides)
    )
    return [s for s in (below, above) if s is not None]


def _side_ok(
    side: int, n_win: int, routed_stages: Sequence[int], strides: Sequence[int | None] | None = None
) -> bool:
    """Every routed stage's map side is a multiple of n_win (and so is a DBRA's agent grid side)."""
    sizes = _stage_sizes(side)
    for i in routed_stages:
        if sizes[i] <= 0 or sizes[i] % n_win:
            return False
        stride = strides[i] if strides else None
        if stride and -(-sizes[i] // stride) % n_win:
            return False
    return True


def check_input_size(model: nn.Module, height: int, width: int) -> None:
    """Raise a clear error if (height, width) is not a size the model can run at."""
    config = getattr(model, "config", {})
    n_win = config.get("n_win", 7)
    if height < 32 or width < 32:
        raise EdgeBiformerError(f"--img-size {height}x{width} is too small: BiFormer needs at least 32x32")
    if config.get("auto_pad", False):
        return
    # DeBiFormer: every non-empty stage routes (its DBRA also needs agent grids of multiples of n_win).
    strides = getattr(model, "agent_strides", None)
    if strides is not None:
        routed = [i for i, s in enumerate(strides) if s]
    else:
        routed = [i for i, k in enumerate(config.get("topks", [])) if k > 0]
    for side, name in ((height, "height"), (width, "width")):
        if not _side_ok(side, n_win, routed, strides):
            sides = _stage_sizes(side)
            got = ", ".join(f"{sides[i]}" for i in routed)
            near = " or ".join(str(s) for s in valid_sizes_near(side, n_win, routed, strides))
            agents = (
                " and (DeBiFormer) its agent grid, the map side divided by the stage's stride "
                f"{', '.join(str(strides[i]) for i in routed)} rounded up, too"
                if strides is not None
                else ""
            )
            raise EdgeBiformerError(
                f"--img-size {name} {side} does not fit the model: each routed-attention stage splits its "
                f"feature map into n_win={n_win} x {n_win} regions, so the map's side must be a multiple of "
                f"{n_win}{agents}; at {side} the routed stages get sides {got} (the stride-2 convs round up: "
                f"ceil({side}/4), ceil({side}/8), ...). The nearest sizes that fit are {near}; multiples "
                f"of {32 * n_win} fit without rounding. Use one of those"
                + (
                    " (DeBiFormer has no auto_pad)"
                    if strides is not None
                    else ", or build the model with auto_pad=True (--auto-pad) to accept any size"
                )
            )


def is_backbone(model: nn.Module) -> bool:
    """Whether ``model`` is a dense backbone (several feature-map outputs) rather than a classifier."""
    return hasattr(model, "out_indices") and hasattr(model, "feature_info")


def output_names(model: nn.Module) -> list[str]:
    """The graph output names of ``model``: ``["logits"]``, or ``feat{i}`` per stage of a backbone."""
    if is_backbone(model):
        return [feature_output_name(i) for i in model.out_indices]
    return [OUTPUT_NAME]


def output_records(model: nn.Module, shapes: Sequence[list[int | str]]) -> list[dict[str, Any]]:
    """The manifest's ``outputs``: name, shape, dtype and, for a backbone, stage, channels and stride."""
    records: list[dict[str, Any]] = []
    for i, (name, shape) in enumerate(zip(output_names(model), shapes, strict=True)):
        record: dict[str, Any] = {"name": name, "shape": shape, "dtype": "float32"}
        if is_backbone(model):
            info = model.feature_info[i]
            record.update(stage=info["index"], channels=info["num_chs"], stride=info["reduction"])
        records.append(record)
    return records


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def check_dynamo_size(model: nn.Module, height: int, width: int) -> None:
    """Refuse a dynamo export of an ``auto_pad`` model at a size where a routed stage has one-token regions.

    ``torch.export`` specialises dimensions of size 1 (its 0/1 rule): an ``auto_pad`` graph traced
    with one-token regions does not run at other batch sizes (onnxruntime fails in a MatMul;
    measured with n_win 16 at 256x256). A graph exported at a larger size runs at any size,
    one-token regions included.
    """
    config = getattr(model, "config", {})
    n_win = config.get("n_win", 7)
    routed = [i for i, k in enumerate(config.get("topks", [])) if k > 0]
    for side, name in ((height, "height"), (width, "width")):
        sizes = _stage_sizes(side)
        narrow = [i for i in routed if -(-sizes[i] // n_win) < 2]
        if narrow:
            fits = next(
                s
                for s in range(side + 1, side + 64 * n_win)
                if all(-(-_stage_sizes(s)[i] // n_win) >= 2 for i in routed)
            )
            raise EdgeBiformerError(
                f"--img-size {name} {side} is too small for the dynamo exporter with n_win={n_win}: routed "
                f"stage {narrow[0] + 1} gets a side of {sizes[narrow[0]]}, regions one token wide, and "
                "torch.export fixes dimensions of size 1, so the graph would not run at other sizes. "
                f"Export at {name} {fits} or more (an auto_pad graph still takes any size at run time), "
                "or use --exporter torchscript"
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
    names = output_names(model)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            input_axes: dict[int, str] = {} if static_batch else {0: "batch"}
            if dynamic_hw:
                input_axes.update({2: "height", 3: "width"})
            dynamic_axes: dict[str, dict[int, str]] = {INPUT_NAME: input_axes}
            for name in names:
                dynamic_axes[name] = {} if static_batch else {0: "batch"}
                if dynamic_hw and name != OUTPUT_NAME:
                    dynamic_axes[name].update({2: f"{name}_height", 3: f"{name}_width"})
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=names,
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
                output_names=names,
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
    tolerance: Tolerance | None = None,
) -> Comparison:
    """Run the graph in onnxruntime (CPU) and PyTorch on each input; compare the outputs.

    Judged by :func:`edge_biformer.check.compare` with the ``export`` tolerance (by default), i.e.
    ``max|onnx - torch| / max|torch|`` over all inputs. A backbone's outputs are each judged on
    their own scale: the result holds the numbers of every output (``outputs``), its
    ``max_rel_diff`` is the largest of theirs, and it fails if any output fails.
    """
    import onnxruntime as ort

    tol = tolerance or TOLERANCES["export"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = output_names(model)
    graph_names = [o.name for o in session.get_outputs()]
    if graph_names != names:
        raise ExportError(f"{path}: the graph's outputs are {graph_names}, expected {names}")
    refs: dict[str, list] = {name: [] for name in names}
    outs: dict[str, list] = {name: [] for name in names}
    for x in inputs:
        with torch.no_grad():
            ref = [r.numpy() for r in _as_tuple(model(x))]
        try:
            out = session.run(names, {INPUT_NAME: x.numpy()})
        except Exception as err:  # onnxruntime's Fail/InvalidArgument: the graph cannot run this input
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(
                f"onnxruntime could not run the exported graph {path} on an input of shape "
                f"{tuple(x.shape)} ({first}); the exporter specialised a shape it should have kept "
                "dynamic. Try the other exporter (--exporter torchscript|dynamo), another --img-size or "
                "--static-batch"
            ) from None
        for name, o, r in zip(names, out, ref, strict=True):
            if o.shape != r.shape:
                raise ExportError(
                    f"{path}: output {name}: onnxruntime returned shape {o.shape}, PyTorch {r.shape}"
                )
            refs[name].append(r)
            outs[name].append(o)
    if names == [OUTPUT_NAME]:
        return compare(outs[OUTPUT_NAME], refs[OUTPUT_NAME], tol)
    # The numbers of all outputs together; the verdict is each output's on its own scale (a global
    # scale would let a small-valued output differ unnoticed), so only theirs are kept.
    result = compare(outs, refs, tol)
    result.failures, result.passed = [], True
    result.samples = sum(int(x.shape[0]) for x in inputs)
    for name in names:
        own = compare(outs[name], refs[name], tol)
        result.outputs[name] = {"max_abs_diff": own.max_abs_diff, "max_rel_diff": own.max_rel_diff}
        result.max_rel_diff = max(result.max_rel_diff, own.max_rel_diff)
        for failure in own.failures:
            result.fail(f"output {name}: {failure}")
    return result


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
    tolerance: float | None = None,
    seed: int = 0,
    provenance: dict[str, str] | None = None,
    target_tensorrt: str | None = None,
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
        tolerance: maximum ``max|onnx - torch| / max|torch|`` (default: the ``export`` entry of
            the tolerance table).
        seed: seed of the verification inputs.
        provenance: ``metadata_props`` entries for the graph (see :func:`edge_biformer.manifest.provenance`).
        target_tensorrt: the TensorRT whose ONNX parser must import the graph as is (:func:`for_tensorrt`).
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
    if exporter == "dynamo" and dynamic_hw:
        check_dynamo_size(model, height, width)
    output = Path(output)
    model = model.eval()
    require_finite_module(model, getattr(model, "variant", None) or type(model).__name__)
    generator = torch.Generator().manual_seed(seed)
    # torch.export specialises a dimension whose example size is 1, so a dynamic batch is traced at 2.
    example_batch = static_batch or (2 if exporter == "dynamo" else 1)
    example = torch.randn(example_batch, 3, height, width, generator=generator)
    tol = TOLERANCES["export"] if tolerance is None else replace(TOLERANCES["export"], max_rel=tolerance)

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
            graph_model = onnx.load(str(tmp))
            onnx.checker.check_model(graph_model)
            if target_tensorrt:
                graph_model = for_tensorrt(graph_model, target_tensorrt, tmp)
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
        graph = graph_model.graph
        result = ExportResult(
            path=str(output),
            input_shape=_onnx_shape(graph.input[0]),
            output_shape=_onnx_shape(graph.output[0]),
            output_shapes=[_onnx_shape(o) for o in graph.output],
            opset=opset,
            exporter=exporter,
            seconds=seconds,
        )
        if verify:
            batches = [static_batch] if static_batch else list(verify_batches)
            inputs = [torch.randn(b, 3, height, width, generator=generator) for b in batches]
            result.verification = verify_onnx(model, tmp, inputs, tol)
            result.verify_batches = batches
            if not result.verification.passed:
                raise ExportError(
                    f"the exported graph does not match PyTorch: {'; '.join(result.verification.failures)}; "
                    f"{output} was not written. Try the other exporter or report this as a bug"
                )
        if provenance:
            save_model(graph_model, tmp, provenance=provenance)
    return result


def for_tensorrt(model: onnx.ModelProto, target: str, path: Path) -> onnx.ModelProto:
    """The exported graph for the ONNX parser of TensorRT ``target``, written back to ``path``.

    TensorRT 8.5/8.6 import opsets up to 17, and 8.5 has no LayerNormalization: the graph is converted by
    :func:`edge_biformer.engine.onnx_compat.tensorrt8_graph` before the verification, which then checks
    the converted graph against PyTorch. Newer TensorRT takes the export as it is.
    """
    from edge_biformer.engine.onnx_compat import PARSER_MAX_OPSET, tensorrt8_graph
    from edge_biformer.engine.target import TensorRTTarget, parse_version

    version = TensorRTTarget(parse_version(target), "--target-trt").version
    if version >= (10, 0, 0):
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > PARSER_MAX_OPSET:
        raise EdgeBiformerError(
            f"--target-trt {target}: the ONNX parser of TensorRT 8 imports opsets up to {PARSER_MAX_OPSET}; "
            f"export with --opset {PARSER_MAX_OPSET} (the torchscript exporter)"
        )
    converted, notes = tensorrt8_graph(model, version)
    for note in notes:
        log(f"export for TensorRT {target}: {note}")
    onnx.save(converted, str(path))
    return converted


def run(options: ExportOptions, model: nn.Module | None = None) -> ExportResult:
    """The export stage: build the model (unless given), export, verify, write the side-car manifest.

    Prints one line per step. ``model`` is an already built module (the pipeline's, or a user's);
    without it ``options.model`` names a registry model built with ``weights`` and ``overrides``.
    """
    if options.output is None:
        raise ValueError("the export stage needs options.output")
    output = check_onnx_output(options.output)
    if model is None:
        model = build_model(options)
    record = manifests.make_manifest(
        output,
        kind="onnx",
        stage="export",
        model=model_record(model, options.weights),
        options=options,
        graph="plain",
        model_kind="backbone" if is_backbone(model) else "classifier",
        opset=options.opset,
        exporter=options.exporter,
    )
    with stage(f"export onnx ({options.exporter})") as st:
        result = export_onnx(
            model,
            output,
            img_size=options.img_size,
            opset=options.opset,
            static_batch=options.static_batch,
            exporter=options.exporter,
            verify=options.verify,
            verify_batches=options.verify_batches,
            tolerance=options.tolerance,
            seed=options.seed,
            provenance=manifests.provenance(record),
            target_tensorrt=options.target_tensorrt,
        )
        st.output = output
        st.details.append(f"input {result.input_shape} opset {result.opset}")
    if result.verification:
        v = result.verification
        log(
            f"verify onnxruntime vs pytorch  batches {result.verify_batches}  "
            f"max abs diff {v.max_abs_diff:.3e}  max rel diff {v.max_rel_diff:.3e}  "
            f"(tolerance {v.limits['max_rel']:.0e}): PASS"
        )
        if is_backbone(model):
            log(
                "  per output: "
                + ", ".join(f"{name} {o['max_rel_diff']:.3e}" for name, o in v.outputs.items())
            )
    outputs = output_records(model, result.output_shapes)
    record.update(
        input={"name": INPUT_NAME, "shape": result.input_shape, "dtype": "float32"},
        # a classifier's one output; a backbone has several: see outputs
        output=None if is_backbone(model) else outputs[0],
        outputs=outputs,
        verification=result.verification_record(),
        # The models of the registry are evaluated with the official transform.
        preprocess=IMAGENET.to_dict(),
    )
    result.manifest = str(manifests.write_manifest(manifests.manifest_path(output), record))
    log(f"manifest -> {result.manifest}")
    return result


def build_model(options: ExportOptions) -> nn.Module:
    """The registry model ``options.model`` with its weights and overrides; one log line.

    Raises:
        EdgeBiformerError: no model name, an unknown name or argument, a checkpoint that does not
            fit, or an input size the model cannot run at.
    """
    from edge_biformer.models import create_model

    if not options.model:
        raise EdgeBiformerError("the export needs a model name (--model) or a module")
    with stage(f"build {options.model}") as st:
        if options.weights:
            model = create_model(options.model, weights=options.weights, **options.overrides)
        else:  # a reproducible random initialisation: the same graph, calibration and report each run
            with torch.random.fork_rng():
                torch.manual_seed(options.seed)
                model = create_model(options.model, **options.overrides)
        require_finite_module(
            model, f"{options.model} with the weights {options.weights}" if options.weights else options.model
        )
        check_input_size(model, *image_hw(options.img_size))
        st.details.append(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
        st.details.append(
            f"weights {options.weights}"
            if options.weights
            else f"random weights (seed {options.seed}, no --weights)"
        )
    return model


def model_record(model: nn.Module, weights: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The manifest's model fields of a built model (its registry name, configuration, weights)."""
    return {
        "model": getattr(model, "variant", None),
        "config": getattr(model, "config", None),
        "weights": str(Path(weights).resolve()) if weights else None,
        "weights_sha256": sha256_file(weights) if weights else None,
        "random_weights": not weights and getattr(model, "weights_source", "") is None,
    }
