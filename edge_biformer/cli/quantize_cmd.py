"""``edge-biformer quantize``: explicit INT8 (Q/DQ) or mixed FP16 ONNX, on the CPU."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import check_onnx_output, log, stage


def add_calib_arguments(parser: argparse.ArgumentParser) -> None:
    """Calibration-data options shared by ``quantize`` and ``build``."""
    group = parser.add_argument_group("calibration (int8)")
    group.add_argument(
        "--calib-data",
        metavar="PATH",
        help="folder of images (recursive; JPEG/PNG/WebP/BMP), .txt list of image paths, or .npy/.npz "
        "of preprocessed N x 3 x H x W float32 tensors",
    )
    group.add_argument("--calib-num", type=int, metavar="N", help="use at most N images (default: all)")
    group.add_argument("--calib-fraction", type=float, metavar="F", help="use this fraction of the images")
    group.add_argument("--calib-seed", type=int, default=0, help="seed of the subset selection (default 0)")
    group.add_argument("--calib-batch", type=int, default=8, help="calibration batch size (default 8)")
    group.add_argument(
        "--calib-method",
        choices=("entropy", "max"),
        default="entropy",
        help="range estimation (default entropy)",
    )
    group.add_argument(
        "--calib-cache",
        metavar="PATH",
        help="calibration cache (TensorRT format); reused when model, data and method match "
        "(default: beside the output)",
    )
    group.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="REGEX",
        help="node-name pattern to keep out of INT8 (Python regex, searched); repeatable",
    )
    group.add_argument(
        "--high-precision",
        choices=("fp16", "fp32"),
        default="fp16",
        help="precision of the non-INT8 ops of an int8 graph (default fp16; LayerNorm/routing stay fp32)",
    )


def load_calib(args: argparse.Namespace, img_size: tuple[int, int], required: bool = True) -> Any:
    """The calibration set the options name, logged; ``None`` if not given and not ``required``."""
    from edge_biformer import calib

    if not args.calib_data:
        if required:
            raise EdgeBiformerError(
                "--precision int8 needs calibration data: pass --calib-data with a folder of a few hundred "
                "representative images (or a .txt list / .npy of preprocessed tensors)"
            )
        return None
    with stage("calibration data") as st:
        data = calib.load(
            args.calib_data,
            img_size=img_size,
            num=args.calib_num,
            fraction=args.calib_fraction,
            seed=args.calib_seed,
            batch_size=args.calib_batch,
        )
        st.details.append(f"{data.source}: {data.log_line()}")
    return data


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``quantize``."""
    from edge_biformer.cli.export_cmd import parse_img_size

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
    parser.add_argument(
        "--img-size", type=parse_img_size, metavar="N|HxW", help="only for dynamic-size graphs"
    )
    add_calib_arguments(parser)
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
    img_size = quantize.onnx_img_size(source) or args.img_size
    if args.precision == "fp16":
        with stage("quantize fp16") as st:
            result = quantize.quantize_fp16(source, output, keep_fp32=args.exclude)
            st.output = output
            st.details.append(f"{result.fp32_nodes} nodes kept in fp32")
        return 0
    if img_size is None:
        raise EdgeBiformerError(
            f"{source} has a dynamic H/W input: pass --img-size for the calibration images"
        )
    data = load_calib(args, img_size)
    cache = Path(args.calib_cache) if args.calib_cache else output.with_suffix(".calib.cache")
    with stage(f"quantize int8 ({args.calib_method})") as st:
        result = quantize.quantize_int8(
            source,
            output,
            data,
            method=args.calib_method,
            exclude=args.exclude,
            high_precision=args.high_precision,
            cache=cache,
        )
        st.output = output
        st.details.append(f"{result.quantized_nodes} nodes int8, {result.qdq_pairs} Q/DQ")
        st.details.append(f"cache {'reused' if result.calib_cache_reused else 'written'}: {cache}")
    log(f"next: edge-biformer rewrite {output} --output {output.with_name(output.stem + '.plugin.onnx')}")
    return 0
