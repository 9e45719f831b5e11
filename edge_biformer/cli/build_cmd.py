"""``edge-biformer build``: export, quantize, rewrite, TensorRT engine and accuracy check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_biformer.cli.export_cmd import add_model_arguments, model_overrides, parse_img_size
from edge_biformer.cli.quantize_cmd import add_calib_arguments, load_calib
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import log


def add_check_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options naming the data of the accuracy check (shared with ``check``)."""
    group = parser.add_argument_group("accuracy check")
    group.add_argument(
        "--eval-data",
        metavar="DIR",
        help="labelled ImageNet-style folder (class_dir/image): check inputs and top-1 accuracy",
    )
    group.add_argument(
        "--check-data",
        metavar="PATH",
        help="unlabelled check inputs (folder, .txt list or .npy/.npz); default: --calib-data, else noise",
    )
    group.add_argument(
        "--check-num", type=int, default=64, help="at most this many check samples (default 64)"
    )


def load_check_data(args: argparse.Namespace, img_size: tuple[int, int], batch: int) -> Any:
    """The check data the options name, or ``None``."""
    from edge_biformer import calib

    if args.eval_data:
        data = calib.load(
            args.eval_data, img_size=img_size, labelled=True, num=args.check_num, batch_size=batch
        )
    elif args.check_data:
        data = calib.load(args.check_data, img_size=img_size, num=args.check_num, batch_size=batch)
    else:
        return None
    log(f"check data {data.source}: {data.log_line()}")
    return data


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
    group = add_model_arguments(parser, required=False)  # or --from-onnx
    group.add_argument(
        "--from-onnx",
        metavar="PATH",
        help="start from an existing ONNX: a plain export, a quantized graph, or a rewritten plugin graph "
        "(then only the engine and the check run)",
    )
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), required=True)
    parser.add_argument("--img-size", type=parse_img_size, metavar="N|HxW", help="input size (default 224)")
    parser.add_argument(
        "--batch", default="1,8,32", metavar="MIN,OPT,MAX", help="batch profile (default 1,8,32)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset of the export (default 17)")
    add_calib_arguments(parser)
    engine = parser.add_argument_group("tensorrt engine (on the target)")
    engine.add_argument("--workspace", type=int, metavar="MiB", help="builder workspace limit in MiB")
    engine.add_argument(
        "--opt-level", type=int, choices=range(0, 6), metavar="0-5", help="builder optimisation level"
    )
    engine.add_argument(
        "--timing-cache",
        metavar="PATH",
        help="timing cache, reused across builds (default OUTPUT/timing.cache)",
    )
    engine.add_argument(
        "--dla-core", type=int, metavar="N", help="build for DLA core N with GPU fallback (Jetson)"
    )
    engine.add_argument(
        "--int8-mode",
        choices=("qdq", "calibrator"),
        default="qdq",
        help="qdq: explicit Q/DQ (default); calibrator: implicit INT8 calibrator (TensorRT < 10.1 only)",
    )
    engine.add_argument(
        "--plugin-library", metavar="PATH", help="default: edge_biformer.plugins.library_path()"
    )
    parser.add_argument(
        "--no-rewrite", action="store_true", help="keep TensorRT's native ops for the attention"
    )
    add_check_data_arguments(parser)
    parser.add_argument("--no-check", action="store_true", help="skip the accuracy check")
    parser.add_argument("--output", "-o", required=True, metavar="DIR")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``build``."""
    from edge_biformer.build import BuildConfig, run_build
    from edge_biformer.engine import BatchProfile

    if not args.model and not args.from_onnx:
        raise EdgeBiformerError("build needs --model NAME (with --weights PATH) or --from-onnx PATH")
    if args.model and args.from_onnx:
        raise EdgeBiformerError("give either --model or --from-onnx, not both")
    batch = BatchProfile.parse(args.batch)
    output = Path(args.output)
    img_size = args.img_size
    if args.from_onnx:
        from edge_biformer.quantize import onnx_img_size

        source = Path(args.from_onnx)
        if not source.is_file():
            raise EdgeBiformerError(f"--from-onnx {source} does not exist")
        img_size = onnx_img_size(source) or img_size
    img_size = img_size or (224, 224)
    overrides = model_overrides(args)
    model_factory = None
    if args.model:
        from edge_biformer.export import check_input_size
        from edge_biformer.models import create_model

        def model_factory() -> Any:
            model = create_model(args.model, weights=args.weights, **overrides)
            check_input_size(model, *img_size)
            return model

    calib = None
    if args.precision == "int8" or args.calib_data:
        calib = load_calib(
            args, img_size, required=args.precision == "int8" and not _is_final(args.from_onnx)
        )
    check_data = load_check_data(args, img_size, batch.opt)
    saved_reference = args.from_onnx and (output / "check" / "reference.json").is_file()
    if check_data is None and calib is not None and not saved_reference:
        check_data = calib
        log("check: using the calibration images as check inputs (pass --eval-data for held-out images)")
    cfg = BuildConfig(
        precision=args.precision,
        output=output,
        img_size=img_size,
        batch=batch,
        model_name=args.model,
        weights=args.weights,
        overrides=overrides,
        from_onnx=args.from_onnx,
        opset=args.opset,
        calib=calib,
        calib_method=args.calib_method,
        calib_cache=args.calib_cache,
        exclude=args.exclude,
        high_precision=args.high_precision,
        int8_mode=args.int8_mode,
        workspace_mib=args.workspace,
        opt_level=args.opt_level,
        timing_cache=args.timing_cache or str(output / "timing.cache"),
        dla_core=args.dla_core,
        plugin_library=args.plugin_library,
        check=not args.no_check,
        check_data=check_data,
        check_num=args.check_num,
        rewrite=not args.no_rewrite,
    )
    result = run_build(cfg, model_factory)
    log(f"manifest -> {result.manifest_path}")
    if result.report is not None and not result.report.passed:
        log(f"accuracy check FAILED: see {output / 'report.md'}")
        return 1
    return 0


def _is_final(from_onnx: str | None) -> bool:
    """True when --from-onnx is already quantized or rewritten (no calibration needed)."""
    if not from_onnx:
        return False
    from edge_biformer.quantize import graph_kind

    return graph_kind(from_onnx) != "plain"
