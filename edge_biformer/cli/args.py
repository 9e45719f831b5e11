"""The CLI's argument groups: each adds its options to a parser and turns them into stage options.

A subcommand lists the groups it uses (Polygraphy's argument-group style); the same group gives
``export`` and ``build`` their model options, ``quantize`` and ``build`` their calibration
options, ``build`` and ``check`` their check-data options. Model names come from the registry
(:mod:`edge_biformer.models.registry`), which does not import torch.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.models.registry import list_models
from edge_biformer.utils.sizes import parse_image_size

__all__ = [
    "ArgGroup",
    "CalibArgs",
    "CheckDataArgs",
    "EngineArgs",
    "ExportArgs",
    "ImageSizeArgs",
    "ModelArgs",
    "PreprocessArgs",
    "RewriteArgs",
    "RuntimeArgs",
    "add_groups",
    "parse_img_size",
    "parse_input_shape",
]


def parse_img_size(text: str) -> tuple[int, int]:
    """``224`` or ``512x640`` (height x width), for argparse."""
    try:
        return parse_image_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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


class ArgGroup:
    """A named group of options: :meth:`add` registers them, the group's parse method reads them back."""

    title = ""

    def add(self, parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
        """Register the group's options on ``parser``; returns the argparse group."""
        group = parser.add_argument_group(self.title)
        self.add_to(group)
        return group

    def add_to(self, group: argparse._ArgumentGroup) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def add_groups(parser: argparse.ArgumentParser, groups: Sequence[ArgGroup]) -> None:
    """Register every group of a subcommand."""
    for group in groups:
        group.add(parser)


class ModelArgs(ArgGroup):
    """Which model to build from PyTorch: registry name, checkpoint, constructor overrides."""

    title = "model"

    def __init__(self, required: bool = True, dense: bool = False) -> None:
        self.required = required
        #: offer --features-only/--out-indices (dense backbones; export only)
        self.dense = dense

    def add_to(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--model", required=self.required, metavar="NAME", help=f"one of {', '.join(list_models())}"
        )
        group.add_argument(
            "--weights",
            metavar="PATH",
            help="checkpoint (.pth): official release, model_ema, or dense backbone",
        )
        group.add_argument(
            "--num-classes",
            type=int,
            metavar="N",
            help="classifier width, if the checkpoint's differs from 1000",
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
            help="other official constructor argument, VALUE in JSON (e.g. --arch depth=[1,1,2,1]); "
            "repeatable",
        )
        if not self.dense:
            return
        group.add_argument(
            "--features-only",
            action="store_true",
            help="the dense backbone of the official detection/segmentation code (auto_pad on, no "
            "classifier head): one output per stage, feat0..feat3 (stride 4, 8, 16, 32)",
        )
        group.add_argument(
            "--out-indices",
            type=parse_out_indices,
            metavar="I,J,...",
            help="stages whose outputs the backbone returns (default 0,1,2,3; with --features-only)",
        )

    @staticmethod
    def overrides(args: argparse.Namespace) -> dict[str, Any]:
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
        if getattr(args, "features_only", False):
            overrides["features_only"] = True
        if getattr(args, "out_indices", None) is not None:
            if not getattr(args, "features_only", False):
                raise EdgeBiformerError(
                    "--out-indices selects the stage outputs of a dense backbone: add --features-only"
                )
            overrides["out_indices"] = args.out_indices
        return overrides


def parse_out_indices(text: str) -> list[int]:
    """``--out-indices``: comma-separated distinct stage indices out of 0-3 (e.g. ``1,2,3``)."""
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        indices = []
    if not indices or len(set(indices)) != len(indices) or any(i not in range(4) for i in indices):
        raise argparse.ArgumentTypeError(
            f"expected distinct stage indices out of 0,1,2,3 separated by commas (e.g. 0,1,2,3), got {text!r}"
        )
    return indices


class ImageSizeArgs(ArgGroup):
    """The network input size."""

    title = "input size"

    def __init__(self, default: tuple[int, int] | None = None, help: str = "input size") -> None:
        self.default = default
        self.help = help

    def add_to(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--img-size", type=parse_img_size, default=self.default, metavar="N|HxW", help=self.help
        )


class RuntimeArgs(ArgGroup):
    """What running a built model needs beside it: the plugin library of an engine and the class names
    (``predict``, ``bench``, ``serve-repo``; defaults: found as :class:`edge_biformer.runtime.Engine` and
    :func:`edge_biformer.runtime.labels.resolve_labels` do)."""

    title = "runtime"

    def __init__(self, labels: bool = True) -> None:
        self.labels = labels

    def add_to(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--plugin-library",
            metavar="PATH",
            help="plugin library of an engine (default: EDGE_BIFORMER_PLUGIN_LIB, beside the engine, its "
            "manifest's, the repository build)",
        )
        if self.labels:
            group.add_argument(
                "--labels",
                metavar="FILE",
                help="class names, one per line or a JSON list (default: the checkpoint's, ImageNet-1k for "
                "1000 classes)",
            )


class ExportArgs(ArgGroup):
    """How to export (``build`` shows only ``opset`` and ``exporter``)."""

    title = "export"

    def __init__(self, full: bool = True) -> None:
        self.full = full

    def add_to(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--opset", type=int, default=17, help="ONNX opset (default 17; dynamo needs >= 18)"
        )
        group.add_argument(
            "--exporter",
            choices=("torchscript", "dynamo"),
            default="torchscript",
            help="torch.onnx exporter: torchscript (dynamo=False, default) or dynamo",
        )
        if not self.full:
            return
        group.add_argument(
            "--static-batch", type=int, metavar="N", help="fixed batch size instead of a dynamic batch"
        )
        group.add_argument(
            "--target-trt",
            metavar="VERSION",
            help="write a graph the ONNX parser of this TensorRT imports as is: 8.5 (JetPack 5.1: opset 17, "
            "LayerNormalization as primitive ops) or 8.6 (JetPack 6.0: opset 17); for fp32 graphs and "
            "trtexec (fp16/int8: pass it to build, whose engine stage converts the quantized graph)",
        )
        group.add_argument(
            "--tolerance", type=float, default=1e-4, help="max |onnx - torch| / max |torch| (default 1e-4)"
        )
        group.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")

    def options(self, args: argparse.Namespace, output: Path | None = None) -> Any:
        """The :class:`edge_biformer.export.ExportOptions` of the model and export options."""
        from edge_biformer.export import ExportOptions

        return ExportOptions(
            output=output,
            model=args.model,
            weights=args.weights,
            overrides=ModelArgs.overrides(args),
            img_size=args.img_size or (224, 224),
            opset=args.opset,
            static_batch=getattr(args, "static_batch", None),
            exporter=args.exporter,
            verify=not getattr(args, "no_verify", False),
            tolerance=getattr(args, "tolerance", None),
            # build's --target-trt belongs to its engine stage (EngineArgs), not to the export
            target_tensorrt=getattr(args, "target_trt", None) if self.full else None,
        )


class CalibArgs(ArgGroup):
    """The INT8 calibration data and method."""

    title = "calibration (int8)"

    def add_to(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--calib-data",
            metavar="PATH",
            help="folder of images (recursive; JPEG/PNG/WebP/BMP/TIFF), .txt list of image paths, or "
            ".npy/.npz of preprocessed N x 3 x H x W float32 tensors (default: the built-in demo "
            "photographs, demo-photos: to try the tool, not to deploy)",
        )
        group.add_argument("--calib-num", type=int, metavar="N", help="use at most N images (default: all)")
        group.add_argument(
            "--calib-fraction", type=float, metavar="F", help="use this fraction of the images"
        )
        group.add_argument(
            "--calib-seed", type=int, default=0, help="seed of the subset selection (default 0)"
        )
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
            "--protect-routing",
            # quantize.policy.ROUTING_PROTECTIONS and its default (a test keeps them equal)
            choices=("path", "top1", "inputs"),
            default="top1",
            help="int8: keep the routing path (region means, routing MatMul, TopK) out of INT8 (path); "
            "also everything upstream of a single-region (topk 1) routing (top1, default); or everything "
            "upstream of any routing that decides (inputs: FP32-identical routing, least INT8). "
            "docs/routing.md has the measured trade-off",
        )
        group.add_argument(
            "--high-precision",
            choices=("fp16", "fp32"),
            default="fp16",
            help="precision of the non-INT8 ops of an int8 graph (default fp16; LayerNorm/routing stay fp32)",
        )

    @staticmethod
    def data(args: argparse.Namespace) -> Any:
        """The :class:`edge_biformer.calib.DataSpec` of ``--calib-data`` (``None`` without it)."""
        from edge_biformer.calib import DataSpec

        if not args.calib_data:
            return None
        return DataSpec(
            args.calib_data, args.calib_num, args.calib_fraction, args.calib_seed, args.calib_batch,
            preprocess=PreprocessArgs.recipe(args),
        )  # fmt: skip

    def options(self, args: argparse.Namespace, precision: str, **paths: Any) -> Any:
        """The :class:`edge_biformer.quantize.QuantizeOptions` of these options."""
        from edge_biformer.quantize import QuantizeOptions

        return QuantizeOptions(
            precision,
            calib=self.data(args),
            method=args.calib_method,
            exclude=tuple(args.exclude),
            high_precision=args.high_precision,
            cache=Path(args.calib_cache) if args.calib_cache else None,
            routing_protection=args.protect_routing,
            img_size=getattr(args, "img_size", None),
            **paths,
        )


def _floats(text: str) -> list[float]:
    """An argparse type: ``0.485,0.456,0.406`` (or one value for every channel)."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


class PreprocessArgs(ArgGroup):
    """How images become input tensors (calibration, check, predict): a preset and its overrides."""

    title = "preprocessing (images -> input tensors)"

    def add_to(self, group: argparse._ArgumentGroup) -> None:
        from edge_biformer.calib.preprocess import PRESETS, RESIZE_MODES

        group.add_argument(
            "--preprocess",
            choices=tuple(PRESETS),
            help="recipe: "
            + "; ".join(p.describe() for p in PRESETS.values())
            + " (default: the one the graph's manifest records, else imagenet)",
        )
        group.add_argument("--resize", choices=RESIZE_MODES, help="override the preset's resize mode")
        group.add_argument("--mean", type=_floats, metavar="M[,M,M]", help="override the mean (0-1 scale)")
        group.add_argument("--std", type=_floats, metavar="S[,S,S]", help="override the std (0-1 scale)")
        group.add_argument(
            "--channel-order", choices=("rgb", "bgr"), help="override the preset's channel order"
        )

    @staticmethod
    def recipe(args: argparse.Namespace) -> Any:
        """The :class:`edge_biformer.calib.preprocess.Preprocess` asked for, or ``None`` (not asked)."""
        from edge_biformer.calib.preprocess import preset

        overrides = {
            "resize": getattr(args, "resize", None),
            "mean": getattr(args, "mean", None),
            "std": getattr(args, "std", None),
            "channel_order": getattr(args, "channel_order", None),
        }
        name = getattr(args, "preprocess", None)
        if name is None and all(v is None for v in overrides.values()):
            return None
        return preset(name or "imagenet", **overrides)


def _fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (e.g. 0.99), got {value}")
    return value


class CheckDataArgs(ArgGroup):
    """The data of the accuracy check."""

    title = "accuracy check"

    def add_to(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--eval-data",
            metavar="DIR",
            help="labelled ImageNet-style folder (class_dir/image): check inputs and top-1 accuracy",
        )
        group.add_argument(
            "--check-data",
            metavar="PATH",
            help="unlabelled check inputs (folder, .txt list or .npy/.npz); default: the calibration "
            "images, else the built-in demo photographs",
        )
        group.add_argument(
            "--check-num", type=int, default=64, help="at most this many check samples (default 64)"
        )
        group.add_argument(
            "--min-routing-agreement",
            type=_fraction,
            metavar="F",
            help="fail an artifact whose worst BRA block routes fewer than this fraction of query regions "
            "to the same top-k regions as FP32 (e.g. 0.99; default: report it, warn below 0.99)",
        )

    @staticmethod
    def options(args: argparse.Namespace, outdir: Path, **extra: Any) -> Any:
        """The :class:`edge_biformer.check.CheckOptions` of these options."""
        from edge_biformer.calib import DataSpec
        from edge_biformer.check.stage import CheckOptions

        data = None
        if args.eval_data:
            data = DataSpec(args.eval_data, num=args.check_num, labelled=True)
        elif args.check_data:
            data = DataSpec(args.check_data, num=args.check_num)
        return CheckOptions(
            outdir=outdir,
            data=data,
            num=args.check_num,
            min_routing_agreement=args.min_routing_agreement,
            **extra,
        )


class EngineArgs(ArgGroup):
    """The TensorRT build on the target."""

    title = "tensorrt engine (on the target)"

    def add_to(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--batch", default="1,8,32", metavar="MIN,OPT,MAX", help="batch profile (default 1,8,32)"
        )
        group.add_argument("--workspace", type=int, metavar="MiB", help="builder workspace limit in MiB")
        group.add_argument(
            "--opt-level", type=int, choices=range(0, 6), metavar="0-5", help="builder optimisation level"
        )
        group.add_argument(
            "--timing-cache",
            metavar="PATH",
            help="timing cache, reused across builds (default OUTPUT/timing.cache)",
        )
        group.add_argument(
            "--dla-core", type=int, metavar="N", help="build for DLA core N with GPU fallback (Jetson)"
        )
        group.add_argument(
            "--int8-mode",
            choices=("qdq", "calibrator"),
            default="qdq",
            help="qdq: explicit Q/DQ (default); calibrator: implicit INT8 calibrator (TensorRT < 10.1 only)",
        )
        group.add_argument(
            "--plugin-library", metavar="PATH", help="default: edge_biformer.plugins.library_path()"
        )
        group.add_argument(
            "--target-trt",
            metavar="VERSION",
            help="TensorRT of the target, e.g. 8.5 (JetPack 5.1), 8.6 (JetPack 6.0), 10.3, 11: plugin "
            "interface, build mode and trtexec flags (default: the installed TensorRT, else the Jetson's "
            "JetPack, else the commands of each TensorRT major)",
        )

    @staticmethod
    def options(args: argparse.Namespace, precision: str, output_dir: Path) -> Any:
        """The :class:`edge_biformer.engine.EngineOptions` of these options (no source/output yet)."""
        from edge_biformer.engine import BatchProfile, EngineOptions

        return EngineOptions(
            precision=precision,
            img_size=args.img_size or (224, 224),
            batch=BatchProfile.parse(args.batch),
            workspace_mib=args.workspace,
            opt_level=args.opt_level,
            timing_cache=args.timing_cache or str(output_dir / "timing.cache"),
            dla_core=args.dla_core,
            plugin_library=args.plugin_library,
            int8_mode=args.int8_mode,
            calib_method=args.calib_method,
            target_tensorrt=getattr(args, "target_trt", None),
        )


class RewriteArgs(ArgGroup):
    """What the rewrite accepts and checks."""

    title = "rewrite"

    def add_to(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--allow-none",
            action="store_true",
            help="write the graph unchanged if it has no BRA block (else: error)",
        )
        group.add_argument(
            "--skip-partial",
            action="store_true",
            help="keep blocks that only partly match (soft routing, pooled K/V...) as native ops, do not "
            "fail",
        )
        group.add_argument(
            "--no-verify",
            action="store_true",
            help="skip the onnxruntime checks (per block on real activations, and the whole graph); the "
            "structure alone does not prove that a block computes the op",
        )
        group.add_argument(
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

    @staticmethod
    def options(args: argparse.Namespace, source: Path, output: Path) -> Any:
        """The :class:`edge_biformer.rewrite.RewriteOptions` of these options."""
        from edge_biformer.rewrite import RewriteOptions

        return RewriteOptions(
            source=source,
            output=output,
            allow_none=args.allow_none,
            skip_partial=args.skip_partial,
            verify=not args.no_verify,
            input_shapes=dict(args.input_shape),
        )
