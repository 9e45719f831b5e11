"""``edge-biformer check OUTDIR``: compare every artifact of a build with FP32 PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_biformer.cli.build_cmd import add_check_data_arguments, load_check_data
from edge_biformer.utils import log


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
    add_check_data_arguments(parser)
    parser.add_argument(
        "--recompute", action="store_true", help="recompute the PyTorch reference instead of reusing it"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``check``."""
    from edge_biformer.build import check_build, read_build_manifest, write_build_manifest
    from edge_biformer.engine import BatchProfile

    outdir = Path(args.outdir)
    manifest = read_build_manifest(outdir)
    profile = BatchProfile(**{k: manifest["profile"][k] for k in ("min", "opt", "max")})
    data = load_check_data(args, tuple(manifest["img_size"]), profile.opt)
    report = check_build(outdir, manifest, data=data, check_num=args.check_num, recompute=args.recompute)
    manifest["check"] = {
        "passed": report.passed,
        "report": "report.md",
        "comparisons": {c.name: c.status for c in report.comparisons},
    }
    write_build_manifest(outdir, manifest)
    if not report.passed:
        log(f"accuracy check FAILED: see {outdir / 'report.md'}")
        return 1
    return 0
