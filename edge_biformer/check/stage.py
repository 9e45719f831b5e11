"""The check stage: every artifact of a build directory against FP32 PyTorch, written as a report.

The reference is the FP32 PyTorch model on the check inputs (real images, or seeded noise when
none are given). Each artifact (the exported ONNX in onnxruntime, the quantized / rewritten ONNX in
:func:`edge_biformer.cpu_session`, the TensorRT engine where TensorRT is present) is run on the same
batches and judged with its precision's entry of the tolerance table, by :func:`compare` and by
Polygraphy's own comparator (the verdict ``polygraphy run`` would print). The inputs and the
reference are saved in Polygraphy's formats (``check/inputs.json``, ``check/reference.json``) so
``edge-biformer check OUTDIR`` (and the printed ``polygraphy run`` commands) can repeat the check on
the target without the weights or PyTorch.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer import manifest as manifests
from edge_biformer.calib import DataSpec, load_data
from edge_biformer.check.compare import compare
from edge_biformer.check.polygraphy_io import (
    REFERENCE_RUNNER,
    load_polygraphy_inputs,
    load_polygraphy_outputs,
    polygraphy_command,
    polygraphy_compare,
    save_polygraphy_inputs,
    save_polygraphy_outputs,
)
from edge_biformer.check.report import CheckReport, TargetResult, summary_line, write_report
from edge_biformer.check.runners import Skip, Target, path_of, run_target
from edge_biformer.check.tolerances import TOLERANCES
from edge_biformer.engine.options import BatchProfile
from edge_biformer.engine.stage import PLUGIN_LIBRARY_NAME
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.stages import PRECISIONS, artifact_name
from edge_biformer.utils import atomic_output, log, stage

__all__ = [
    "CheckOptions",
    "judge",
    "read_build_manifest",
    "reference_outputs",
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
    """

    outdir: Path
    data: Any = None
    num: int = 64
    recompute: bool = False
    model: Any = None


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
            )
        )
    engine = arts.get("engine") or artifact_name("engine", prec)
    targets.append(Target(f"{prec} engine (tensorrt)", path_of(outdir, engine), prec, "tensorrt", lib))
    return targets


def reference_outputs(model: Any, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """FP32 PyTorch outputs for each batch."""
    import torch

    model = model.eval()
    with torch.inference_mode():
        return [model(torch.from_numpy(np.ascontiguousarray(b))).float().numpy() for b in batches]


def _result(
    target: Target, status: str, scale: float, inputs_json: str, reference_json: str, **fields: Any
) -> TargetResult:
    """A row of the report, with the tolerance of the target's precision and its Polygraphy command."""
    tol = TOLERANCES[PRECISIONS[target.precision].tolerance]
    assert tol.rtol is not None and tol.error_stat is not None
    atol = tol.atol(scale)
    return TargetResult(
        name=target.name,
        path=target.path,
        precision=target.precision,
        kind=target.kind,
        status=status,
        atol=atol,
        rtol=tol.rtol,
        check_error_stat=tol.error_stat,
        command=polygraphy_command(target, inputs_json, reference_json, atol, tol.rtol, tol.error_stat),
        **fields,
    )


def judge(
    target: Target,
    reference: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    *,
    labels: np.ndarray | None,
    reference_accuracy: float | None,
    inputs_json: str,
    reference_json: str,
) -> TargetResult:
    """Judge ``outputs`` of ``target`` against ``reference`` with the tolerance of its precision."""
    tol = TOLERANCES[PRECISIONS[target.precision].tolerance]
    c = compare(outputs, reference, tol, labels=labels, reference_accuracy=reference_accuracy)
    result = _result(
        target,
        "pass",
        c.expected_scale,
        inputs_json,
        reference_json,
        max_abs_diff=c.max_abs_diff,
        mean_abs_diff=c.mean_abs_diff,
        max_rel_diff=c.max_rel_diff,
        min_cosine=_number(c.min_cosine),
        mean_cosine=_number(c.mean_cosine),
        top1_agreement=_number(c.top1_agreement),
        top5_agreement=_number(c.top5_agreement),
        top1_accuracy=c.top1_accuracy,
    )
    result.polygraphy_pass = polygraphy_compare(
        reference, outputs, result.atol, result.rtol, result.check_error_stat
    )
    if not result.polygraphy_pass:
        result.failures.append(
            f"polygraphy ({result.check_error_stat}, atol {result.atol:g}, rtol {result.rtol:g}): max abs "
            f"diff {result.max_abs_diff:.3g}, mean abs diff {result.mean_abs_diff:.3g}"
        )
    result.failures += c.failures
    if result.failures:
        result.status = "fail"
    return result


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def compare_targets(
    targets: Sequence[Target],
    batches: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    outdir: str | os.PathLike[str],
    *,
    labels: np.ndarray | None = None,
    data_summary: dict[str, Any] | None = None,
) -> CheckReport:
    """Polygraphy JSON files, every comparison, ``report.json`` and ``report.md``."""
    outdir = Path(outdir)
    check_dir = outdir / "check"
    inputs_json, reference_json = str(check_dir / "inputs.json"), str(check_dir / "reference.json")
    start = time.perf_counter()
    save_polygraphy_inputs(batches, inputs_json)
    save_polygraphy_outputs(reference, reference_json)
    ref_all = np.concatenate(reference)
    ref_accuracy = float((ref_all.argmax(1) == labels).mean()) if labels is not None else None
    reference_info = {
        "runner": REFERENCE_RUNNER,
        "samples": int(ref_all.shape[0]),
        "batches": [int(b.shape[0]) for b in batches],
        "inputs_json": inputs_json,
        "reference_json": reference_json,
        "top1_accuracy": ref_accuracy,
        "logit_scale": float(np.abs(ref_all).max()),
        "data": data_summary or {},
        "seconds": round(time.perf_counter() - start, 3),
    }
    results = []
    for target in targets:
        t0 = time.perf_counter()
        try:
            outputs = run_target(target, batches)
        except Skip as skip:
            scale = reference_info["logit_scale"]
            results.append(_result(target, "skipped", scale, inputs_json, reference_json, reason=str(skip)))
            log(f"check {target.name}: skipped ({skip})")
            continue
        result = judge(
            target,
            reference,
            outputs,
            labels=labels,
            reference_accuracy=ref_accuracy,
            inputs_json=inputs_json,
            reference_json=reference_json,
        )
        result.seconds = round(time.perf_counter() - t0, 3)
        with contextlib.suppress(Exception):
            save_polygraphy_outputs(
                outputs, check_dir / f"outputs.{_slug(target.name)}.json", _slug(target.name)
            )
        results.append(result)
        log(f"check {target.name}: {summary_line(result)}")
    report = CheckReport(reference=reference_info, comparisons=results)
    write_report(report, outdir)
    return report


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


def model_from_manifest(manifest: dict[str, Any]) -> Any:
    """The FP32 PyTorch model a manifest names (its model, configuration and weights)."""
    from edge_biformer.models import create_model

    name = manifest.get("model")
    if not name:
        raise EdgeBiformerError(
            "this build started from --from-onnx without a PyTorch model, and no saved reference "
            "(check/reference.json) exists: build from --model/--weights, or from the export of a "
            "checkpoint (edge-biformer export --weights) whose manifest names it"
        )
    return create_model(name, weights=manifest.get("weights"), **(manifest.get("config") or {}))


def _saved_reference(check_dir: Path, manifest: dict[str, Any], recompute: bool) -> tuple[Any, ...]:
    """The inputs, labels, reference and data summary saved by the build (``check OUTDIR``)."""
    batches = load_polygraphy_inputs(check_dir / "inputs.json")
    labels_file = check_dir / "labels.npy"
    labels = np.load(labels_file) if labels_file.is_file() else None
    if recompute:
        reference = reference_outputs(model_from_manifest(manifest), batches)
    else:
        # The target GPU needs neither the weights nor a PyTorch run of the model.
        reference = load_polygraphy_outputs(check_dir / "reference.json")
        if [r.shape[0] for r in reference] != [b.shape[0] for b in batches]:
            raise EdgeBiformerError(
                "check/reference.json does not match check/inputs.json; rerun with --recompute"
            )
    summary = {**(manifest.get("check_data") or {}), "inputs": str(check_dir / "inputs.json")}
    summary["reference"] = "recomputed" if recompute else "reused"
    return batches, labels, reference, summary


def run(options: CheckOptions, manifest: dict[str, Any] | None = None) -> CheckReport:
    """Check the build directory ``options.outdir``; writes check/*.json, report.md, report.json.

    ``manifest`` is the build's manifest when the caller holds it (the pipeline, which writes it
    last); without it ``manifest.json`` is read and, with the check's summary, written back.
    """
    outdir = Path(options.outdir)
    own = manifest is None
    manifest = read_build_manifest(outdir) if manifest is None else manifest
    profile = BatchProfile(**{k: manifest["profile"][k] for k in ("min", "opt", "max")})
    img_size = tuple(manifest["img_size"])
    targets = [
        t for t in targets_from_manifest(outdir, manifest) if t.kind == "tensorrt" or Path(t.path).is_file()
    ]
    check_dir = outdir / "check"
    saved = (check_dir / "inputs.json").is_file() and (check_dir / "reference.json").is_file()
    data = options.data
    if isinstance(data, DataSpec):
        data = load_data(data, img_size, "check data", batch_size=profile.opt)
    if saved and data is None and options.model is None:
        batches, labels, reference, summary = _saved_reference(check_dir, manifest, options.recompute)
    else:
        if data is None:
            from edge_biformer.calib import synthetic

            data = synthetic(min(options.num, 2 * profile.opt), img_size, batch_size=profile.opt)
            log(
                "check: no --check-data/--eval-data given, using seeded random inputs (agreement numbers on "
                "noise are weaker evidence than on real images; INT8 in particular is calibrated for images)"
            )
        batches, labels = check_batches(data, profile, options.num)
        reference = reference_outputs(options.model or model_from_manifest(manifest), batches)
        summary = data.summary()
        manifest["check_data"] = summary
        if labels is not None:
            check_dir.mkdir(parents=True, exist_ok=True)
            with atomic_output(check_dir / "labels.npy", suffix=".npy") as tmp, open(tmp, "wb") as f:
                np.save(f, labels)
        else:
            (check_dir / "labels.npy").unlink(missing_ok=True)
    with stage("accuracy check") as st:
        report = compare_targets(targets, batches, reference, outdir, labels=labels, data_summary=summary)
        st.output = outdir / "report.md"
        st.details.append("PASS" if report.passed else "FAIL")
    log("rerun the comparisons with polygraphy:")
    for c in report.comparisons:
        where = "" if c.kind == "onnxrt" else "   # on the target GPU"
        print(f"  {c.command}{where}", flush=True)
    manifest["check"] = report.summary()
    if own:
        manifests.write_manifest(outdir / "manifest.json", manifest)
    return report
