"""Judging each artifact of a build against the reference: the rows of the report.

:func:`compare_targets` runs every target (:mod:`edge_biformer.check.runners`) on the check batches,
judges it with its precision's entry of the tolerance table (:func:`judge`: :func:`compare` per
output, each at its own range, and Polygraphy's comparator), measures its routing against the FP32
export's (:mod:`edge_biformer.check.routing`), and writes the Polygraphy JSON files and the report.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.check.compare import compare
from edge_biformer.check.polygraphy_io import (
    REFERENCE_RUNNER,
    as_results,
    load_polygraphy_inputs,
    load_polygraphy_outputs,
    polygraphy_command,
    polygraphy_compare,
    save_polygraphy_inputs,
    save_polygraphy_outputs,
)
from edge_biformer.check.reference import keep_previous
from edge_biformer.check.report import CheckReport, TargetResult, routing_line, summary_line, write_report
from edge_biformer.check.runners import Skip, Target, run_target
from edge_biformer.check.tolerances import TOLERANCES, Tolerance
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.onnx_io import INPUT_NAME, graph_interface, load_model
from edge_biformer.stages import PRECISIONS
from edge_biformer.utils import log

__all__ = ["compare_targets", "judge", "output_scales", "tie_exclusion"]


def _result(
    target: Target,
    status: str,
    scale: float | dict[str, float],
    inputs_json: str,
    reference_json: str,
    **fields: Any,
) -> TargetResult:
    """A row of the report, with the tolerance of the target's precision and its Polygraphy command.

    ``scale``: ``max |reference|`` of the one output, or per output name (each gets its own atol).
    """
    tol = TOLERANCES[PRECISIONS[target.precision].tolerance]
    assert tol.rtol is not None and tol.error_stat is not None
    if isinstance(scale, dict) and len(scale) > 1:
        atols: float | dict[str, float] = {name: tol.atol(s) for name, s in scale.items()}
        atol = max(atols.values())  # type: ignore[union-attr]
    else:
        atol = tol.atol(next(iter(scale.values())) if isinstance(scale, dict) else scale)
        atols = atol
    return TargetResult(
        name=target.name,
        path=target.path,
        precision=target.precision,
        kind=target.kind,
        status=status,
        atol=atol,
        rtol=tol.rtol,
        check_error_stat=tol.error_stat,
        command=polygraphy_command(target, inputs_json, reference_json, atols, tol.rtol, tol.error_stat),
        **fields,
    )


def output_scales(reference: Sequence[Any]) -> dict[str, float]:
    """``max |reference|`` per output name (float outputs; integer outputs get 1)."""
    results = as_results(reference)
    scales: dict[str, float] = {}
    for name in results[0] if results else ():
        values = [np.asarray(r[name]) for r in results]
        floats = [v for v in values if np.issubdtype(v.dtype, np.floating) and v.size]
        scales[name] = max((float(np.abs(v).max()) for v in floats), default=1.0)
    return scales


def judge(
    target: Target,
    reference: Sequence[Any],
    outputs: Sequence[Any],
    *,
    labels: np.ndarray | None,
    reference_accuracy: float | None,
    inputs_json: str,
    reference_json: str,
    judge_decisions: bool = True,
    keep: Sequence[np.ndarray] | None = None,
) -> TargetResult:
    """Judge ``outputs`` of ``target`` against ``reference`` with the tolerance of its precision.

    ``reference``/``outputs``: per batch, an array (the one output) or ``{output name: array}``. Each
    output is judged alone with the precision's entry, with its own range: rank-2 ``[N, classes]``
    outputs by every rule (cosine, top-1/top-5 agreement, accuracy with ``labels``: the first such
    output), dense outputs (feature maps, detection heads) by the error and per-sample cosine rules.
    ``judge_decisions=False`` (random weights): the class-agreement rules are reported, not judged.
    ``keep``: per batch, the sample indices Polygraphy's elementwise rule judges (the others flipped
    their routing at a tie, :func:`tie_exclusion`); ``None``: every sample. The other rules always
    judge every sample.
    """
    tol = TOLERANCES[PRECISIONS[target.precision].tolerance]
    ref, out = as_results(reference), as_results(outputs)
    names = list(ref[0]) if ref else []
    classifier = next((n for n in names if np.asarray(ref[0][n]).ndim == 2), None)
    per_output: dict[str, dict[str, Any]] = {}
    comparisons = {}
    for name in names:
        expected = [r[name] for r in ref]
        if any(name not in o for o in out):
            actual_names = sorted(out[0]) if out else []
            c = compare(expected, expected, tol)
            c.fail(f"the artifact has no output '{name}' (it has {', '.join(actual_names) or 'none'})")
        else:
            c = compare(
                [o[name] for o in out], expected, tol,
                labels=labels if name == classifier else None,
                reference_accuracy=reference_accuracy if name == classifier else None,
                judge_decisions=judge_decisions,
            )  # fmt: skip
        comparisons[name] = c
        per_output[name] = {
            "kind": "classifier" if c.top1_agreement is not None else "dense",
            "passed": c.passed,
            "max_abs_diff": c.max_abs_diff,
            "max_rel_diff": c.max_rel_diff,
            "mean_abs_diff": c.mean_abs_diff,
            "min_cosine": c.min_cosine,
            "top1_agreement": c.top1_agreement,
            "scale": c.expected_scale,
        }
    several = len(names) > 1
    main = comparisons[classifier] if classifier is not None else next(iter(comparisons.values()))
    result = _result(
        target,
        "pass",
        {n: c.expected_scale for n, c in comparisons.items()},
        inputs_json,
        reference_json,
        max_abs_diff=max(c.max_abs_diff for c in comparisons.values()),
        mean_abs_diff=max(c.mean_abs_diff for c in comparisons.values()),
        max_rel_diff=max(c.max_rel_diff for c in comparisons.values()),
        min_cosine=_number(min((c.min_cosine for c in comparisons.values() if c.min_cosine is not None),
                               default=None)),
        mean_cosine=_number(main.mean_cosine),
        top1_agreement=_number(main.top1_agreement),
        top5_agreement=_number(main.top5_agreement),
        top1_accuracy=main.top1_accuracy,
        outputs=per_output if several or classifier is None else {},
    )  # fmt: skip
    atols = {n: tol.atol(c.expected_scale) for n, c in comparisons.items()}
    judged_ref, judged_out = (ref, out) if keep is None else (_select(ref, keep), _select(out, keep))
    result.polygraphy_pass = polygraphy_compare(
        judged_ref, judged_out, atols if several else result.atol, result.rtol, result.check_error_stat
    )
    if not result.polygraphy_pass:
        max_abs, mean_abs = result.max_abs_diff, result.mean_abs_diff
        if keep is not None:
            max_abs, mean_abs = _abs_diffs(judged_ref, judged_out, tol)
        result.failures.append(
            f"polygraphy ({result.check_error_stat}, atol {result.atol:g}, rtol {result.rtol:g}): max abs "
            f"diff {max_abs:.3g}, mean abs diff {mean_abs:.3g}"
        )
    for name, c in comparisons.items():
        prefix = f"output '{name}': " if several else ""
        result.failures += [prefix + f for f in c.failures]
        result.notes += [prefix + n for n in c.notes if prefix + n not in result.notes]
    if result.failures:
        result.status = "fail"
        if result.polygraphy_pass:
            result.notes.append(
                "Polygraphy's comparator passes (its printed command passes); the failing rules are "
                "edge-biformer's (repeat them with `edge-biformer check`)"
            )
    return result


def _select(results: Sequence[dict[str, Any]], keep: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    """Per batch, the samples ``keep`` names (batches left with none are dropped)."""
    return [
        {name: np.asarray(value)[kept] for name, value in batch.items()}
        for batch, kept in zip(results, keep, strict=True)
        if kept.size
    ]


def _abs_diffs(
    reference: Sequence[dict[str, Any]], outputs: Sequence[dict[str, Any]], tol: Tolerance
) -> tuple[float, float]:
    """Max and mean abs diff of these batches, as the row reports them (:func:`compare`, every output)."""
    names = list(reference[0]) if reference else []
    actual = {n: [o[n] for o in outputs if n in o] for n in names}
    c = compare(actual, {n: [r[n] for r in reference] for n in names}, tol)
    return c.max_abs_diff, c.mean_abs_diff


def tie_exclusion(sizes: Sequence[int], tied: np.ndarray, static_batch: bool) -> list[np.ndarray]:
    """Per batch of ``sizes``, the sample indices the elementwise rule keeps when ``tied`` are left out.

    A graph with a static batch cannot take a smaller batch in the printed Polygraphy command, so
    there a batch holding a tie-flipped sample is left out whole.
    """
    keep, start = [], 0
    for size in sizes:
        mask = ~tied[start : start + size]
        if static_batch and not mask.all():
            mask = np.zeros(size, dtype=bool)
        keep.append(np.flatnonzero(mask))
        start += size
    return keep


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def compare_targets(
    targets: Sequence[Target],
    batches: Sequence[np.ndarray],
    reference: Sequence[Any],
    outdir: str | os.PathLike[str],
    *,
    labels: np.ndarray | None = None,
    data_summary: dict[str, Any] | None = None,
    runner: str = REFERENCE_RUNNER,
    description: str = "FP32 PyTorch",
    calibration: dict[str, Any] | None = None,
    judge_decisions: bool = True,
    routing_reference: str | None = None,
    min_routing_agreement: float | None = None,
    precision_policy: dict[str, Any] | None = None,
) -> CheckReport:
    """Polygraphy JSON files, every comparison, ``report.json`` and ``report.md``.

    ``runner`` names the reference in Polygraphy's results, ``description`` in the report;
    ``calibration`` is the build's calibration summary (the report warns about the demo set);
    ``routing_reference`` the FP32 export whose routing each ONNX artifact's is compared with
    (:mod:`edge_biformer.check.routing`; ``None``: routing not measured).
    """
    outdir = Path(outdir)
    check_dir = outdir / "check"
    inputs_json, reference_json = str(check_dir / "inputs.json"), str(check_dir / "reference.json")
    start = time.perf_counter()
    reference = as_results(reference)
    _keep_replaced(check_dir, batches, reference)
    input_name = targets[0].input_name if targets else INPUT_NAME
    save_polygraphy_inputs(batches, inputs_json, input_name)
    save_polygraphy_outputs(reference, reference_json, runner)
    scales = output_scales(reference)
    names = list(scales)
    classifier = next((n for n in names if reference[0][n].ndim == 2), None)
    ref_all = np.concatenate([r[classifier if classifier is not None else names[0]] for r in reference])
    ref_accuracy = (
        float((ref_all.argmax(1) == labels).mean()) if labels is not None and classifier is not None else None
    )
    reference_info = {
        "runner": runner,
        "description": description,
        "samples": int(ref_all.shape[0]),
        "batches": [int(b.shape[0]) for b in batches],
        "inputs_json": inputs_json,
        "reference_json": reference_json,
        "top1_accuracy": ref_accuracy,
        "logit_scale": scales[classifier if classifier is not None else names[0]],
        "outputs": {n: {"shape": list(reference[0][n].shape[1:]), "scale": v} for n, v in scales.items()},
        "data": data_summary or {},
        "calibration": calibration,
        "random_weights": not judge_decisions,
        "precision_policy": precision_policy,
        "outdir": str(outdir),
        "seconds": round(time.perf_counter() - start, 3),
    }
    routing = _RoutingCheck(routing_reference, batches, min_routing_agreement)
    written: dict[tuple[tuple[int, ...], ...], tuple[str, str]] = {}  # per selection: its files
    results = []
    for target in targets:
        t0 = time.perf_counter()
        broken = _unreadable(target)
        if broken is not None:  # a truncated or foreign file fails its row, the others are still checked
            results.append(_result(target, "fail", scales, inputs_json, reference_json, failures=[broken]))
            log(f"check {target.name}: FAIL ({broken})")
            continue
        keep, note = routing.tie_exclusion(target, batches)
        judged_inputs, judged_reference = inputs_json, reference_json
        if keep is not None:  # the Polygraphy command reads the samples the elementwise rule judged
            selection = tuple(tuple(k.tolist()) for k in keep)
            if selection not in written:
                files = (
                    str(check_dir / f"inputs.{_slug(target.name)}.json"),
                    str(check_dir / f"reference.{_slug(target.name)}.json"),
                )
                kept_batches = [b[k] for b, k in zip(batches, keep, strict=True) if k.size]
                save_polygraphy_inputs(kept_batches, files[0], input_name)
                save_polygraphy_outputs(_select(reference, keep), files[1], runner)
                written[selection] = files
            judged_inputs, judged_reference = written[selection]
        try:
            outputs = run_target(target, batches)
        except Skip as skip:
            results.append(
                _result(target, "skipped", scales, judged_inputs, judged_reference, reason=str(skip))
            )
            log(f"check {target.name}: skipped ({skip})")
            continue
        result = judge(
            target,
            reference,
            outputs,
            labels=labels,
            reference_accuracy=ref_accuracy,
            inputs_json=judged_inputs,
            reference_json=judged_reference,
            judge_decisions=judge_decisions,
            keep=keep,
        )
        if note:
            result.notes.append(note)
        warning = routing.measure(target, result)
        result.seconds = round(time.perf_counter() - t0, 3)
        with contextlib.suppress(Exception):
            save_polygraphy_outputs(
                outputs, check_dir / f"outputs.{_slug(target.name)}.json", _slug(target.name)
            )
        results.append(result)
        log(f"check {target.name}: {summary_line(result)}")
        if note:
            log(f"check {target.name}: {note}")
        line = routing_line(result)
        if line:
            log(f"check {target.name}: {line}")
        if warning:
            log(warning)
    report = CheckReport(reference=reference_info, comparisons=results)
    write_report(report, outdir)
    return report


class _RoutingCheck:
    """The routing of each ONNX artifact against the FP32 export's, on the check batches."""

    def __init__(self, reference: str | None, batches: Sequence[np.ndarray], minimum: float | None) -> None:
        from edge_biformer.check.routing import run_routing

        self.batches, self.minimum, self.reference_path = batches, minimum, reference
        self.reference: dict[str, Any] = {}
        #: Per artifact path: its routing, and whether its batch is static.
        self._routed: dict[str, tuple[dict[str, Any], bool]] = {}
        #: Per precision: the tie-flipped samples of its plugin graph (what its engine is built from),
        #: and whether that graph's batch is static.
        self._plugin_ties: dict[str, tuple[np.ndarray, list[str], bool]] = {}
        self.why = "no FP32 export to take the reference routing from"
        if reference is not None:
            self.reference = run_routing(load_model(reference, check=False), batches, with_logits=True)
            self.why = "" if self.reference else "the FP32 export has no BRA block"

    def _routing_of(self, target: Target) -> tuple[dict[str, Any], bool] | None:
        """The routing of an ONNX ``target`` on the check batches and whether its batch is static
        (the graph is read and run once), or ``None``."""
        from edge_biformer.check.routing import run_routing

        if target.kind == "tensorrt" or not self.reference:
            return None
        if Path(target.path).resolve() == Path(str(self.reference_path)).resolve():
            return None  # the routing reference itself
        if target.path not in self._routed:
            model = load_model(target.path, check=False)
            static = graph_interface(model).static_batch is not None
            self._routed[target.path] = (run_routing(model, self.batches), static)
        return self._routed[target.path]

    def tie_exclusion(
        self, target: Target, batches: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray] | None, str]:
        """Per batch, the samples the elementwise rule judges (``None``: all), and the report's note.

        Samples whose routing flipped first at a tie of the target's precision
        (:func:`edge_biformer.check.routing.tie_flips`) are left out. An engine's routing is not
        measured: it is given the samples its plugin graph (same precision, ``cpu_session``) flipped.
        """
        from edge_biformer.check.routing import tie_flips

        tie = TOLERANCES[PRECISIONS[target.precision].tolerance].routing_tie
        if tie is None:
            return None, ""
        if target.kind == "tensorrt":
            if target.precision not in self._plugin_ties:
                return None, ""
            tied, blocks, static = self._plugin_ties[target.precision]
            source = "their routing in the plugin graph (an engine's routing is not measured)"
        else:
            measured = self._routing_of(target)
            if measured is None or not measured[0]:
                return None, ""
            routed, static = measured
            tied, blocks = tie_flips(self.reference, routed, tie)
            if target.kind == "cpu_session":
                self._plugin_ties[target.precision] = (tied, blocks, static)
            source = "their routing"
        if not tied.any():
            return None, ""
        keep = tie_exclusion([b.shape[0] for b in batches], tied, static)
        left_out = sum(b.shape[0] for b in batches) - sum(k.size for k in keep)
        whole = " (the graph's batch is static: the batches holding them are left out whole)"
        whole = whole if static else ""
        note = (
            f"{int(tied.sum())} of {tied.size} sample(s) flipped {source} first at a tie (FP32 routing "
            f"margin <= {tie:g} of the routing-logit spread, in {', '.join(blocks)}): {left_out} "
            f"sample(s) are left out of the elementwise rule and of its Polygraphy command's files{whole}; "
            "every other rule (cosine, agreement, accuracy, routing) judges all samples (docs/build.md)"
        )
        return keep, note

    def measure(self, target: Target, result: TargetResult) -> str | None:
        """Fill ``result.routing`` (or ``routing_note``); fail on low agreement, or return a warning."""
        from edge_biformer.check.routing import WARN_BELOW, compare_routing

        if target.kind == "tensorrt":
            result.routing_note = (
                "engines are not measured: that needs a check engine with the routing TopK indices "
                "marked as outputs; the plugin graph's routing (cpu_session) is the closest measurement"
            )
            return None
        if not self.reference:
            result.routing_note = self.why
            return None
        measured = self._routing_of(target)
        if measured is None:
            return None  # the routing reference itself
        blocks = compare_routing(self.reference, measured[0])
        if not blocks:
            result.routing_note = "no BRA block of the FP32 export found in this graph"
            return None
        result.routing = [b.to_dict() for b in blocks]
        worst = result.worst_routing
        assert worst is not None
        agreement = worst["agreement"]
        if self.minimum is not None and agreement < self.minimum:
            result.status = "fail"
            result.failures.append(
                f"routing of {worst['block']}: {agreement:.2%} of query regions route as FP32 < "
                f"--min-routing-agreement {self.minimum:.2%}"
            )
        elif agreement < WARN_BELOW:
            return (
                f"WARNING: check {target.name}: routing of {worst['block']} matches FP32 for only "
                f"{agreement:.2%} of query regions (< {WARN_BELOW:.0%}); see the Routing section of "
                "report.md (--protect-routing inputs keeps it FP32-identical, docs/routing.md)"
            )
        return None


def _unreadable(target: Target) -> str | None:
    """Why an ONNX target cannot be read (truncated, empty, not ONNX), or ``None``."""
    if target.kind == "tensorrt":
        return None
    try:
        load_model(target.path, check=False, load_external_data=False)
    except EdgeBiformerError as err:
        return str(err)
    return None


def _same(a: Any, b: Any) -> bool:
    """Equal arrays, or equal ``{name: array}`` results."""
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict) and isinstance(b, dict) and list(a) == list(b)
            and all(np.array_equal(a[k], b[k]) for k in a)
        )  # fmt: skip
    return np.array_equal(a, b)


def _keep_replaced(check_dir: Path, batches: Sequence[np.ndarray], reference: Sequence[Any]) -> None:
    """Before other inputs or another reference replace the saved ones, keep those aside (each alone)."""
    kept = []
    for path, new, load in (
        (check_dir / "inputs.json", batches, load_polygraphy_inputs),
        (check_dir / "reference.json", reference, load_polygraphy_outputs),
    ):
        if not path.is_file():
            continue
        try:
            old = load(path)
            same = len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new, strict=True))
        except Exception:  # an unreadable saved file is kept too
            same = False
        if not same:
            kept.append(keep_previous(path))
    if kept:
        log(f"check: the files this check replaces are kept as {', '.join(str(k) for k in kept)}")
