"""The table of stages and precisions: what ``edge-biformer build`` runs, writes and prints.

One table drives the pipeline (:mod:`edge_biformer.pipeline` loops over :func:`plan`), the CLI
(``--precision`` choices, the printed next commands), the checks (the tolerance entry and the
onnxruntime optimization level of each precision) and the docs (``python -m edge_biformer.stages``
prints the Markdown tables of docs/architecture.md), as Ultralytics' ``export_formats()`` does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

__all__ = ["PRECISIONS", "STAGES", "Precision", "Stage", "artifact_name", "markdown", "plan", "stage"]


@dataclass(frozen=True)
class Precision:
    """One target precision.

    ``graph`` is the kind of ONNX graph the quantize stage makes for it (``plain`` for fp32);
    ``tolerance`` the entry of :data:`edge_biformer.check.TOLERANCES` the build check judges with;
    ``ort_optimization`` the onnxruntime graph optimization level its graphs are checked at on the
    CPU (onnxruntime mis-executes float16 Q/DQ graphs when optimizing,
    :func:`edge_biformer.runtime.cpu.runs_unoptimized`); ``trtexec`` and ``polygraphy`` the flags that
    build its engine strongly typed (TensorRT >= 10); ``trtexec_weak`` and ``polygraphy_weak`` those of the
    weakly typed build of TensorRT 8.5/8.6, which has no strong typing and needs precision flags.
    """

    name: str
    graph: str
    tolerance: str
    ort_optimization: str
    trtexec: tuple[str, ...]
    polygraphy: tuple[str, ...]
    doc: str
    trtexec_weak: tuple[str, ...] = ()
    polygraphy_weak: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline: the module whose ``run()`` it is, what it writes, where it runs."""

    name: str
    module: str
    artifact: str  # ``{precision}`` is replaced by the precision's name
    side_artifacts: tuple[str, ...]
    runs_on: str
    command: str  # the CLI subcommand that runs the stage alone
    doc: str


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision(
            "fp32",
            "plain",
            "build.fp32",
            "ORT_ENABLE_ALL",
            ("--stronglyTyped", "--noTF32"),
            (),
            "float32 throughout; TF32 off so the engine matches PyTorch",
            ("--noTF32",),
            (),
        ),
        Precision(
            "fp16",
            "fp16",
            "build.fp16",
            "ORT_DISABLE_ALL",
            ("--stronglyTyped",),
            ("--strongly-typed",),
            "FP16 compute, float32 I/O; LayerNorm and the routing stay FP32",
            ("--fp16",),
            ("--fp16",),
        ),
        Precision(
            "int8",
            "qdq",
            "build.int8",
            "ORT_DISABLE_ALL",
            ("--stronglyTyped",),
            ("--strongly-typed",),
            "INT8 Q/DQ on weighted ops (calibrated on the CPU), the rest FP16 with LayerNorm/routing FP32",
            ("--int8", "--fp16"),
            ("--int8", "--fp16"),
        ),
    )
}

STAGES: tuple[Stage, ...] = (
    Stage(
        "export",
        "edge_biformer.export",
        "model.onnx",
        ("model.manifest.json",),
        "cpu",
        "edge-biformer export",
        "PyTorch -> ONNX (index gather of the routed K/V), verified in onnxruntime against PyTorch",
    ),
    Stage(
        "quantize",
        "edge_biformer.quantize",
        "model.{precision}.onnx",
        ("model.{precision}.manifest.json", "model.int8.calib.cache"),
        "cpu",
        "edge-biformer quantize",
        "mixed FP16 or INT8 Q/DQ calibrated with onnxruntime (skipped for fp32)",
    ),
    Stage(
        "rewrite",
        "edge_biformer.rewrite",
        "model.{precision}.plugin.onnx",
        ("model.{precision}.plugin.manifest.json",),
        "cpu",
        "edge-biformer rewrite",
        "every BRA routed attention -> one BiLevelRoutingAttention plugin node, checked in onnxruntime",
    ),
    Stage(
        "engine",
        "edge_biformer.engine",
        "model.{precision}.engine",
        ("model.{precision}.engine.manifest.json", "timing.cache"),
        "target GPU",
        "edge-biformer build --from-onnx",
        "TensorRT plan (strongly typed); the commands for the target where TensorRT is absent",
    ),
    Stage(
        "check",
        "edge_biformer.check",
        "report.md",
        ("report.json", "check/inputs.json", "check/reference.json"),
        "cpu (the engine row: target GPU)",
        "edge-biformer check",
        "every artifact against FP32 PyTorch with the precision's tolerance; Polygraphy JSON and commands",
    ),
)


def stage(name: str) -> Stage:
    """The stage called ``name``."""
    return next(s for s in STAGES if s.name == name)


def artifact_name(stage_name: str, precision: str) -> str:
    """The file a stage writes into a build directory for ``precision``."""
    return stage(stage_name).artifact.format(precision=precision)


def plan(
    precision: str, start: str | None, *, quantize: bool = True, rewrite: bool = True, check: bool = True
) -> list[Stage]:
    """The stages a build runs for ``precision`` from a ``start`` graph kind (``None``: from PyTorch).

    A start graph that is already quantized or rewritten skips what it has done; fp32 has no
    quantize stage, nor has ``quantize=False`` (INT8 through the implicit calibrator quantizes in
    the engine stage instead).
    """
    done = {None: set(), "plain": {"export"}, "fp16": {"export", "quantize"}, "qdq": {"export", "quantize"}}
    skipped = set(done.get(start, {"export", "quantize", "rewrite"}))
    if PRECISIONS[precision].graph == "plain" or not quantize:
        skipped.add("quantize")
    if not rewrite:
        skipped.add("rewrite")
    if not check:
        skipped.add("check")
    return [s for s in STAGES if s.name not in skipped]


def markdown() -> str:
    """The stage and precision tables as Markdown (docs/architecture.md holds this text)."""
    lines = [
        "| stage | module (`run()`) | writes | runs on | alone | what it does |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in STAGES:
        writes = ", ".join(f"`{a}`" for a in (s.artifact, *s.side_artifacts))
        lines.append(f"| {s.name} | `{s.module}` | {writes} | {s.runs_on} | `{s.command}` | {s.doc} |")
    lines += [
        "",
        "| precision | graph | tolerance | onnxruntime level | trtexec | polygraphy | what it is |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in PRECISIONS.values():
        lines.append(
            f"| {p.name} | {p.graph} | `{p.tolerance}` | {p.ort_optimization} | `{' '.join(p.trtexec)}` | "
            f"`{' '.join(p.polygraphy) or '-'}` | {p.doc} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
