"""The ``build`` pipeline: export -> quantize -> rewrite -> engine -> check, with a manifest.

Every stage writes its artifact atomically into the output directory, so an interrupted run leaves
only complete files (and no ``manifest.json``, which is written last). Stages that need the target
(the TensorRT engine) are skipped with the exact commands to run there when TensorRT is absent.

Output directory (``precision`` = fp32 | fp16 | int8)::

    model.onnx                      plain export (float32), verified against PyTorch
    model.<precision>.onnx          fp16: mixed FP16; int8: Q/DQ (calibrated on the CPU)
    model.<precision>.plugin.onnx   BRA blocks rewritten to the TensorRT plugin op
    model.<precision>.engine        TensorRT plan (only where TensorRT and a GPU are present)
    model.int8.calib.cache          INT8 activation ranges (TensorRT cache format), reused
    check/inputs.json               Polygraphy input JSON (the check inputs)
    check/reference.json            Polygraphy RunResults of FP32 PyTorch
    report.md, report.json          accuracy check
    manifest.json                   what was built, from what, with which tools
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer import __version__
from edge_biformer.check import TOLERANCES, Target
from edge_biformer.engine import BatchProfile, EngineOptions
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import atomic_output, log, sha256_file, stage

PRECISIONS = ("fp32", "fp16", "int8")
PLUGIN_LIBRARY_NAME = "libedge_biformer_plugins.so"


@dataclass
class BuildConfig:
    """Everything ``edge-biformer build`` was asked to do."""

    precision: str
    output: Path
    img_size: tuple[int, int] | None = None
    batch: BatchProfile = field(default_factory=lambda: BatchProfile(1, 8, 32))
    model_name: str | None = None
    weights: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    from_onnx: str | None = None
    opset: int = 17
    calib: Any = None  # CalibrationData (int8)
    calib_method: str = "entropy"
    calib_cache: str | None = None
    exclude: Sequence[str] = ()
    high_precision: str = "fp16"
    int8_mode: str = "qdq"
    workspace_mib: int | None = None
    opt_level: int | None = None
    timing_cache: str | None = None
    dla_core: int | None = None
    plugin_library: str | None = None
    check: bool = True
    check_data: Any = None  # CalibrationData used for the check (labels optional)
    check_num: int = 64
    rewrite: bool = True


@dataclass
class BuildResult:
    """Paths and facts of a finished build."""

    manifest: dict[str, Any]
    manifest_path: Path
    report: Any = None  # CheckReport

    @property
    def check_passed(self) -> bool:
        """True when there was no check or it passed."""
        return self.report is None or self.report.passed


def plugin_library(explicit: str | None) -> tuple[str | None, str]:
    """(path or ``None``, how it was found) of the plugin library."""
    if explicit:
        if not Path(explicit).is_file():
            raise EdgeBiformerError(f"--plugin-library {explicit} does not exist")
        return str(Path(explicit).resolve()), "--plugin-library"
    from edge_biformer import plugins

    try:
        return str(plugins.library_path()), "edge_biformer.plugins.library_path()"
    except EdgeBiformerError as err:
        return None, str(err)


def rewrite_step(source: Path, output: Path, verify: bool) -> dict[str, Any]:
    """Rewrite the BRA blocks of ``source`` into plugin nodes.

    ``verify`` runs the rewrite's own comparison with ``source`` in onnxruntime (every block, then
    the whole graph). The build asks for it on float32 graphs only. In FP16 and INT8 graphs the
    original attention runs in float16 in onnxruntime while the plugin op computes in float32, so
    the whole-graph difference measures the original's float16 error, not the rewrite (0.0225
    relative on the trained reduced model's INT8 graph, over the rewrite's 2e-2 bound). Those
    graphs are judged by the accuracy check against FP32 PyTorch instead.
    """
    from edge_biformer.surgery import rewrite_onnx

    report = rewrite_onnx(source, output, verify=verify)
    return {"blocks": len(report.blocks), "output": str(output), "verified": verify}


def _tool_versions() -> dict[str, str | None]:
    import onnx
    import onnxruntime
    import polygraphy
    import torch

    from edge_biformer import engine

    versions: dict[str, str | None] = {
        "edge_biformer": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "polygraphy": polygraphy.__version__,
        "tensorrt": None,
        "modelopt": None,
    }
    v = engine.tensorrt_version()
    versions["tensorrt"] = ".".join(map(str, v)) if v else None
    try:
        import modelopt

        versions["modelopt"] = modelopt.__version__
    except ImportError:
        pass
    return versions


def _check_batches(
    data: Any, profile: BatchProfile, limit: int
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Split the check tensors into batches the engine profile accepts (size ``opt``, >= ``min``)."""
    tensors = data.tensors[:limit]
    labels = data.labels[:limit] if data.labels is not None else None
    size = max(profile.min, min(profile.opt, profile.max))
    batches = [tensors[i : i + size] for i in range(0, len(tensors), size)]
    if batches and batches[-1].shape[0] < profile.min:
        dropped = batches.pop().shape[0]
        log(f"check: last {dropped} samples dropped (fewer than the profile's min batch {profile.min})")
        if labels is not None:
            labels = labels[: len(labels) - dropped]
    if not batches:
        raise EdgeBiformerError(
            f"the check data has {len(tensors)} samples, fewer than the profile's minimum batch {profile.min}"
        )
    return batches, labels


def run_build(cfg: BuildConfig, model_factory: Callable[[], Any] | None = None) -> BuildResult:
    """Run the pipeline of :class:`BuildConfig`; returns the manifest and the check report."""
    from edge_biformer import engine, quantize

    if cfg.precision not in PRECISIONS:
        raise EdgeBiformerError(f"--precision must be one of {', '.join(PRECISIONS)}")
    out = cfg.output
    if out.exists() and not out.is_dir():
        raise EdgeBiformerError(f"--output {out} is a file; give a directory for the build artifacts")
    if cfg.weights:
        from edge_biformer.models.checkpoint import require_checkpoint_file

        require_checkpoint_file(cfg.weights)  # before anything is created or hashed
    out.mkdir(parents=True, exist_ok=True)
    prec = cfg.precision
    manifest: dict[str, Any] = {
        "kind": "edge-biformer build",
        "precision": prec,
        "model": cfg.model_name,
        "config": None,
        "weights": str(Path(cfg.weights).resolve()) if cfg.weights else None,
        "weights_sha256": sha256_file(cfg.weights) if cfg.weights else None,
        "artifacts": {},
        "stages": {},
    }
    model = None
    plain: Path | None = None
    current: Path
    kind = "plain"

    # 1. Export (or take the given ONNX).
    if cfg.from_onnx:
        source = Path(cfg.from_onnx)
        if not source.is_file():
            raise EdgeBiformerError(f"--from-onnx {source} does not exist")
        kind = quantize.graph_kind(source)
        expected = {"qdq": ("int8",), "fp16": ("fp16",)}.get(kind)
        if expected and prec not in expected:
            raise EdgeBiformerError(
                f"--from-onnx {source} is already a {kind} graph, which fits --precision {expected[0]}, "
                f"not {prec}: start from the plain export (model.onnx) to build {prec}"
            )
        current = source
        manifest["from_onnx"] = {"path": str(source), "sha256": sha256_file(source), "graph": kind}
        _adopt_export_manifest(manifest, source)
        img_size = quantize.onnx_img_size(source) or cfg.img_size
        if kind == "plain":
            plain = source
        elif kind == "plugin":  # checked in cpu_session like a graph this build rewrote
            manifest["artifacts"]["plugin_onnx"] = str(source.resolve())
        else:
            manifest["artifacts"]["quantized"] = str(source.resolve())
        log(f"from-onnx {source}: {kind} graph")
    else:
        if model_factory is None:
            raise EdgeBiformerError("build needs --model (or --from-onnx)")
        from edge_biformer.export import export_onnx

        img_size = cfg.img_size or (224, 224)
        with stage(f"build {cfg.model_name}") as st:
            model = model_factory()
            st.details.append(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
        plain = out / "model.onnx"
        with stage("export onnx") as st:
            result = export_onnx(model, plain, img_size=img_size, opset=cfg.opset)
            st.output = plain
            if result.verification:
                st.details.append(f"verified vs pytorch: max rel diff {result.verification.max_rel_diff:.2e}")
        manifest["config"] = getattr(model, "config", None)
        manifest["stages"]["export"] = {
            "path": plain.name,
            "opset": result.opset,
            "verification": asdict(result.verification) if result.verification else None,
        }
        current = plain
    if img_size is None:
        raise EdgeBiformerError(f"{current} has a dynamic H/W input: pass --img-size")
    manifest["img_size"] = list(img_size)
    manifest["profile"] = {**asdict(cfg.batch), "shapes": cfg.batch.shapes(img_size)}
    manifest["input"] = {"name": "input", "dtype": "float32", "shape": ["N", 3, *img_size]}
    if plain is not None:
        manifest["artifacts"]["onnx"] = plain.name if plain.parent == out else str(plain)

    # 2. Precision conversion (before the rewrite: calibration runs in onnxruntime on plain ops).
    if prec != "fp32" and kind == "plain":
        target = out / f"model.{prec}.onnx"
        if prec == "int8" and cfg.int8_mode == "qdq":
            if cfg.calib is None:
                raise EdgeBiformerError(
                    "--precision int8 needs calibration data: pass --calib-data with a folder of a few "
                    "hundred representative images (or a .txt list / .npy of preprocessed tensors)"
                )
            cache = Path(cfg.calib_cache) if cfg.calib_cache else out / "model.int8.calib.cache"
            with stage(f"quantize int8 ({cfg.calib_method})") as st:
                qres = quantize.quantize_int8(
                    current,
                    target,
                    cfg.calib,
                    method=cfg.calib_method,
                    exclude=cfg.exclude,
                    high_precision=cfg.high_precision,
                    cache=cache,
                )
                st.output = target
                st.details.append(
                    f"{qres.quantized_nodes} nodes int8, {qres.qdq_pairs} Q/DQ, calibration cache "
                    f"{'reused' if qres.calib_cache_reused else 'written'}"
                )
            manifest["artifacts"]["calib_cache"] = cache.name if cache.parent == out else str(cache)
        elif prec == "int8":
            qres = None  # implicit INT8 (TensorRT < 10.1): the calibrator runs at engine build
            target = current
        else:
            with stage("quantize fp16") as st:
                qres = quantize.quantize_fp16(current, target, keep_fp32=cfg.exclude)
                st.output = target
                st.details.append(f"{qres.fp32_nodes} nodes kept in fp32")
        if qres is not None:
            manifest["stages"]["quantize"] = qres.to_dict()
            manifest["artifacts"]["quantized"] = target.name
            current = target
            kind = "qdq" if prec == "int8" else "fp16"
    if cfg.calib is not None:
        manifest["calibration"] = cfg.calib.summary()

    # 3. Graph rewrite to the plugin op.
    if kind != "plugin" and cfg.rewrite:
        rewritten = out / f"model.{prec}.plugin.onnx"
        with stage("rewrite bra -> plugin") as st:
            info = rewrite_step(current, rewritten, verify=kind == "plain")
            st.output = rewritten
            st.details.append(f"{info['blocks']} BRA blocks")
        manifest["stages"]["rewrite"] = info
        manifest["artifacts"]["plugin_onnx"] = rewritten.name
        current = rewritten
        kind = "plugin"

    # 4. Engine.
    lib, lib_how = plugin_library(cfg.plugin_library)
    manifest["plugin_library"] = {
        "path": lib,
        "sha256": sha256_file(lib) if lib else None,
        "found_by": lib_how,
        "needed": kind == "plugin",
    }
    engine_path = out / f"model.{prec}.engine"
    options = EngineOptions(
        precision=prec,
        img_size=img_size,
        batch=cfg.batch,
        workspace_mib=cfg.workspace_mib,
        opt_level=cfg.opt_level,
        timing_cache=cfg.timing_cache,
        dla_core=cfg.dla_core,
        plugin_library=(lib or f"/path/to/{PLUGIN_LIBRARY_NAME}") if kind == "plugin" else None,
        int8_mode=cfg.int8_mode,
        calib_cache=str(out / "model.int8.trt_calib.cache") if cfg.int8_mode == "calibrator" else None,
        calib_method=cfg.calib_method,
        calib_key=(
            f"{sha256_file(current)}:{cfg.calib.sha256}:{cfg.calib_method}:{cfg.batch.opt}"
            if cfg.int8_mode == "calibrator" and cfg.calib is not None
            else None
        ),
    )
    trtexec = engine.trtexec_command(current, engine_path, options)
    target_cmd = _target_build_command(cfg, current, lib)
    manifest["engine"] = {"path": None, "built": False, "trtexec": trtexec, "build_command": target_cmd}
    if engine.tensorrt_available():
        if kind == "plugin" and lib is None:
            raise EdgeBiformerError(
                f"the engine needs the plugin library ({lib_how}); build it or pass --plugin-library"
            )
        with stage("tensorrt engine") as st:
            calib_batches = (lambda: cfg.calib.batches()) if cfg.calib is not None else None
            eres = engine.build_engine(current, engine_path, options, calib_batches=calib_batches)
            st.output = engine_path
            st.details.append(f"TensorRT {eres.tensorrt_version}, strongly typed {eres.strongly_typed}")
        manifest["engine"].update(
            {
                "path": engine_path.name,
                "built": True,
                **{k: v for k, v in asdict(eres).items() if k != "path"},
            }
        )
        manifest["artifacts"]["engine"] = engine_path.name
    else:
        reason = engine.missing_reason()
        manifest["engine"]["reason"] = reason
        log(f"engine: not built here. {reason}.")
        if cfg.precision == "int8" and cfg.int8_mode == "calibrator":
            # trtexec has no calibrator of its own data: without our cache it would calibrate on noise.
            log("build it on the target GPU with (it calibrates there and writes the calibration cache):")
            print(f"  {target_cmd}", flush=True)
            log("later builds can reuse that cache with trtexec:")
            print(f"  {trtexec}", flush=True)
        else:
            log("build it on the target GPU with either of:")
            print(f"  {target_cmd}", flush=True)
            print(f"  {trtexec}", flush=True)

    manifest["tolerances"] = {k: asdict(v) for k, v in TOLERANCES.items()}
    manifest["versions"] = _tool_versions()

    # 5. Check.
    report = None
    saved_reference = (out / "check" / "reference.json").is_file()
    if cfg.check and model is None and not manifest.get("model") and not saved_reference:
        reason = (
            f"no PyTorch reference for {cfg.from_onnx}: its export named no checkpoint (random weights, or "
            "no <name>.manifest.json beside it) and this folder holds no saved check/reference.json. "
            "Export with --weights (or build with --model/--weights) to get an accuracy check"
        )
        log(f"check skipped: {reason}")
        manifest["check"] = {"skipped": reason}
    elif cfg.check:
        report = check_build(out, manifest, model=model, data=cfg.check_data, check_num=cfg.check_num)
        manifest["check"] = {
            "passed": report.passed,
            "report": "report.md",
            "comparisons": {c.name: c.status for c in report.comparisons},
        }
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = write_build_manifest(out, manifest)
    return BuildResult(manifest=manifest, manifest_path=path, report=report)


def _target_build_command(cfg: BuildConfig, current: Path, lib: str | None) -> str:
    args = ["edge-biformer", "build", "--from-onnx", str(current), "--precision", cfg.precision]
    args += ["--batch", f"{cfg.batch.min},{cfg.batch.opt},{cfg.batch.max}", "--output", str(cfg.output)]
    args += ["--plugin-library", lib or f"/path/to/{PLUGIN_LIBRARY_NAME}"]
    if cfg.workspace_mib:
        args += ["--workspace", str(cfg.workspace_mib)]
    if cfg.opt_level is not None:
        args += ["--opt-level", str(cfg.opt_level)]
    if cfg.dla_core is not None:
        args += ["--dla-core", str(cfg.dla_core)]
    if cfg.precision == "int8" and cfg.int8_mode == "calibrator":
        # The implicit calibrator runs on the target: it needs the images there too.
        source = getattr(cfg.calib, "source", None) if cfg.calib is not None else None
        args += ["--int8-mode", "calibrator", "--calib-data", str(source or "/path/to/calibration/images")]
    return shlex.join(args)


def write_build_manifest(outdir: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically."""
    path = outdir / "manifest.json"
    with atomic_output(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return path


def read_build_manifest(outdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``OUTDIR/manifest.json`` with a clear error."""
    path = Path(outdir) / "manifest.json"
    if not path.is_file():
        raise EdgeBiformerError(
            f"{path} does not exist: `edge-biformer check` takes the output directory of "
            "`edge-biformer build` (which writes manifest.json last, when the build completed)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EdgeBiformerError(f"{path} is not valid JSON ({err}); rebuild the directory") from None


def targets_from_manifest(outdir: Path, manifest: dict[str, Any]) -> list[Target]:
    """The artifacts of a build directory, as check targets."""
    prec = manifest["precision"]
    arts = manifest.get("artifacts", {})
    lib_info = manifest.get("plugin_library") or {}
    lib = lib_info.get("path") or (f"/path/to/{PLUGIN_LIBRARY_NAME}" if lib_info.get("needed") else None)
    targets: list[Target] = []

    def path(name: str) -> str:
        p = Path(name)
        return str(p if p.is_absolute() else outdir / p)

    if arts.get("onnx"):
        targets.append(Target("onnx export (onnxruntime)", path(arts["onnx"]), "fp32", "onnxrt"))
    if arts.get("quantized"):
        targets.append(Target(f"{prec} onnx (onnxruntime)", path(arts["quantized"]), prec, "onnxrt"))
    if arts.get("plugin_onnx"):
        targets.append(
            Target(
                f"{prec} plugin onnx (cpu_session)",
                path(arts["plugin_onnx"]),
                prec,
                "cpu_session",
                lib,
                profile_shapes=(manifest.get("profile") or {}).get("shapes"),
            )
        )
    engine_name = arts.get("engine") or f"model.{prec}.engine"
    targets.append(Target(f"{prec} engine (tensorrt)", path(engine_name), prec, "tensorrt", lib))
    return targets


def check_build(
    outdir: Path,
    manifest: dict[str, Any],
    *,
    model: Any = None,
    data: Any = None,
    check_num: int = 64,
    recompute: bool = False,
) -> Any:
    """Run the accuracy check of a build directory; writes check/*.json, report.md, report.json."""
    from edge_biformer import calib as calib_mod
    from edge_biformer import check
    from edge_biformer.engine import BatchProfile

    profile = BatchProfile(**{k: manifest["profile"][k] for k in ("min", "opt", "max")})
    img_size = tuple(manifest["img_size"])
    targets = [
        t for t in targets_from_manifest(outdir, manifest) if t.kind == "tensorrt" or Path(t.path).is_file()
    ]
    check_dir = outdir / "check"
    saved = (check_dir / "inputs.json").is_file() and (check_dir / "reference.json").is_file()
    if saved and data is None and model is None:
        # `check OUTDIR`: the inputs of the build's check, and its PyTorch reference unless
        # --recompute (so the target GPU needs neither the weights nor a PyTorch run of the model).
        from polygraphy.json import load_json

        with check.quiet_polygraphy():
            feeds = load_json(str(check_dir / "inputs.json"))
        batches = [np.asarray(f["input"]) for f in feeds]
        labels_file = check_dir / "labels.npy"
        labels = np.load(labels_file) if labels_file.is_file() else None
        if recompute:
            model = _model_from_manifest(manifest)
        else:
            model = _FixedReference(check.load_polygraphy_outputs(check_dir / "reference.json"))
        summary = {**(manifest.get("check_data") or {}), "inputs": str(check_dir / "inputs.json")}
        summary["reference"] = "recomputed" if recompute else "reused"
    else:
        if data is None:
            data = calib_mod.synthetic(min(check_num, 2 * profile.opt), img_size, batch_size=profile.opt)
            log(
                "check: no --check-data/--eval-data given, using seeded random inputs (agreement numbers on "
                "noise are weaker evidence than on real images; INT8 in particular is calibrated for images)"
            )
        batches, labels = _check_batches(data, profile, check_num)
        if model is None:
            model = _model_from_manifest(manifest)
        summary = data.summary()
        manifest["check_data"] = summary
        if labels is not None:
            check_dir.mkdir(parents=True, exist_ok=True)
            with atomic_output(check_dir / "labels.npy", suffix=".npy") as tmp, open(tmp, "wb") as f:
                np.save(f, labels)
        else:
            (check_dir / "labels.npy").unlink(missing_ok=True)
    with stage("accuracy check") as st:
        report = check.run_checks(
            model, targets, batches, outdir, labels=labels, data_summary=summary, log=log
        )
        st.output = outdir / "report.md"
        st.details.append("PASS" if report.passed else "FAIL")
    log("rerun the comparisons with polygraphy:")
    for c in report.comparisons:
        where = "" if c.kind == "onnxrt" else "   # on the target GPU"
        print(f"  {c.command}{where}", flush=True)
    return report


class _FixedReference:
    """Stands in for the PyTorch model when the saved reference outputs are reused."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        self._outputs = list(outputs)
        self._i = 0

    def eval(self) -> _FixedReference:
        self._i = 0
        return self

    def __call__(self, x: Any) -> Any:
        import torch

        out = self._outputs[self._i]
        self._i += 1
        if tuple(out.shape[:1]) != tuple(x.shape[:1]):
            raise EdgeBiformerError(
                "check/reference.json does not match check/inputs.json; rerun with --recompute"
            )
        return torch.from_numpy(out)


def _adopt_export_manifest(manifest: dict[str, Any], source: Path) -> None:
    """Take model, configuration and weights from the side-car manifest of ``edge-biformer export``.

    Then a build ``--from-onnx model.onnx`` can compute its own PyTorch reference for the check. The
    manifest of ``edge-biformer rewrite`` embeds its source's, which is followed.
    """
    from edge_biformer.utils import manifest_path

    side_car = manifest_path(source)
    if manifest.get("model") or not side_car.is_file():
        return
    try:
        exported = json.loads(side_car.read_text())
    except (OSError, ValueError):
        return
    while isinstance(exported, dict) and not exported.get("model"):
        exported = (exported.get("source") or {}).get("manifest")  # e.g. a rewrite of an export
    if not isinstance(exported, dict) or exported.get("kind") != "onnx":
        return
    weights = exported.get("weights")
    if not weights or not Path(weights).is_file():
        # Random weights (no --weights at export) cannot be rebuilt, and a moved checkpoint is not
        # at hand: the reference would not be the exported model. The check asks for --model/--weights.
        return
    for key in ("model", "config", "weights", "weights_sha256"):
        manifest[key] = exported.get(key)
    log(f"from-onnx: model {exported['model']} and its weights taken from {side_car}")


def _model_from_manifest(manifest: dict[str, Any]) -> Any:
    from edge_biformer.models import create_model

    name = manifest.get("model")
    if not name:
        raise EdgeBiformerError(
            "this build started from --from-onnx without a PyTorch model, and no saved reference "
            "(check/reference.json) exists: build from --model/--weights, or from the export of a "
            "checkpoint (edge-biformer export --weights) whose manifest names it"
        )
    config = manifest.get("config") or {}
    return create_model(name, weights=manifest.get("weights"), **config)
