"""``edge-biformer check OUTDIR``: compare every artifact of a build with FP32 PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_biformer.cli.args import CheckDataArgs, add_groups
from edge_biformer.utils import log

GROUPS = (CheckDataArgs(),)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``check``."""
    parser = subparsers.add_parser(
        "check",
        help="accuracy check of a build directory against FP32 PyTorch (Polygraphy JSON, report.md)",
        description=(
            "Run the PyTorch reference (or reuse OUTDIR/check/reference.json), compare the exported ONNX, "
            "the quantized/rewritten ONNX and the TensorRT engine (where TensorRT is present) with the "
            "tolerances of their precision, write report.md/report.json and print the polygraphy "
            "commands that repeat each comparison. Exit status 1 when a comparison fails."
        ),
    )
    parser.add_argument("outdir", metavar="OUTDIR", help="output directory of `edge-biformer build`")
    add_groups(parser, GROUPS)
    parser.add_argument(
        "--recompute",
        action="store_true",
        help=(
            "recompute the reference on the saved inputs (FP32 PyTorch, else the FP32 export) instead of "
            "reusing it"
        ),
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``check``."""
    from edge_biformer import check

    outdir = Path(args.outdir)
    report = check.run(CheckDataArgs.options(args, outdir, recompute=args.recompute))
    if not report.passed:
        log(f"accuracy check FAILED: see {outdir / 'report.md'}")
        return 1
    return 0
