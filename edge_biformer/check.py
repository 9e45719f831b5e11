"""Accuracy checks: PyTorch reference -> Polygraphy JSON -> comparisons -> report.md / report.json.

The reference is the FP32 PyTorch model on real (or given) inputs. Inputs and reference outputs
are written in Polygraphy's own formats (``inputs.json``: a list of feed dicts, one per batch;
``reference.json``: ``RunResults`` of a runner named ``pytorch``), so every comparison can be
rerun by hand with ``polygraphy run ... --load-inputs inputs.json --load-outputs reference.json``.

Each artifact (the exported ONNX in onnxruntime, the quantized / rewritten ONNX in
:func:`edge_biformer.cpu_session`, the TensorRT engine where TensorRT is present) is run on the same
batches and judged with the tolerances of its precision (:data:`TOLERANCES`):

* Polygraphy's comparator (``CompareFunc.simple``, the same code ``polygraphy run`` uses) with an
  absolute tolerance scaled to the logits (``atol = atol_frac * max|reference logits|``), a relative
  tolerance and an error statistic (``elemwise`` for fp32/fp16, ``mean`` for int8);
* classification agreement with FP32 PyTorch: minimum / mean cosine similarity of the logits,
  top-1 agreement and top-5 agreement (FP32's top-1 class within the artifact's top 5);
* with labels (an ImageNet-style ``class_dir/image`` folder), the top-1 accuracy drop.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import atomic_output

REFERENCE_RUNNER = "pytorch"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria of one precision (see docs/build.md for the reasoning)."""

    precision: str
    atol_frac: float  # atol = atol_frac * max|reference logits|
    rtol: float
    check_error_stat: str  # Polygraphy --check-error-stat
    min_cosine: float  # minimum per-sample cosine similarity of the logits
    min_top1_agreement: float
    min_top5_agreement: float
    max_accuracy_drop: float  # top-1 accuracy points, when labels are given

    def atol(self, scale: float) -> float:
        """Absolute tolerance for reference logits of magnitude ``scale``."""
        return float(f"{self.atol_frac * max(scale, 1e-6):.3g}")


#: Tolerances per precision. fp32: TensorRT FP32 with TF32 disabled differs from PyTorch only by
#: summation order (~1e-6 relative); 1e-4 leaves room for the plugin's exp/softmax order. fp16:
#: 11-bit mantissa, errors of ~5e-4 per op accumulate over the depth to ~1e-3..1e-2 of the logit
#: range. int8: quantization noise is not elementwise-small; the mean error, the direction of the
#: logit vector and the predicted class are what a classifier keeps.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance("fp32", 1e-4, 1e-3, "elemwise", 0.99999, 1.0, 1.0, 0.0),
    "fp16": Tolerance("fp16", 2e-2, 2e-2, "elemwise", 0.999, 0.99, 1.0, 0.5),
    "int8": Tolerance("int8", 5e-2, 0.0, "mean", 0.98, 0.97, 0.99, 1.0),
}


@dataclass
class Target:
    """One artifact to compare with the reference."""

    name: str  # e.g. "onnx (onnxruntime)"
    path: str
    precision: str
    kind: str  # "onnxrt" | "cpu_session" | "tensorrt"
    plugin_library: str | None = None
    #: The optimisation profile's input shapes ({"min": [N, 3, H, W], "opt": ..., "max": ...}), for
    #: the TensorRT build of an ONNX target (polygraphy's default profile would be batch 1).
    profile_shapes: dict[str, list[int]] | None = None


@dataclass
class Comparison:
    """Numbers and verdict of one artifact against the reference."""

    name: str
    path: str
    precision: str
    kind: str
    status: str  # "pass" | "fail" | "skipped"
    reason: str = ""
    atol: float = 0.0
    rtol: float = 0.0
    check_error_stat: str = "elemwise"
    polygraphy_pass: bool | None = None
    max_abs_diff: float = float("nan")
    mean_abs_diff: float = float("nan")
    max_rel_diff: float = float("nan")
    min_cosine: float = float("nan")
    mean_cosine: float = float("nan")
    top1_agreement: float = float("nan")
    top5_agreement: float = float("nan")
    top1_accuracy: float | None = None
    failures: list[str] = field(default_factory=list)
    command: str = ""
    seconds: float = 0.0


@dataclass
class CheckReport:
    """All comparisons of one check."""

    reference: dict[str, Any]
    comparisons: list[Comparison]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def passed(self) -> bool:
        """True when no comparison failed (skipped ones do not fail the check)."""
        return all(c.status != "fail" for c in self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "passed": self.passed,
            "created": self.created,
            "reference": self.reference,
            "comparisons": [_finite(asdict(c)) for c in self.comparisons],
        }


# --------------------------------------------------------------------------------------------------
# Reference and Polygraphy JSON


@contextlib.contextmanager
def quiet_polygraphy() -> Any:
    """Polygraphy without its INFO lines ("Saving inference results ...") and import-time notice."""
    with contextlib.redirect_stdout(io.StringIO()):
        from polygraphy.logger import G_LOGGER  # prints a notice about 'colored' on first import
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        yield G_LOGGER
    finally:
        G_LOGGER.module_severity = severity


def reference_outputs(model: Any, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """FP32 PyTorch logits for each batch."""
    import torch

    model = model.eval()
    outputs = []
    with torch.inference_mode():
        for batch in batches:
            outputs.append(model(torch.from_numpy(np.ascontiguousarray(batch))).float().numpy())
    return outputs


def save_polygraphy_inputs(batches: Sequence[np.ndarray], path: str | os.PathLike[str]) -> None:
    """Write the batches as Polygraphy input JSON (``--load-inputs``): a list of feed dicts."""
    from polygraphy.json import save_json

    with atomic_output(path, suffix=".json") as tmp, quiet_polygraphy():
        save_json([{INPUT_NAME: np.ascontiguousarray(b)} for b in batches], str(tmp))


def save_polygraphy_outputs(
    outputs: Sequence[np.ndarray], path: str | os.PathLike[str], runner_name: str = REFERENCE_RUNNER
) -> None:
    """Write outputs as Polygraphy ``RunResults`` JSON (``--load-outputs``) of ``runner_name``."""
    from polygraphy.comparator import IterationResult, RunResults

    results = RunResults()
    results.append(
        (
            runner_name,
            [IterationResult(outputs={OUTPUT_NAME: o}, runner_name=runner_name) for o in outputs],
        )
    )
    with atomic_output(path, suffix=".json") as tmp, quiet_polygraphy():
        results.save(str(tmp))


def load_polygraphy_outputs(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """The ``logits`` of the first runner of a ``RunResults`` JSON file."""
    from polygraphy.comparator import RunResults

    with quiet_polygraphy():
        results = RunResults.load(str(path))
    _, iterations = next(iter(results.items()))
    return [np.asarray(it[OUTPUT_NAME]) for it in iterations]


# --------------------------------------------------------------------------------------------------
# Running artifacts


#: Precisions whose graphs (float16 compute) onnxruntime runs without graph optimizations
#: (:func:`edge_biformer.runtime.cpu.runs_unoptimized`); the printed polygraphy commands say so too
#: (``--graph-optimization-level ORT_DISABLE_ALL``).
UNOPTIMIZED_PRECISIONS = ("fp16", "int8")


def _ort_runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    from edge_biformer.runtime.cpu import session_options

    options = session_options(onnx.load(path))
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def _cpu_session_runner(path: str) -> Callable[[np.ndarray], np.ndarray]:
    from edge_biformer import cpu_session

    session = cpu_session(path)
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def _trt_runner(path: str, plugin_library: str | None) -> Callable[[np.ndarray], np.ndarray]:
    from edge_biformer import engine

    if not engine.tensorrt_available():
        raise _Skip(engine.missing_reason())
    if not Path(path).is_file():
        raise _Skip(f"the engine {path} has not been built yet (see manifest.json, engine.build_command)")
    return engine.engine_runner(path, plugin_library)


class _Skip(Exception):
    """A target that cannot run here (no TensorRT, no plugin runtime)."""


def run_target(target: Target, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run ``target`` on every batch; raises ``_Skip`` when it cannot run on this machine."""
    if target.kind == "onnxrt":
        run = _ort_runner(target.path)
    elif target.kind == "cpu_session":
        run = _cpu_session_runner(target.path)
    elif target.kind == "tensorrt":
        run = _trt_runner(target.path, target.plugin_library)
    else:
        raise ValueError(f"unknown target kind {target.kind!r}")
    return [np.asarray(run(np.ascontiguousarray(b)), dtype=np.float32) for b in batches]


# --------------------------------------------------------------------------------------------------
# Comparing


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def classification_stats(
    reference: np.ndarray, output: np.ndarray, labels: np.ndarray | None = None
) -> dict[str, float | None]:
    """Cosine similarity, top-1/top-5 agreement with the reference and (with labels) top-1 accuracy."""
    ref = reference.reshape(reference.shape[0], -1).astype(np.float64)
    out = output.reshape(output.shape[0], -1).astype(np.float64)
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cosine = (ref * out).sum(1) / np.maximum(denom, 1e-30)
    ref_top1 = ref.argmax(1)
    top1 = float((out.argmax(1) == ref_top1).mean())
    top5 = float((_topk(out, 5) == ref_top1[:, None]).any(1).mean())
    stats: dict[str, float | None] = {
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
        "top1_agreement": top1,
        "top5_agreement": top5,
        "top1_accuracy": None,
    }
    if labels is not None:
        stats["top1_accuracy"] = float((out.argmax(1) == labels).mean())
    return stats


def polygraphy_compare(
    reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray], atol: float, rtol: float, stat: str
) -> bool:
    """The verdict of Polygraphy's comparator (what ``polygraphy run`` would print) for these outputs."""
    from polygraphy.comparator import Comparator, IterationResult, RunResults

    try:
        from polygraphy.comparator import SimpleCompareFunc as _simple
    except ImportError:  # Polygraphy < 0.50
        from polygraphy.comparator import CompareFunc

        _simple = CompareFunc.simple

    results = RunResults()
    results.append(
        (
            REFERENCE_RUNNER,
            [IterationResult({OUTPUT_NAME: r}, runner_name=REFERENCE_RUNNER) for r in reference],
        )
    )
    results.append(("artifact", [IterationResult({OUTPUT_NAME: o}, runner_name="artifact") for o in outputs]))
    with quiet_polygraphy() as logger:
        logger.module_severity = logger.CRITICAL
        verdict = Comparator.compare_accuracy(
            results, compare_func=_simple(atol=atol, rtol=rtol, check_error_stat=stat)
        )
    return bool(verdict)


def polygraphy_command(
    target: Target, inputs_json: str, reference_json: str, atol: float, rtol: float, stat: str
) -> str:
    """The ``polygraphy run`` line that repeats this comparison by hand."""
    args = ["polygraphy", "run", target.path]
    if target.kind == "tensorrt":
        args += ["--model-type", "engine", "--trt"]
        if target.plugin_library:
            args += ["--plugins", target.plugin_library]
    elif target.kind == "cpu_session":
        # The plugin op has no onnxruntime kernel in the polygraphy CLI: the target GPU builds the
        # graph with TensorRT and the plugin library instead.
        args += ["--trt"]
        if target.plugin_library:
            args += ["--plugins", target.plugin_library]
        if target.precision in ("fp16", "int8"):
            args += ["--strongly-typed"]
        for level in ("min", "opt", "max"):
            if target.profile_shapes and level in target.profile_shapes:
                dims = ",".join(str(d) for d in target.profile_shapes[level])
                args += [f"--trt-{level}-shapes", f"{INPUT_NAME}:[{dims}]"]
    else:
        args += ["--onnxrt"]
        if target.precision in UNOPTIMIZED_PRECISIONS:
            args += ["--graph-optimization-level", "ORT_DISABLE_ALL"]
    args += ["--load-inputs", inputs_json, "--load-outputs", reference_json]
    args += ["--atol", f"{atol:g}", "--rtol", f"{rtol:g}", "--check-error-stat", stat]
    return shlex.join(args)


def compare(
    target: Target,
    reference: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    *,
    labels: np.ndarray | None,
    reference_accuracy: float | None,
    inputs_json: str,
    reference_json: str,
    tolerance: Tolerance | None = None,
) -> Comparison:
    """Judge ``outputs`` of ``target`` against ``reference`` with the tolerance of its precision."""
    tol = tolerance or TOLERANCES[target.precision]
    ref = np.concatenate(reference)
    out = np.concatenate(outputs)
    atol = tol.atol(float(np.abs(ref).max()))
    diff = np.abs(out.astype(np.float64) - ref)
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    stats = classification_stats(ref, out, labels)
    comparison = Comparison(
        name=target.name,
        path=target.path,
        precision=target.precision,
        kind=target.kind,
        status="pass",
        atol=atol,
        rtol=tol.rtol,
        check_error_stat=tol.check_error_stat,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        max_rel_diff=float(rel.max()),
        min_cosine=float(stats["min_cosine"]),  # type: ignore[arg-type]
        mean_cosine=float(stats["mean_cosine"]),  # type: ignore[arg-type]
        top1_agreement=float(stats["top1_agreement"]),  # type: ignore[arg-type]
        top5_agreement=float(stats["top5_agreement"]),  # type: ignore[arg-type]
        top1_accuracy=stats["top1_accuracy"],
        command=polygraphy_command(target, inputs_json, reference_json, atol, tol.rtol, tol.check_error_stat),
    )
    comparison.polygraphy_pass = polygraphy_compare(reference, outputs, atol, tol.rtol, tol.check_error_stat)
    if not comparison.polygraphy_pass:
        comparison.failures.append(
            f"polygraphy ({tol.check_error_stat}, atol {atol:g}, rtol {tol.rtol:g}): max abs diff "
            f"{comparison.max_abs_diff:.3g}, mean abs diff {comparison.mean_abs_diff:.3g}"
        )
    if comparison.min_cosine < tol.min_cosine:
        comparison.failures.append(f"min cosine {comparison.min_cosine:.5f} < {tol.min_cosine}")
    if comparison.top1_agreement < tol.min_top1_agreement:
        comparison.failures.append(
            f"top-1 agreement {comparison.top1_agreement:.2%} < {tol.min_top1_agreement:.0%}"
        )
    if comparison.top5_agreement < tol.min_top5_agreement:
        comparison.failures.append(
            f"top-5 agreement {comparison.top5_agreement:.2%} < {tol.min_top5_agreement:.0%}"
        )
    if labels is not None and reference_accuracy is not None and comparison.top1_accuracy is not None:
        drop = (reference_accuracy - comparison.top1_accuracy) * 100
        if drop > tol.max_accuracy_drop:
            comparison.failures.append(
                f"top-1 accuracy {comparison.top1_accuracy:.2%} is {drop:.2f} points below FP32 PyTorch "
                f"({reference_accuracy:.2%}); allowed {tol.max_accuracy_drop:g}"
            )
    if comparison.failures:
        comparison.status = "fail"
    return comparison


def run_checks(
    model: Any,
    targets: Sequence[Target],
    batches: Sequence[np.ndarray],
    outdir: str | os.PathLike[str],
    *,
    labels: np.ndarray | None = None,
    data_summary: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> CheckReport:
    """Reference, Polygraphy JSON files, every comparison, ``report.json`` and ``report.md``."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    check_dir = outdir / "check"
    inputs_json = check_dir / "inputs.json"
    reference_json = check_dir / "reference.json"
    start = time.perf_counter()
    reference = reference_outputs(model, batches)
    save_polygraphy_inputs(batches, inputs_json)
    save_polygraphy_outputs(reference, reference_json)
    ref_all = np.concatenate(reference)
    ref_accuracy = float((ref_all.argmax(1) == labels).mean()) if labels is not None else None
    reference_info = {
        "runner": REFERENCE_RUNNER,
        "samples": int(ref_all.shape[0]),
        "batches": [int(b.shape[0]) for b in batches],
        "inputs_json": str(inputs_json),
        "reference_json": str(reference_json),
        "top1_accuracy": ref_accuracy,
        "logit_scale": float(np.abs(ref_all).max()),
        "data": data_summary or {},
        "seconds": round(time.perf_counter() - start, 3),
    }
    comparisons = []
    for target in targets:
        t0 = time.perf_counter()
        try:
            outputs = run_target(target, batches)
        except _Skip as skip:
            tol = TOLERANCES[target.precision]
            atol = tol.atol(reference_info["logit_scale"])
            comparisons.append(
                Comparison(
                    name=target.name,
                    path=target.path,
                    precision=target.precision,
                    kind=target.kind,
                    status="skipped",
                    reason=str(skip),
                    atol=atol,
                    rtol=tol.rtol,
                    check_error_stat=tol.check_error_stat,
                    command=polygraphy_command(
                        target, str(inputs_json), str(reference_json), atol, tol.rtol, tol.check_error_stat
                    ),
                )
            )
            if log:
                log(f"check {target.name}: skipped ({skip})")
            continue
        comparison = compare(
            target,
            reference,
            outputs,
            labels=labels,
            reference_accuracy=ref_accuracy,
            inputs_json=str(inputs_json),
            reference_json=str(reference_json),
        )
        comparison.seconds = round(time.perf_counter() - t0, 3)
        with contextlib.suppress(Exception):
            save_polygraphy_outputs(
                outputs, check_dir / f"outputs.{_slug(target.name)}.json", _slug(target.name)
            )
        comparisons.append(comparison)
        if log:
            log(f"check {target.name}: {summary_line(comparison)}")
    report = CheckReport(reference=reference_info, comparisons=comparisons)
    write_report(report, outdir)
    return report


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """NaN (a number not measured: skipped target) becomes ``null`` so the JSON stays standard."""
    return {k: (None if isinstance(v, float) and v != v else v) for k, v in record.items()}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def summary_line(c: Comparison) -> str:
    """One line of numbers and verdict."""
    if c.status == "skipped":
        return f"SKIPPED ({c.reason})"
    acc = f"  top-1 acc {c.top1_accuracy:.2%}" if c.top1_accuracy is not None else ""
    verdict = "PASS" if c.status == "pass" else "FAIL: " + "; ".join(c.failures)
    return (
        f"max abs {c.max_abs_diff:.3g}  mean abs {c.mean_abs_diff:.3g}  cos min {c.min_cosine:.5f}  "
        f"top-1 agree {c.top1_agreement:.2%}  top-5 agree {c.top5_agreement:.2%}{acc}  {verdict}"
    )


def render_markdown(report: CheckReport) -> str:
    """``report.md``: the verdicts, the numbers, the tolerances and the commands to rerun."""
    ref = report.reference
    lines = [
        "# edge-biformer accuracy check",
        "",
        f"Result: **{'PASS' if report.passed else 'FAIL'}** ({report.created})",
        "",
        f"Reference: FP32 PyTorch on {ref['samples']} samples in batches {ref['batches']} "
        f"(data: {ref['data'].get('source', 'n/a')}, {ref['data'].get('kind', '')}); "
        f"max |logit| {ref['logit_scale']:.4g}"
        + (f"; top-1 accuracy {ref['top1_accuracy']:.2%}" if ref.get("top1_accuracy") is not None else "")
        + ".",
        "",
        "| artifact | precision | status | max abs diff | mean abs diff | min cosine | top-1 agree "
        "| top-5 agree | top-1 acc | atol / rtol (stat) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in report.comparisons:
        if c.status == "skipped":
            lines.append(
                f"| {c.name} | {c.precision} | skipped | | | | | | | "
                f"{c.atol:g} / {c.rtol:g} ({c.check_error_stat}) |"
            )
            continue
        acc = f"{c.top1_accuracy:.2%}" if c.top1_accuracy is not None else ""
        lines.append(
            f"| {c.name} | {c.precision} | {c.status.upper()} | {c.max_abs_diff:.3g} | "
            f"{c.mean_abs_diff:.3g} | {c.min_cosine:.5f} | {c.top1_agreement:.2%} | "
            f"{c.top5_agreement:.2%} | {acc} | "
            f"{c.atol:g} / {c.rtol:g} ({c.check_error_stat}) |"
        )
    failures = [c for c in report.comparisons if c.failures]
    if failures:
        lines += ["", "## Failures", ""]
        for c in failures:
            lines += [f"- **{c.name}**: " + "; ".join(c.failures)]
    skipped = [c for c in report.comparisons if c.status == "skipped"]
    if skipped:
        lines += ["", "## Not run here", ""]
        for c in skipped:
            lines.append(f"- **{c.name}** (`{c.path}`): {c.reason}")
    lines += [
        "",
        "## Tolerances",
        "",
        "| precision | atol (x max abs logit) | rtol | error stat | min cosine | top-1 agree | top-5 agree "
        "| max top-1 drop (points) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in TOLERANCES.values():
        lines.append(
            f"| {t.precision} | {t.atol_frac:g} | {t.rtol:g} | {t.check_error_stat} | {t.min_cosine} | "
            f"{t.min_top1_agreement:.0%} | {t.min_top5_agreement:.0%} | {t.max_accuracy_drop:g} |"
        )
    lines += [
        "",
        "See docs/build.md for why these values.",
        "",
        "## Rerun with Polygraphy",
        "",
        f"Inputs: `{ref['inputs_json']}` (Polygraphy input JSON); reference: `{ref['reference_json']}` "
        "(Polygraphy RunResults of FP32 PyTorch).",
        "",
        "```sh",
    ]
    for c in report.comparisons:
        lines.append(f"# {c.name}{' (on the target GPU)' if c.kind != 'onnxrt' else ''}")
        lines.append(c.command)
    lines += ["```", ""]
    return "\n".join(lines)


def write_report(report: CheckReport, outdir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``outdir`` (atomically)."""
    outdir = Path(outdir)
    json_path, md_path = outdir / "report.json", outdir / "report.md"
    with atomic_output(json_path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2, default=_json_default) + "\n")
    with atomic_output(md_path, suffix=".md") as tmp:
        tmp.write_text(render_markdown(report))
    return json_path, md_path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def require_targets(targets: Sequence[Target]) -> None:
    """Fail clearly when a listed artifact is missing."""
    for target in targets:
        if not Path(target.path).is_file():
            raise EdgeBiformerError(
                f"{target.path} ({target.name}) is missing from the build directory; rebuild it with "
                "`edge-biformer build` or remove it from manifest.json"
            )
