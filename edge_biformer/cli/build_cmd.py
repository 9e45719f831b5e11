"""``edge-biformer build``: export, quantize, rewrite, TensorRT engine and accuracy check."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_biformer.cli.args import (
    CalibArgs,
    CheckDataArgs,
    EngineArgs,
    ExportArgs,
    ImageSizeArgs,
    ModelArgs,
    PreprocessArgs,
    add_groups,
)
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.stages import PRECISIONS
from edge_biformer.utils import log

GROUPS = (
    ModelArgs(required=False, dense=True),
    ImageSizeArgs(help="input size (default: the graph's, else 224)"),
    ExportArgs(full=False),
    CalibArgs(),
    PreprocessArgs(),
    EngineArgs(),
    CheckDataArgs(),
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``build``."""
    parser = subparsers.add_parser(
        "build",
        help="export, quantize, rewrite and build a TensorRT engine, then check it against PyTorch",
        description=(
            "Build a deployable BiFormer: ONNX export (verified), precision conversion (fp16 mixed, or "
            "int8 Q/DQ calibrated on the CPU), rewrite of the routed attention to the TensorRT plugin, "
            "TensorRT engine (where TensorRT and a GPU are present; else the commands for the target "
            "are printed), and an accuracy check of every artifact against FP32 PyTorch with Polygraphy. "
            "Exit status 1 when the check fails."
        ),
    )
    parser.add_argument(
        "--onnx",
        "--from-onnx",
        dest="from_onnx",
        metavar="PATH",
        help="start from an ONNX graph: any graph with one image input N x C x H x W (a detector, a "
        "segmenter, a backbone of your own, with or without BRA; its outputs, names and static dims are "
        "read from the graph, its FP32 self in onnxruntime is the check's reference), our plain export, "
        "a quantized graph, or a rewritten plugin graph (then only the engine and the check run)",
    )
    parser.add_argument("--precision", choices=tuple(PRECISIONS), required=True)
    add_groups(parser, GROUPS)
    parser.add_argument(
        "--no-rewrite", action="store_true", help="keep TensorRT's native ops for the attention"
    )
    parser.add_argument("--no-check", action="store_true", help="skip the accuracy check")
    parser.add_argument("--output", "-o", required=True, metavar="DIR")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``build``."""
    from edge_biformer import pipeline
    from edge_biformer.rewrite import RewriteOptions

    if not args.model and not args.from_onnx:
        raise EdgeBiformerError("build needs --model NAME (with --weights PATH) or --onnx PATH")
    if args.model and args.from_onnx:
        raise EdgeBiformerError("give either --model or --onnx/--from-onnx, not both")
    output = Path(args.output)
    options = pipeline.BuildOptions(
        precision=args.precision,
        output=output,
        engine=EngineArgs.options(args, args.precision, output),
        export=ExportArgs(full=False).options(args) if args.model else None,
        from_onnx=Path(args.from_onnx) if args.from_onnx else None,
        img_size=args.img_size,
        quantize=CalibArgs().options(args, args.precision),
        rewrite=None if args.no_rewrite else RewriteOptions(),
        check=None if args.no_check else CheckDataArgs.options(args, output),
        preprocess=PreprocessArgs.recipe(args),
    )
    result = pipeline.run(options)
    log(f"manifest -> {result.manifest_path}")
    if result.report is not None and not result.report.passed:
        log(f"accuracy check FAILED: see {output / 'report.md'}")
        return 1
    return 0
