"""``edge-biformer export``: PyTorch -> ONNX, verified in onnxruntime against PyTorch."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import check_onnx_output, log, manifest_path, sha256_file, stage
from edge_biformer.utils.sizes import parse_image_size

_MODEL_NAMES = ("biformer_tiny", "biformer_small", "biformer_base")


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> argparse._ArgumentGroup:
    """The model-selection options shared by the commands that start from PyTorch; returns the group."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=required, metavar="NAME", help=f"one of {', '.join(_MODEL_NAMES)}")
    group.add_argument(
        "--weights", metavar="PATH", help="checkpoint (.pth): official release, model_ema, or dense backbone"
    )
    group.add_argument(
        "--num-classes", type=int, metavar="N", help="classifier width, if the checkpoint's differs from 1000"
    )
    group.add_argument("--n-win", type=int, metavar="S", help="regions per side (official default 7)")
    group.add_argument(
        "--auto-pad",
        action="store_true",
        help="pad each BRA input to a multiple of n_win (dense-task backbones); the graph takes any H, W",
    )
    group.add_argument(
        "--arch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="other official constructor argument, VALUE in JSON (e.g. --arch depth=[1,1,2,1]); repeatable",
    )
    return group


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor overrides from the model options."""
    overrides: dict[str, Any] = {}
    for item in args.arch:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgeBiformerError(f"--arch expects KEY=VALUE (VALUE in JSON), got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value  # plain strings such as kv_downsample_mode=identity
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    if args.n_win is not None:
        overrides["n_win"] = args.n_win
    if args.auto_pad:
        overrides["auto_pad"] = True
    return overrides


def parse_img_size(text: str) -> tuple[int, int]:
    """``224`` or ``512x640`` (height x width), for argparse."""
    try:
        return parse_image_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``export``."""
    parser = subparsers.add_parser(
        "export",
        help="export BiFormer to ONNX and verify it against PyTorch",
        description=(
            "Export a BiFormer to ONNX (input 'input' N x 3 x H x W float32, output 'logits'), then run "
            "the graph in onnxruntime against PyTorch and fail if they differ. Routed K/V are gathered "
            "by region index (no Expand + GatherElements)."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--img-size", type=parse_img_size, default=(224, 224), metavar="N|HxW")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; dynamo needs >= 18)")
    parser.add_argument(
        "--static-batch", type=int, metavar="N", help="fixed batch size instead of a dynamic batch"
    )
    parser.add_argument(
        "--exporter",
        choices=("torchscript", "dynamo"),
        default="torchscript",
        help="torch.onnx exporter: torchscript (dynamo=False, default) or dynamo",
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="max |onnx - torch| / max |torch| (default 1e-4)"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--output", "-o", required=True, metavar="PATH", help="the .onnx file to write")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``export``."""
    from edge_biformer.export import export_onnx, write_manifest
    from edge_biformer.models import create_model

    output = check_onnx_output(args.output)
    overrides = model_overrides(args)
    with stage(f"build {args.model}") as st:
        model = create_model(args.model, weights=args.weights, **overrides)
        n_params = sum(p.numel() for p in model.parameters())
        st.details.append(f"{n_params / 1e6:.2f} M parameters")
        st.details.append(f"weights {args.weights}" if args.weights else "random weights (no --weights)")
    weights_sha = sha256_file(args.weights) if args.weights else None

    with stage(f"export onnx ({args.exporter})") as st:
        result = export_onnx(
            model,
            output,
            img_size=args.img_size,
            opset=args.opset,
            static_batch=args.static_batch,
            exporter=args.exporter,
            verify=not args.no_verify,
            tolerance=args.tolerance,
        )
        st.output = output
        st.details.append(f"input {result.input_shape} opset {result.opset}")
    if result.verification:
        v = result.verification
        log(
            f"verify onnxruntime vs pytorch  batches {v.batch_sizes}  max abs diff {v.max_abs_diff:.3e}  "
            f"max rel diff {v.max_rel_diff:.3e}  (tolerance {v.tolerance:.0e}): PASS"
        )
    manifest = manifest_path(output)
    write_manifest(manifest, result, model=model, weights=args.weights, weights_sha256=weights_sha)
    log(f"manifest -> {manifest}")
    log("next:")
    print(f"  edge-biformer rewrite {output} --output {output.with_name(output.stem + '.plugin.onnx')}")
    print(
        f"  polygraphy run {output} --onnxrt --input-shapes input:[1,3,{args.img_size[0]},{args.img_size[1]}]"
    )
    print(f"  edge-biformer build --from-onnx {output} --precision fp16 --output {output.stem}_fp16")
    return 0
