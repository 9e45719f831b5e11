"""The result of a build check: one row per artifact, ``report.json`` and ``report.md``."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.check.tolerances import TOLERANCES
from edge_biformer.stages import PRECISIONS
from edge_biformer.utils import atomic_output

__all__ = ["CheckReport", "TargetResult", "render_markdown", "summary_line", "write_report"]


@dataclass
class TargetResult:
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
    notes: list[str] = field(default_factory=list)
    command: str = ""
    seconds: float = 0.0
    #: Per BRA block, the routing against FP32 (:class:`edge_biformer.check.routing.BlockRouting`
    #: records, worst first); ``None`` with ``routing_note`` saying why it was not measured.
    routing: list[dict[str, Any]] | None = None
    routing_note: str = ""
    #: Per output of a graph with several (``{name: {kind, passed, max_abs_diff, max_rel_diff,
    #: mean_abs_diff, min_cosine, top1_agreement, scale}}``); empty for one output.
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def worst_routing(self) -> dict[str, Any] | None:
        """The block with the lowest routing agreement, if routing was measured."""
        return min(self.routing, key=lambda b: b["agreement"]) if self.routing else None


@dataclass
class CheckReport:
    """All comparisons of one check."""

    reference: dict[str, Any]
    comparisons: list[TargetResult]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def passed(self) -> bool:
        """True when no comparison failed (skipped ones do not fail the check)."""
        return all(c.status != "fail" for c in self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (a number not measured, NaN, becomes ``null``)."""
        return {
            "passed": self.passed,
            "created": self.created,
            "reference": self.reference,
            "comparisons": [_finite(asdict(c)) for c in self.comparisons],
        }

    def summary(self) -> dict[str, Any]:
        """The build manifest's ``check`` section."""
        return {
            "passed": self.passed,
            "report": "report.md",
            "comparisons": {c.name: c.status for c in self.comparisons},
        }


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return clean(record)


def summary_line(c: TargetResult) -> str:
    """One line of numbers and verdict."""
    if c.status == "skipped":
        return f"SKIPPED ({c.reason})"
    acc = f"  top-1 acc {c.top1_accuracy:.2%}" if c.top1_accuracy is not None else ""
    verdict = "PASS" if c.status == "pass" else "FAIL: " + "; ".join(c.failures)
    if c.outputs:
        per = "; ".join(
            f"{name}: rel {o['max_rel_diff']:.3g}"
            + (f" cos {o['min_cosine']:.5f}" if o.get("min_cosine") is not None else "")
            + (f" top-1 {o['top1_agreement']:.2%}" if o.get("top1_agreement") is not None else "")
            for name, o in c.outputs.items()
        )
        return f"{len(c.outputs)} output{'s' if len(c.outputs) > 1 else ''} ({per})  {verdict}"
    return (
        f"max abs {c.max_abs_diff:.3g}  mean abs {c.mean_abs_diff:.3g}  cos min {c.min_cosine:.5f}  "
        f"top-1 agree {c.top1_agreement:.2%}  top-5 agree {c.top5_agreement:.2%}{acc}  {verdict}"
    )


def routing_line(c: TargetResult) -> str | None:
    """``routing: worst block ... 97.48 % identical (29/1152 flipped)``, or why not measured."""
    worst = c.worst_routing
    if worst is None:
        return f"routing: not measured ({c.routing_note})" if c.routing_note else None
    return (
        f"routing: worst of {len(c.routing or [])} blocks {worst['block']}: {worst['agreement']:.2%} of "
        f"query regions route as FP32 ({worst['flipped']}/{worst['pairs']} flipped, mean overlap "
        f"{worst['mean_overlap']:.2%})"
    )


def _margin(stats: dict[str, float], key: str) -> str:
    return f"{stats[key]:.3g}" if stats else ""


def _routing_section(report: CheckReport) -> list[str]:
    """``## Routing``: per artifact and BRA block, the top-k routing against FP32, worst block first."""
    measured = [c for c in report.comparisons if c.routing]
    notes = [c for c in report.comparisons if not c.routing and c.routing_note]
    if not measured and not notes:
        return []
    policy = report.reference.get("precision_policy") or {}
    lines = [
        "",
        "## Routing",
        "",
        "Per BRA block: the share of (image, query region) pairs whose top-k region **set** equals FP32's "
        "(order inside a set does not matter), the mean overlap |A & B| / k, and the FP32 routing margin "
        "(k-th minus (k+1)-th routing logit) of the pairs that flipped (median) and of those that did not "
        "(10th percentile). The reference routing is the FP32 export in onnxruntime.",
    ]
    if policy:
        lines += ["", "Precision policy: " + ", ".join(f"{k} {v}" for k, v in policy.items()) + "."]
    for c in measured:
        lines += [
            "",
            f"**{c.name}**",
            "",
            "| block | regions | topk | identical | mean overlap | flipped | margin flipped (median) "
            "| margin kept (p10) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for b in sorted(c.routing or [], key=lambda b: b["agreement"]):
            lines.append(
                f"| {b['block']} | {b['regions']} | {b['topk']} | {b['agreement']:.2%} | "
                f"{b['mean_overlap']:.2%} | {b['flipped']}/{b['pairs']} | "
                f"{_margin(b['margin_flipped'], 'median')} | {_margin(b['margin_kept'], 'p10')} |"
            )
    if notes:
        lines += [""] + [f"- **{c.name}**: routing not measured: {c.routing_note}" for c in notes]
    return lines


def _warnings(ref: dict[str, Any]) -> list[str]:
    """Warnings: random weights, and calibration or check data from the built-in demo photographs."""
    used = [
        what
        for what, summary in (("calibrated", ref.get("calibration") or {}), ("checked", ref["data"]))
        if summary.get("kind") == "demo"
    ]
    lines = []
    if ref.get("random_weights"):
        lines += [
            "**Random weights** (no `--weights`): an untrained head decides its classes by near-ties, "
            "so the top-1/top-5 agreement rules are measured and not judged; the error and cosine rules "
            "judge. Build with `--weights` for a check of the model's decisions.",
            "",
        ]
    if not used:
        return lines
    return [
        *lines,
        f"**Warning: {' and '.join(used)} on the built-in demo set** (photographs bundled with "
        "scikit-image). That is enough to try the tool and no evidence for a deployment: calibrate on "
        "a few hundred of the deployment's own images (`--calib-data DIR`) and check on held-out ones "
        "(`--eval-data DIR`).",
        "",
    ]


def _outputs_section(report: CheckReport) -> list[str]:
    """``## Outputs``: a graph with several outputs is judged output by output, each at its own range."""
    rows = [c for c in report.comparisons if c.outputs]
    if not rows:
        return []
    lines = [
        "",
        "## Outputs",
        "",
        "Each output is judged alone with its precision's rules at its own range (atol = fraction x "
        "max |reference output|): `classifier` outputs (rank 2, `[N, classes]`) by every rule, `dense` "
        "ones (feature maps, detection heads, segmentation maps) by the error rules and the per-sample "
        "cosine; top-1/top-5 agreement and accuracy apply to classifier outputs only.",
        "",
        "| artifact | output | kind | status | max abs diff | max rel diff | mean abs diff | min cosine "
        "| top-1 agree |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in rows:
        for name, o in c.outputs.items():
            cos = f"{o['min_cosine']:.5f}" if o.get("min_cosine") is not None else ""
            top1 = f"{o['top1_agreement']:.2%}" if o.get("top1_agreement") is not None else ""
            lines.append(
                f"| {c.name} | {name} | {o['kind']} | {'PASS' if o['passed'] else 'FAIL'} | "
                f"{o['max_abs_diff']:.3g} | {o['max_rel_diff']:.3g} | {o['mean_abs_diff']:.3g} | {cos} | "
                f"{top1} |"
            )
    return lines


def render_markdown(report: CheckReport) -> str:
    """``report.md``: the verdicts, the numbers, the tolerances and the commands to rerun."""
    ref = report.reference
    lines = [
        "# edge-biformer accuracy check",
        "",
        f"Result: **{'PASS' if report.passed else 'FAIL'}** ({report.created})",
        "",
        f"Reference: {ref.get('description', 'FP32 PyTorch')} on {ref['samples']} samples in batches "
        f"{ref['batches']} "
        f"(data: {ref['data'].get('source', 'n/a')}, {ref['data'].get('kind', '')}); "
        + (
            f"max |logit| {ref['logit_scale']:.4g}"
            if len(ref.get("outputs") or {"logits": 0}) == 1
            else "max |output| "
            + ", ".join(f"{n} {o['scale']:.4g}" for n, o in (ref.get("outputs") or {}).items())
        )
        + (f"; top-1 accuracy {ref['top1_accuracy']:.2%}" if ref.get("top1_accuracy") is not None else "")
        + ".",
        "",
        *_warnings(ref),
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
        top1 = f"{c.top1_agreement:.2%}" if math.isfinite(c.top1_agreement) else ""
        top5 = f"{c.top5_agreement:.2%}" if math.isfinite(c.top5_agreement) else ""
        lines.append(
            f"| {c.name} | {c.precision} | {c.status.upper()} | {c.max_abs_diff:.3g} | "
            f"{c.mean_abs_diff:.3g} | {c.min_cosine:.5f} | {top1} | "
            f"{top5} | {acc} | {c.atol:g} / {c.rtol:g} ({c.check_error_stat}) |"
        )
    lines += _outputs_section(report)
    failures = [c for c in report.comparisons if c.failures]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- **{c.name}**: " + "; ".join(c.failures) for c in failures]
    noted = [c for c in report.comparisons if c.notes]
    if noted:
        lines += ["", "## Notes", ""]
        lines += [f"- **{c.name}**: " + "; ".join(c.notes) for c in noted]
    lines += _routing_section(report)
    skipped = [c for c in report.comparisons if c.status == "skipped"]
    if skipped:
        lines += ["", "## Not run here", ""]
        lines += [f"- **{c.name}** (`{c.path}`): {c.reason}" for c in skipped]
    lines += [
        "",
        "## Tolerances",
        "",
        "| precision | atol (x max abs logit) | rtol | error stat | min cosine | top-1 agree | top-5 agree "
        "| max top-1 drop (points) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in PRECISIONS.values():
        t = TOLERANCES[p.tolerance]
        lines.append(
            f"| {p.name} | {t.atol_frac:g} | {t.rtol:g} | {t.error_stat} | {t.min_cosine} | "
            f"{t.min_top1_agreement:.0%} | {t.min_top5_agreement:.0%} | {t.max_accuracy_drop:g} |"
        )
    lines += [
        "",
        "See docs/build.md for why these values.",
        "",
        "## Rerun with Polygraphy",
        "",
        f"Inputs: `{ref['inputs_json']}` (Polygraphy input JSON); reference: `{ref['reference_json']}` "
        f"(Polygraphy RunResults of {ref.get('description', 'FP32 PyTorch')}).",
        "",
        "A command below repeats Polygraphy's part of the verdict: the elementwise or mean error within "
        "atol/rtol. The other rules (min cosine, top-1/top-5 agreement judged by their 95 % bound, "
        "top-1 accuracy drop) are not expressible in Polygraphy; `edge-biformer check "
        f"{ref.get('outdir', 'OUTDIR')}` repeats every rule on the same saved inputs and reference.",
        "",
        "```sh",
    ]
    for c in report.comparisons:
        lines.append(f"# {c.name}{' (on the target GPU)' if c.kind != 'onnxrt' else ''}")
        lines.append(c.command)
    lines += ["```", ""]
    return "\n".join(lines)


def write_report(report: CheckReport, outdir: str | Path) -> tuple[Path, Path]:
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
