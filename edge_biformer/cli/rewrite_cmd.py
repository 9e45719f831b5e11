"""``edge-biformer rewrite``: every BRA routed attention of an ONNX graph -> one plugin node."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from edge_biformer.utils import check_onnx_output, log, stage

if TYPE_CHECKING:
    from edge_biformer.surgery.pipeline import RewriteReport


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """``input:2x3x512x640`` (or ``input:[2,3,512,640]``) -> ("input", [2, 3, 512, 640])."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME:DIMS such as input:1x3x512x512, got {text!r}")
    cleaned = dims.strip().strip("[]").replace(",", "x")
    try:
        shape = [int(d) for d in cleaned.split("x") if d]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME:DIMS such as input:1x3x512x512, got {text!r}"
        ) from None
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"dims must be positive integers, got {text!r}")
    return name, shape


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``rewrite``."""
    parser = subparsers.add_parser(
        "rewrite",
        help="replace every BRA routed attention by a BiLevelRoutingAttention TensorRT plugin node",
        description=(
            "Find every Bi-level Routing Attention block of an ONNX graph by the structure of its "
            "computation (our exports and the official BRA module, torchscript or dynamo exporter, auto_pad "
            "or not) and replace its top-k gather attention by one BiLevelRoutingAttention node (domain "
            "trt.plugins). "
            "Routing, padding, LCE, projections and Q/DQ nodes stay as they are. By default each block is "
            "checked on real activations and the rewritten graph against the original in onnxruntime (CPU) "
            "before anything is written."
        ),
    )
    parser.add_argument("input", metavar="IN.onnx", help="the ONNX graph to rewrite")
    parser.add_argument(
        "--output", "-o", required=True, metavar="OUT.onnx", help="the rewritten graph to write"
    )
    parser.add_argument(
        "--allow-none",
        action="store_true",
        help="write the graph unchanged if it has no BRA block (else: error)",
    )
    parser.add_argument(
        "--skip-partial",
        action="store_true",
        help="keep blocks that only partly match (soft routing, pooled K/V...) as native ops, do not fail",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the onnxruntime checks (per block on real activations, and the whole graph); the "
        "structure alone does not prove that a block computes the op",
    )
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        type=parse_input_shape,
        metavar="NAME:DIMS",
        help=(
            "shape of a graph input for the checks, e.g. input:2x3x512x640 (repeatable; default: static "
            "dims, batch 2 for a dynamic first dim, 32*n_win for other dynamic dims)"
        ),
    )
    parser.set_defaults(func=run)
    return parser


_COLUMNS = (("stage", 5), ("found", 5), ("replaced", 8), ("n_win", 5), ("topk", 4), ("heads", 5))
_COLUMNS += (("C_qk", 5), ("C_v", 5))


def _row(values: list[object]) -> str:
    cells = ["-" if v is None else str(v) for v in values]
    fixed = "  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, _COLUMNS, strict=False))
    return "  " + "  ".join([fixed, *cells[len(_COLUMNS) :]])


def print_stage_table(report: RewriteReport) -> None:
    """The per-stage table of BRA blocks found and replaced."""
    log("BRA blocks per stage:")
    print(_row([name for name, _ in _COLUMNS] + ["blocks"]))
    for r in report.stages:
        names = r.first if r.first == r.last else f"{r.first} .. {r.last}"
        print(_row([r.stage, r.found, r.replaced, r.n_win, r.topk, r.num_heads, r.c_qk, r.c_v, names]))
    print(_row(["total", report.found, report.replaced]))


def run(args: argparse.Namespace) -> int:
    """Run ``rewrite``."""
    from edge_biformer.surgery.pipeline import RewriteError, Rewriter, load_onnx, save_onnx, write_manifest

    source = Path(args.input)
    output = check_onnx_output(args.output, source)
    input_shapes = dict(args.input_shape)

    with stage("load onnx") as st:
        model = load_onnx(source)
        st.output = source
        st.details.append(f"{len(model.graph.node)} nodes")
    with stage("find bra blocks") as st:
        rewriter = Rewriter(model, source=str(source))
        result = rewriter.find()
        st.details.append(f"{len(result.matches)} matched, {len(result.partial)} partial")
    if args.no_verify and rewriter.matches:
        log(
            "warning: --no-verify: the blocks are replaced on their structure alone; a layout the matcher "
            "misreads (e.g. channels moved by a Transpose before the q/k/v split) would go unnoticed. "
            "Check the result with edge_biformer.cpu_session against the original graph"
        )
    if not args.no_verify and rewriter.matches:
        with stage("check blocks") as st:
            checks = rewriter.check(input_shapes)
            worst = max((c.max_rel_diff for c in checks), default=0.0)
            passed = sum(c.passed for c in checks)
            st.details.append(
                f"{passed}/{len(checks)} blocks equal the op reference (max rel diff {worst:.2e}) "
                f"at {rewriter.input_shapes}"
            )
    try:
        with stage("rewrite") as st:
            rewritten = rewriter.apply(allow_none=args.allow_none, skip_partial=args.skip_partial)
            report = rewriter.report()
            st.details.append(
                f"{report.replaced} plugin nodes, nodes {report.nodes_before} -> {report.nodes_after}, "
                f"Q/DQ {report.qdq_before} -> {report.qdq_after}"
            )
    except RewriteError:
        print_stage_table(rewriter.report())
        raise
    if not args.no_verify and rewriter.plugin_nodes:
        with stage("verify (cpu_session)") as st:
            check = rewriter.verify_outputs()
            if check is not None:
                st.details.append(
                    f"outputs vs original: max abs diff {check.max_abs_diff:.3e}, max rel diff "
                    f"{check.max_rel_diff:.3e} (tolerance {check.tolerance:.0e}): PASS"
                )
    report = rewriter.report()
    print_stage_table(report)
    for partial in report.partial:
        log(f"kept as native ops: block {partial['index']} ({partial['name']}): {partial['reason']}")
    for alive in report.kept_alive:
        log(f"note: the old routed gather of {alive} is still used elsewhere and was kept")
    with stage("write onnx") as st:
        save_onnx(rewritten, output, original=model, original_path=source)
        st.output = output
    report.output = str(output)
    manifest = write_manifest(report)
    log(f"manifest -> {manifest}")
    log("next:")
    print(f"  edge-biformer build --from-onnx {output} --precision fp32 --output {output.stem}_engine")
    print(
        f"  trtexec --onnx={output} --stronglyTyped "
        "--plugins=<libedge_biformer_plugins.so from scripts/build_plugins.sh>  # on the target GPU"
    )
    print(
        f"  python -c \"import edge_biformer; s = edge_biformer.cpu_session('{output}')\"  # run on the CPU"
    )
    return 0
