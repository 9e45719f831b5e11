"""``edge-biformer build``: the stages of :data:`edge_biformer.stages.STAGES`, one after the other.

:func:`run` is a short loop over :func:`edge_biformer.stages.plan`: each step fills the source and
output of its stage's options (:class:`BuildOptions` holds one options object per stage) and calls
that stage's ``run()``, the very function its own subcommand calls. Every stage writes its
artifact (and its side-car manifest) atomically into the output directory, so an interrupted run
leaves only complete files, and no ``manifest.json``, which is written last. Where TensorRT is
absent the engine stage prints the commands that finish the build on the target.

Output directory (``precision`` = fp32 | fp16 | int8)::

    model.onnx                      plain export (float32), verified against PyTorch
    model.<precision>.onnx          fp16: mixed FP16; int8: Q/DQ (calibrated on the CPU)
    model.<precision>.plugin.onnx   BRA blocks rewritten to the TensorRT plugin op
    model.<precision>.engine        TensorRT plan (only where TensorRT and a GPU are present)
    model.int8.calib.cache          INT8 activation ranges (TensorRT cache format), reused
    *.manifest.json                 the side-car manifest of each artifact
    check/inputs.json               Polygraphy input JSON (the check inputs)
    check/reference.json            Polygraphy RunResults of FP32 PyTorch
    report.md, report.json          accuracy check
    manifest.json                   what was built, from what, with which tools
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_biformer import check, engine, export, quantize, rewrite, stages
from edge_biformer import manifest as manifests
from edge_biformer.calib import DataSpec, load_data
from edge_biformer.calib.dataset import default_calibration
from edge_biformer.calib.demo import DEMO_SOURCE
from edge_biformer.calib.preprocess import IMAGENET, Preprocess, recorded_preprocess
from edge_biformer.check import TOLERANCES
from edge_biformer.check.report import CheckReport
from edge_biformer.check.stage import CheckOptions
from edge_biformer.engine.options import EngineOptions
from edge_biformer.engine.stage import PLUGIN_LIBRARY_NAME
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.export import ExportOptions
from edge_biformer.onnx_io import GraphInterface, graph_interface, graph_kind, graph_precision
from edge_biformer.quantize.stage import QuantizeOptions
from edge_biformer.rewrite.stage import RewriteOptions
from edge_biformer.utils import log, require_writable_dir, sha256_file

__all__ = ["BuildOptions", "BuildResult", "run"]


@dataclass
class BuildOptions:
    """A build: the precision, the output directory, where to start, and one options object per stage.

    Start from PyTorch (``export`` names the model) or from ``from_onnx`` (a plain export, a quantized
    or a rewritten graph). ``rewrite``/``check`` ``None`` skip those stages. The pipeline fills each
    stage's source and output; ``quantize.calib`` and ``check.data`` may be
    :class:`edge_biformer.calib.DataSpec` (loaded at the graph's input size, once).
    """

    precision: str
    output: Path
    engine: EngineOptions
    export: ExportOptions | None = None
    from_onnx: Path | None = None
    img_size: tuple[int, int] | None = None
    quantize: QuantizeOptions | None = None
    rewrite: RewriteOptions | None = field(default_factory=RewriteOptions)
    check: CheckOptions | None = None
    #: How images become inputs (calibration, check): ``None`` takes the recipe the source graph's
    #: manifest records, else ``imagenet`` (:data:`edge_biformer.calib.preprocess.PRESETS`).
    preprocess: Preprocess | None = None


@dataclass
class BuildResult:
    """Paths and facts of a finished build."""

    manifest: dict[str, Any]
    manifest_path: Path
    report: CheckReport | None = None

    @property
    def check_passed(self) -> bool:
        """True when there was no check or it passed."""
        return self.report is None or self.report.passed


@dataclass
class _Build:
    """What the steps share: the options, the manifest being written, the current artifact."""

    options: BuildOptions
    manifest: dict[str, Any]
    current: Path | None = None
    kind: str | None = None
    model: Any = None
    img_size: tuple[int, int] | None = None
    calib: Any = None
    check_data: Any = None
    report: CheckReport | None = None
    interface: GraphInterface | None = None
    preprocess: Preprocess = IMAGENET

    @property
    def out(self) -> Path:
        return self.options.output

    def artifact(self, stage_name: str) -> Path:
        return self.out / stages.artifact_name(stage_name, self.options.precision)

    def record(self, key: str, path: Path) -> None:
        self.manifest["artifacts"][key] = path.name if path.parent == self.out else str(path)


def _export(b: _Build) -> None:
    opts = replace(b.options.export, output=b.artifact("export"), img_size=b.img_size)
    b.model = b.model or export.build_model(opts)
    result = export.run(opts, model=b.model)
    b.manifest["config"] = getattr(b.model, "config", None)
    b.manifest["stages"]["export"] = {
        "path": Path(result.path).name,
        "opset": result.opset,
        "verification": result.verification_record(),
    }
    b.record("onnx", Path(result.path))
    b.current, b.kind = Path(result.path), "plain"
    _adopt_interface(b, b.current)


def _adopt_interface(b: _Build, path: Path, iface: GraphInterface | None = None) -> None:
    """Input, outputs and engine profile from the graph itself: names, channels, static dims."""
    iface = iface or graph_interface(path)
    b.interface = iface
    b.manifest.update(iface.to_manifest())
    engine_opts = b.options.engine
    batch = replace(engine_opts.batch, input_name=iface.input.name, channels=iface.channels)
    n = iface.static_batch
    if n is not None:
        static = iface.image_size is not None
        if (batch.min, batch.opt, batch.max) != (n, n, n):
            log(
                f"{path.name}: input '{iface.input.name}' has a static batch of {n}: the engine takes "
                f"batch {n} " + ("and no optimization profile (every input dim is static)" if static else "")
                + "; export with a dynamic batch axis for --batch MIN,OPT,MAX"
            )  # fmt: skip
        batch = replace(batch, min=n, opt=n, max=n, static=static)
    b.options = replace(b.options, engine=replace(engine_opts, batch=batch))
    if b.img_size is not None:
        b.manifest["profile"] = {**asdict(batch), "shapes": batch.shapes(b.img_size)}


def _quantize(b: _Build) -> None:
    p = b.options.precision
    template = b.options.quantize or QuantizeOptions(p)
    cache = template.cache or (b.out / "model.int8.calib.cache" if p == "int8" else None)
    opts = replace(
        template, precision=p, source=b.current, output=b.artifact("quantize"), calib=b.calib, cache=cache
    )
    result = quantize.run(opts)
    b.manifest["stages"]["quantize"] = result.to_dict()
    b.record("quantized", opts.output)
    if p == "int8" and cache is not None:
        b.record("calib_cache", Path(cache))
    b.current, b.kind = opts.output, stages.PRECISIONS[p].graph


def _rewrite(b: _Build) -> None:
    assert b.options.rewrite is not None
    opts = replace(b.options.rewrite, source=b.current, output=b.artifact("rewrite"))
    report = rewrite.run(opts)
    b.manifest["stages"]["rewrite"] = {
        "blocks": len(report.blocks),
        "output": str(opts.output),
        "verified": report.output_check is not None and report.output_check.passed,
    }
    b.record("plugin_onnx", opts.output)
    b.current, b.kind = opts.output, "plugin"


def _engine(b: _Build) -> None:
    p = b.options.precision
    opts = replace(
        b.options.engine, precision=p, img_size=b.img_size, source=b.current, output=b.artifact("engine")
    )
    opts.calib = b.calib if opts.implicit_int8 else None
    record = engine.run(opts)
    b.manifest["plugin_library"] = record.plugin_library
    b.manifest["engine"] = {**record.to_manifest(), "build_command": _target_build_command(b, record)}
    if record.built:
        b.record("engine", Path(record.path))
        return
    if record.target is not None:
        t = record.target
        typing = "strongly" if t.strongly_typed else "weakly"
        log(f"target: {t.label()}: {t.plugin_interface}, {typing} typed")
    if opts.implicit_int8:
        # trtexec has no calibrator of its own data: without our cache it would calibrate on noise.
        log("build it on the target GPU with (it calibrates there and writes the calibration cache):")
        print(f"  {b.manifest['engine']['build_command']}", flush=True)
        log("later builds can reuse that cache with trtexec:")
    else:
        log("build it on the target GPU with either of:")
        print(f"  {b.manifest['engine']['build_command']}", flush=True)
    for family, command in record.commands.items():
        # One line per TensorRT major when the target is unknown: trtexec exits on options it lacks.
        label = f"  # TensorRT {family}" if record.target is None and "#" not in command else ""
        print(f"  {command}{label}", flush=True)
    if record.target is None:
        log(
            "TensorRT 8.5/8.6 (JetPack 5.1/6.0): add --target-trt 8.5 or 8.6 (or run the first command on "
            "the Jetson) for the graph their ONNX parser takes and its trtexec line (docs/jetson.md)"
        )


def _check(b: _Build) -> None:
    assert b.options.check is not None
    opts = replace(b.options.check, outdir=b.out, data=b.check_data, model=b.model)
    try:
        b.report = check.run(opts, b.manifest)
    except check.NoReferenceError as err:
        # The artifacts are complete; only their accuracy is unknown. Say so loudly, and in the manifest.
        log(f"WARNING: accuracy check skipped: {err}")
        b.manifest["check"] = {"skipped": str(err)}


#: One step per stage of :data:`edge_biformer.stages.STAGES`: fill its options, call its ``run()``.
_STEPS: dict[str, Callable[[_Build], None]] = {
    "export": _export,
    "quantize": _quantize,
    "rewrite": _rewrite,
    "engine": _engine,
    "check": _check,
}


def _target_build_command(b: _Build, record: Any) -> str:
    """The ``edge-biformer build --from-onnx`` line that finishes this build on the target."""
    o, e = b.options, b.options.engine
    args = ["edge-biformer", "build", "--from-onnx", str(b.current), "--precision", o.precision]
    args += ["--batch", f"{e.batch.min},{e.batch.opt},{e.batch.max}", "--output", str(o.output)]
    args += ["--plugin-library", record.plugin_library["path"] or f"/path/to/{PLUGIN_LIBRARY_NAME}"]
    if e.workspace_mib:
        args += ["--workspace", str(e.workspace_mib)]
    if e.opt_level is not None:
        args += ["--opt-level", str(e.opt_level)]
    if e.dla_core is not None:
        args += ["--dla-core", str(e.dla_core)]
    if e.target_tensorrt:
        args += ["--target-trt", e.target_tensorrt]
    if o.rewrite is None and b.kind != "plugin":
        args += ["--no-rewrite"]  # as asked here: the target must not rewrite what this build kept
    if e.implicit_int8:
        # The implicit calibrator runs on the target: it needs the images there too.
        source = getattr(b.calib, "source", None)
        args += ["--int8-mode", "calibrator", "--calib-data", str(source or "/path/to/calibration/images")]
    return shlex.join(args)


def _start_from_onnx(b: _Build) -> None:
    """Take ``--from-onnx``: its kind must fit the precision; its export manifest names the model."""
    source = Path(b.options.from_onnx)  # type: ignore[arg-type]
    if not source.is_file():
        raise EdgeBiformerError(f"--from-onnx {source} does not exist")
    kind, precision = graph_kind(source), graph_precision(source)
    fits = {precision} if kind != "plain" else set(stages.PRECISIONS)
    if kind == "plugin" and precision == "fp32" and b.options.engine.int8_mode == "calibrator":
        fits.add("int8")  # TensorRT's implicit calibrator quantizes the float32 rewritten graph
    if b.options.precision not in fits:
        raise EdgeBiformerError(
            f"--from-onnx {source} is already a {kind} graph of precision {precision}, which fits "
            f"--precision {precision}, not {b.options.precision}: build it with --precision {precision}, "
            f"or start from the plain export (model.onnx) to build {b.options.precision}"
        )
    b.current, b.kind = source, kind
    b.manifest["from_onnx"] = {"path": str(source), "sha256": sha256_file(source), "graph": kind}
    b.manifest["source"] = manifests.source_record(source)
    fields = manifests.model_fields(b.manifest["source"]["manifest"])
    # Random weights (no --weights at export) cannot be rebuilt, and a moved checkpoint is not at
    # hand: the reference would not be the exported model, so the check asks for --model/--weights.
    b.manifest["random_weights"] = fields.get("random_weights")
    if fields.get("weights") and Path(fields["weights"]).is_file():
        b.manifest.update(fields)
        log(
            f"from-onnx: model {fields['model']} and its weights taken from {manifests.manifest_path(source)}"
        )
    iface = graph_interface(source)
    b.img_size = iface.image_size or b.options.img_size or _exported_size(b.manifest)
    if kind == "plain":
        b.record("onnx", source)
    elif kind == "plugin":  # checked in cpu_session like a graph this build rewrote
        b.manifest["artifacts"]["plugin_onnx"] = str(source.resolve())
    else:
        b.manifest["artifacts"]["quantized"] = str(source.resolve())
    log(f"from-onnx {source}: {kind} graph")
    if b.img_size is not None:
        _adopt_interface(b, source, iface)
    recorded = recorded_preprocess(b.manifest)
    if b.options.preprocess is None and recorded is not None:
        b.preprocess = recorded
    if kind == "plain" and b.options.rewrite is not None and not _has_bra(source):
        log(
            f"{source.name} has no BRA block (no top-k routed attention found): a plain TensorRT build, "
            "without the plugin"
        )
        b.manifest["note"] = "no BRA block: built without the plugin rewrite"
        b.options = replace(b.options, rewrite=None)


def _exported_size(manifest: dict[str, Any]) -> tuple[int, int] | None:
    """The size a dynamic-H/W graph was exported at (:func:`manifests.exported_img_size`), said."""
    size = manifests.exported_img_size(manifest)
    if size is not None:
        log(
            f"{manifest['from_onnx']['path']} has a dynamic H/W input: building for {size[0]}x{size[1]}, the "
            "size it was exported at (--img-size for another)"
        )
    return size


def _has_bra(path: Path) -> bool:
    """Whether the matcher finds any BRA block (complete or partial) in a graph."""
    from edge_biformer.rewrite.stage import analyse_model, load_onnx

    _, _, found = analyse_model(load_onnx(path))
    return bool(found.matches or found.partial)


def _load_data(b: _Build, plan: list[stages.Stage]) -> None:
    """The calibration and check data, loaded once at the input size (the check may reuse the first)."""
    o = b.options
    quantizes_int8 = o.precision == "int8" and (
        any(s.name == "quantize" for s in plan) or o.engine.int8_mode == "calibrator"
    )
    spec = o.quantize.calib if o.quantize is not None else None
    if quantizes_int8 and spec is None:
        spec = default_calibration()
    spec = _with_recipe(b, spec)
    if isinstance(spec, DataSpec):
        b.calib = load_data(spec, b.img_size, "calibration data")  # type: ignore[arg-type]
    else:
        b.calib = spec
    if b.calib is not None:
        b.manifest["calibration"] = b.calib.summary()
    check = o.check
    data = _with_recipe(b, check.data if check is not None else None)
    if isinstance(data, DataSpec):
        data = load_data(data, b.img_size, "check data", batch_size=o.engine.batch.opt)  # type: ignore[arg-type]
    saved_reference = o.from_onnx is not None and (o.output / "check" / "reference.json").is_file()
    if data is None and check is not None and not saved_reference:
        if b.calib is not None:
            data = b.calib
            log("check: using the calibration images as check inputs (pass --eval-data for held-out images)")
        else:
            data = _recorded_calibration(b, o.engine.batch.opt)
    b.check_data = data


def _with_recipe(b: _Build, spec: Any) -> Any:
    """A data spec with the build's preprocessing and the graph's channel count."""
    if not isinstance(spec, DataSpec):
        return spec
    return replace(spec, preprocess=spec.preprocess or b.preprocess, channels=b.options.engine.batch.channels)


def _recorded_calibration(b: _Build, batch_size: int) -> Any:
    """The calibration images a ``--from-onnx`` graph was quantized with, as check inputs.

    An INT8 graph judged on noise is judged on inputs it was never calibrated for; the images its
    manifests record (where they still exist) are what it was made for.
    """
    for record in manifests.sources(b.manifest):
        m = record.get("manifest") or {}
        summary = (m.get("quantize") or {}).get("calib_summary") or m.get("calibration")
        if not summary or summary.get("kind") == "synthetic":
            continue
        path = DEMO_SOURCE if summary.get("kind") == "demo" else summary.get("path") or summary.get("source")
        if not path or not (path == DEMO_SOURCE or Path(path).exists()):
            log(f"check: the calibration data {path} recorded in {record.get('path')}'s manifest is gone")
            return None
        log(f"check: using the calibration data recorded in {record.get('path')}'s manifest as check inputs")
        spec = _with_recipe(b, DataSpec(str(path), seed=int(summary.get("seed") or 0)))
        return load_data(spec, b.img_size, "check data", batch_size=batch_size)  # type: ignore[arg-type]
    return None


def run(options: BuildOptions, model: Any = None) -> BuildResult:
    """Run the stages for ``options``; returns the manifest and the check report.

    ``model``: an already built FP32 PyTorch module to export (instead of ``options.export.model``).
    """
    if options.precision not in stages.PRECISIONS:
        raise EdgeBiformerError(f"--precision must be one of {', '.join(stages.PRECISIONS)}")
    if (options.export is None) == (options.from_onnx is None):
        raise EdgeBiformerError(
            "build needs --model NAME (with --weights PATH) or --from-onnx PATH, not both"
        )
    out = Path(options.output)
    if out.exists() and not out.is_dir():
        raise EdgeBiformerError(f"--output {out} is a file; give a directory for the build artifacts")
    require_writable_dir(out)
    if options.export is not None and options.export.weights:
        from edge_biformer.models.checkpoint import require_checkpoint_file

        require_checkpoint_file(options.export.weights)  # before anything is created or hashed
    b = _Build(options, {"precision": options.precision, "artifacts": {}, "stages": {}}, model=model)
    b.preprocess = options.preprocess or IMAGENET
    if options.export is not None:
        weights = options.export.weights
        b.manifest.update(
            model=options.export.model,
            config=None,
            weights=str(Path(weights).resolve()) if weights else None,
            weights_sha256=sha256_file(weights) if weights else None,
            # built here without a checkpoint (a module the caller gives keeps its own record)
            random_weights=not weights and (model is None or getattr(model, "weights_source", "") is None),
        )
        b.img_size = options.img_size or options.export.img_size
        start = None
    else:
        out.mkdir(parents=True, exist_ok=True)
        _start_from_onnx(b)
        start = b.kind
    if b.img_size is None:
        raise EdgeBiformerError(f"{options.from_onnx} has a dynamic H/W input: pass --img-size")
    plan = stages.plan(
        options.precision,
        start,
        quantize=options.engine.int8_mode != "calibrator",
        rewrite=b.options.rewrite is not None and start != "plugin",
        check=options.check is not None,
    )
    how = (
        "given"
        if options.preprocess is not None
        else ("recorded" if b.preprocess is not IMAGENET else "default")
    )
    log(f"preprocess ({how}): {b.preprocess.describe(b.img_size)}")
    b.manifest["preprocess"] = b.preprocess.to_dict()
    _load_data(b, plan)
    out.mkdir(parents=True, exist_ok=True)
    batch = b.options.engine.batch
    b.manifest["img_size"] = list(b.img_size)
    b.manifest["profile"] = {**asdict(batch), "shapes": batch.shapes(b.img_size)}
    b.manifest.setdefault(
        "input", {"name": batch.input_name, "dtype": "float32", "shape": ["N", 3, *b.img_size]}
    )
    b.manifest["tolerances"] = {p.name: TOLERANCES[p.tolerance].to_dict() for p in stages.PRECISIONS.values()}
    for step in plan:
        _STEPS[step.name](b)
    manifest = manifests.make_manifest(
        out,
        kind="build",
        stage="build",
        model={k: b.manifest.pop(k, None) for k in manifests.MODEL_FIELDS},
        source=b.manifest.pop("source", None),
        options=b.options,
        **b.manifest,
    )
    path = manifests.write_manifest(out / "manifest.json", manifest)
    return BuildResult(manifest=manifest, manifest_path=path, report=b.report)
