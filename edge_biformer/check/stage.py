"""The check stage: every artifact of a build directory against FP32 PyTorch, written as a report.

The reference is the FP32 PyTorch model on the check inputs (real images: ``--check-data``, else the
calibration images, also those recorded for a ``--from-onnx`` graph, else the built-in demo
photographs; seeded noise only when scikit-image's photographs are not installed). Where PyTorch
cannot rebuild the model (random weights, a checkpoint that is gone) the
plain FP32 export of the same weights in onnxruntime is the reference, and without either the check
raises :class:`NoReferenceError` (:mod:`edge_biformer.check.reference`). Each artifact (the exported
ONNX in onnxruntime, the quantized / rewritten ONNX in :func:`edge_biformer.cpu_session`, the
TensorRT engine where TensorRT is present) is run on the same batches and judged with its
precision's entry of the tolerance table, by :func:`compare` and by Polygraphy's own comparator (the
verdict ``polygraphy run`` would print). The inputs and the reference are saved in Polygraphy's
formats (``check/inputs.json``, ``check/reference.json``) so ``edge-biformer check OUTDIR`` (and the
printed ``polygraphy run`` commands) can repeat the check on the target without the weights or
PyTorch. Inputs or a reference that a later check replaces are kept aside
(``inputs.replaced-<time>.json``), never overwritten.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer import manifest as manifests
from edge_biformer.calib import DataSpec, load_data
from edge_biformer.calib.preprocess import preprocess_from_manifest
from edge_biformer.check.judge import compare_targets
from edge_biformer.check.polygraphy_io import (
    REFERENCE_RUNNER,
    load_polygraphy_inputs,
    load_polygraphy_outputs,
)
from edge_biformer.check.reference import (
    Reference,
    find_reference,
    plain_export,
    require_finite_reference,
)
from edge_biformer.check.report import CheckReport
from edge_biformer.check.runners import Target, path_of
from edge_biformer.engine.options import BatchProfile
from edge_biformer.engine.stage import PLUGIN_LIBRARY_NAME
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.onnx_io import INPUT_NAME
from edge_biformer.stages import artifact_name
from edge_biformer.utils import atomic_output, log, require_writable_dir, stage

__all__ = [
    "CheckOptions",
    "read_build_manifest",
    "run",
    "targets_from_manifest",
]


@dataclass
class CheckOptions:
    """The check of a build directory.

    ``data``: the check inputs (a :class:`edge_biformer.calib.CalibrationData`, labels optional);
    without it the inputs and reference saved by the build are reused (``recompute`` recomputes the
    reference from the model the manifest names), or, for a new build, seeded noise is used.
    ``model``: the FP32 PyTorch model, when the caller has it at hand.
    ``min_routing_agreement``: fail an artifact whose worst BRA block routes fewer query regions
    than this fraction as FP32 does (default: report it, and warn below 99 %).
    """

    outdir: Path
    data: Any = None
    num: int = 64
    recompute: bool = False
    model: Any = None
    min_routing_agreement: float | None = None


def read_build_manifest(outdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``OUTDIR/manifest.json`` with a clear error."""
    path = Path(outdir) / "manifest.json"
    if not path.is_file():
        raise EdgeBiformerError(
            f"{path} does not exist: `edge-biformer check` takes the output directory of "
            "`edge-biformer build` (which writes manifest.json last, when the build completed)"
        )
    return manifests.read_manifest(path, required=True)  # type: ignore[return-value]


def targets_from_manifest(outdir: Path, manifest: dict[str, Any]) -> list[Target]:
    """The artifacts of a build directory, as check targets."""
    prec = manifest["precision"]
    arts = manifest.get("artifacts", {})
    lib_info = manifest.get("plugin_library") or {}
    lib = lib_info.get("path") or (f"/path/to/{PLUGIN_LIBRARY_NAME}" if lib_info.get("needed") else None)
    # The target TensorRT (8.x: weakly typed, precision flags) decides the printed Polygraphy options.
    tensorrt = ((manifest.get("engine") or {}).get("target") or {}).get("tensorrt")
    targets: list[Target] = []
    if arts.get("onnx"):
        targets.append(Target("onnx export (onnxruntime)", path_of(outdir, arts["onnx"]), "fp32", "onnxrt"))
    if arts.get("quantized"):
        targets.append(
            Target(f"{prec} onnx (onnxruntime)", path_of(outdir, arts["quantized"]), prec, "onnxrt")
        )
    if arts.get("plugin_onnx"):
        targets.append(
            Target(
                f"{prec} plugin onnx (cpu_session)",
                path_of(outdir, arts["plugin_onnx"]),
                prec,
                "cpu_session",
                lib,
                profile_shapes=(manifest.get("profile") or {}).get("shapes"),
                tensorrt=tensorrt,
            )
        )
    engine = arts.get("engine") or artifact_name("engine", prec)
    targets.append(
        Target(f"{prec} engine (tensorrt)", path_of(outdir, engine), prec, "tensorrt", lib, tensorrt=tensorrt)
    )
    input_name = (manifest.get("input") or {}).get("name") or INPUT_NAME
    static = bool((manifest.get("profile") or {}).get("static"))
    return [
        replace(t, input_name=input_name, profile_shapes=None if static else t.profile_shapes)
        for t in targets
    ]


def check_batches(data: Any, profile: BatchProfile, limit: int) -> tuple[list[np.ndarray], np.ndarray | None]:
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


def _saved_inputs(check_dir: Path) -> tuple[list[np.ndarray], np.ndarray | None]:
    batches = load_polygraphy_inputs(check_dir / "inputs.json")
    labels_file = check_dir / "labels.npy"
    return batches, (np.load(labels_file) if labels_file.is_file() else None)


def _with_recipe(spec: DataSpec, manifest: dict[str, Any], profile: BatchProfile) -> DataSpec:
    """A data spec with the preprocessing the build recorded and the graph's channel count."""
    return replace(
        spec, preprocess=spec.preprocess or preprocess_from_manifest(manifest), channels=profile.channels
    )


def _check_data(
    options: CheckOptions, profile: BatchProfile, img_size: tuple[int, ...], manifest: dict[str, Any]
) -> Any:
    """The check inputs: the given data, else the built-in demo photographs, else seeded noise."""
    if options.data is not None:
        return options.data
    from edge_biformer.calib import DEMO_SOURCE, CalibrationDataError, DataSpec, synthetic

    try:
        spec = _with_recipe(DataSpec(DEMO_SOURCE), manifest, profile)
        data = load_data(spec, img_size, "check data", batch_size=profile.opt)
    except CalibrationDataError as err:
        log(f"check: the built-in demo photographs are not available ({err})")
    else:
        log(
            f"check: no --check-data/--eval-data given, checking on the {len(data)} built-in demo "
            "photographs (your own held-out images are better evidence: --eval-data DIR)"
        )
        return data
    log(
        "check: no --check-data/--eval-data given, using seeded random inputs (agreement numbers on "
        "noise are weaker evidence than on real images; INT8 in particular is calibrated for images)"
    )
    return synthetic(
        min(options.num, 2 * profile.opt), img_size, batch_size=profile.opt, channels=profile.channels
    )


def run(options: CheckOptions, manifest: dict[str, Any] | None = None) -> CheckReport:
    """Check the build directory ``options.outdir``; writes check/*.json, report.md, report.json.

    ``manifest`` is the build's manifest when the caller holds it (the pipeline, which writes it
    last); without it ``manifest.json`` is read and, with the check's summary, written back.

    Raises:
        NoReferenceError: nothing to compare with (see :mod:`edge_biformer.check.reference`).
    """
    outdir = Path(options.outdir)
    own = manifest is None
    manifest = read_build_manifest(outdir) if manifest is None else manifest
    require_writable_dir(outdir, "the build directory")
    profile = BatchProfile.from_manifest(manifest["profile"])
    img_size = tuple(manifest["img_size"])
    targets = [
        t for t in targets_from_manifest(outdir, manifest) if t.kind == "tensorrt" or Path(t.path).is_file()
    ]
    check_dir = outdir / "check"
    saved = (check_dir / "inputs.json").is_file() and (check_dir / "reference.json").is_file()
    if isinstance(options.data, DataSpec):
        spec = _with_recipe(options.data, manifest, profile)
        options = replace(options, data=load_data(spec, img_size, "check data", batch_size=profile.opt))
    previous = manifest.get("check") or {}
    if saved and options.data is None and options.model is None and not options.recompute:
        # `check OUTDIR`: the target GPU needs neither the weights nor a run of the reference.
        batches, labels = _saved_inputs(check_dir)
        reference = load_polygraphy_outputs(check_dir / "reference.json")
        if [len(next(iter(r.values()))) for r in reference] != [b.shape[0] for b in batches]:
            raise EdgeBiformerError(
                "check/reference.json does not match check/inputs.json; rerun with --recompute"
            )
        ref = Reference(
            previous.get("reference_runner", REFERENCE_RUNNER),
            previous.get("reference", "saved"),
            None,  # type: ignore[arg-type]
            previous.get("reference_path"),
        )
        summary = {
            **(manifest.get("check_data") or {}),
            "inputs": str(check_dir / "inputs.json"),
            "reference": "reused",
        }
    else:
        ref = find_reference(manifest, outdir, options.model)
        if saved and options.data is None and options.model is None:  # --recompute on the saved inputs
            batches, labels = _saved_inputs(check_dir)
            summary = {**(manifest.get("check_data") or {}), "inputs": str(check_dir / "inputs.json")}
            summary["reference"] = "recomputed"
        else:
            data = _check_data(options, profile, img_size, manifest)
            batches, labels = check_batches(data, profile, options.num)
            summary = data.summary()
            manifest["check_data"] = summary
            _save_labels(check_dir, labels)
        log(f"check: reference = {ref.description}")
        reference = ref.run(batches)
    require_finite_reference(ref, reference)
    # The reference's own graph when it still exists (a saved reference may name a deleted one).
    own = ref.path if ref.path is not None and Path(ref.path).is_file() else None
    routing_reference = own or plain_export(manifest, outdir)
    if ref.path is not None:  # the FP32 export is the reference: comparing it with itself shows nothing
        targets = [t for t in targets if Path(t.path).resolve() != Path(ref.path).resolve()]
    with stage("accuracy check") as st:
        report = compare_targets(
            targets, batches, reference, outdir, labels=labels, data_summary=summary, runner=ref.runner,
            description=ref.description, calibration=_calibration_of(manifest),
            judge_decisions=not manifest.get("random_weights"),
            routing_reference=routing_reference, min_routing_agreement=options.min_routing_agreement,
            precision_policy=_quantize_record(manifest).get("policy"),
        )  # fmt: skip
        st.output = outdir / "report.md"
        st.details.append("PASS" if report.passed else "FAIL")
    log("rerun the comparisons with polygraphy:")
    for c in report.comparisons:
        where = "" if c.kind == "onnxrt" else "   # on the target GPU"
        print(f"  {c.command}{where}", flush=True)
    manifest["check"] = {
        **report.summary(),
        "reference": ref.description,
        "reference_runner": ref.runner,
        "reference_path": ref.path,
    }
    if own:
        manifests.write_manifest(outdir / "manifest.json", manifest)
    return report


def _quantize_record(manifest: dict[str, Any]) -> dict[str, Any]:
    """The quantize stage's record of a build, or of the quantized graph it started from."""
    own = (manifest.get("stages") or {}).get("quantize")
    if own:
        return own
    for record in manifests.sources(manifest):
        found = (record.get("manifest") or {}).get("quantize")
        if found:
            return found
    return {}


def _calibration_of(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The calibration summary of a build, or of the quantized graph it started from."""
    return manifest.get("calibration") or _quantize_record(manifest).get("calib_summary")


def _save_labels(check_dir: Path, labels: np.ndarray | None) -> None:
    if labels is not None:
        check_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(check_dir / "labels.npy", suffix=".npy") as tmp, open(tmp, "wb") as f:
            np.save(f, labels)
    else:
        (check_dir / "labels.npy").unlink(missing_ok=True)
