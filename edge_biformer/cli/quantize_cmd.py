"""``edge-biformer quantize``: explicit INT8 (Q/DQ) or mixed FP16 ONNX, on the CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_biformer.cli.args import CalibArgs, ImageSizeArgs, PreprocessArgs, add_groups
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import check_onnx_output, log

GROUPS = (
    ImageSizeArgs(help="calibration image size, only for graphs with a dynamic H/W"),
    CalibArgs(),
    PreprocessArgs(),
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``quantize``."""
    parser = subparsers.add_parser(
        "quantize",
        help="INT8 (Q/DQ, calibrated on the CPU) or mixed FP16 ONNX for strongly typed TensorRT",
        description=(
            "Convert a plain BiFormer export (before the plugin rewrite) to explicit INT8 (Q/DQ, "
            "nvidia-modelopt PTQ calibrated with onnxruntime on the CPU) or to mixed FP16 (float32 "
            "I/O, LayerNorm and routing in FP32). Conv/Gemm/weight MatMuls go to INT8; LayerNorm, "
            "Softmax, GELU, the routing and the token attention stay in FP16/FP32."
        ),
    )
    parser.add_argument("onnx", metavar="IN.onnx", help="the plain export (edge-biformer export)")
    parser.add_argument("--precision", choices=("int8", "fp16"), required=True)
    add_groups(parser, GROUPS)
    parser.add_argument("--output", "-o", required=True, metavar="OUT.onnx")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``quantize``."""
    from edge_biformer import quantize

    source = Path(args.onnx)
    if not source.is_file():
        raise EdgeBiformerError(f"{source} does not exist; export one with `edge-biformer export`")
    output = check_onnx_output(args.output, source)
    options = CalibArgs().options(args, args.precision, source=source, output=output)
    quantize.run(options)
    _print_next(output, args.precision)
    return 0


def _print_next(output: Path, precision: str) -> None:
    """The rewrite where the graph has BRA blocks, else the build without one (both work as printed)."""
    from edge_biformer.rewrite import analyse_model, load_onnx

    if analyse_model(load_onnx(output))[2].found:
        log(f"next: edge-biformer rewrite {output} --output {output.with_name(output.stem + '.plugin.onnx')}")
        return
    log("next (the graph has no BRA block to rewrite into the plugin):")
    out_dir = Path(output.stem.replace(".", "_"))
    print(
        f"  edge-biformer build --from-onnx {output} --precision {precision} --no-rewrite --output {out_dir}"
    )
