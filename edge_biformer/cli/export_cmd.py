"""``edge-biformer export``: PyTorch -> ONNX, verified in onnxruntime against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_biformer.cli.args import ExportArgs, ImageSizeArgs, ModelArgs, add_groups
from edge_biformer.utils import check_onnx_output, log

GROUPS = (ModelArgs(required=True, dense=True), ImageSizeArgs(default=(224, 224)), ExportArgs(full=True))


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export``."""
    parser = subparsers.add_parser(
        "export",
        help="export BiFormer to ONNX and verify it against PyTorch",
        description=(
            "Export a BiFormer to ONNX (input 'input' N x 3 x H x W float32, output 'logits'; with "
            "--features-only the dense backbone, outputs feat0..feat3), then run the graph in "
            "onnxruntime against PyTorch and fail if any output differs. Routed K/V are gathered by "
            "region index (no Expand + GatherElements)."
        ),
    )
    add_groups(parser, GROUPS)
    parser.add_argument("--output", "-o", required=True, metavar="PATH", help="the .onnx file to write")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``export``."""
    from edge_biformer import export

    output = check_onnx_output(args.output)
    export.run(ExportArgs().options(args, output=output))
    log("next:")
    h, w = args.img_size
    print(f"  edge-biformer rewrite {output} --output {output.with_name(output.stem + '.plugin.onnx')}")
    print(f"  polygraphy run {output} --onnxrt --input-shapes input:[1,3,{h},{w}]")
    if getattr(args, "features_only", False):
        return 0  # build --from-onnx of multi-output graphs: see docs/backbones.md
    print(
        f"  edge-biformer build --from-onnx {output} --precision fp16 --output {Path(output.stem + '_fp16')}"
    )
    return 0
