"""``edge-biformer serve-repo``: a Triton Inference Server model repository for an engine or ONNX graph."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_biformer.cli.args import RuntimeArgs
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import log, stage


def _gpus(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(g) for g in text.split(",") if g.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices such as 0 or 0,1, got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve-repo``."""
    parser = subparsers.add_parser(
        "serve-repo",
        help="write a Triton Inference Server model repository (TensorRT engine, or ONNX on the CPU)",
        description=(
            "Write a Triton model repository: --engine gives a tensorrt_plan model (max batch from the "
            "engine's profile, dynamic batching, GPU instance groups, the plugin library beside it for the "
            "TensorRT backend's plugins= option); --onnx gives a Python-backend model running the graph with "
            "onnxruntime on the CPU (for tests and CPU-only serving). --ensemble adds a preprocessing model "
            "and an ensemble, so clients can send encoded images. Every config.pbtxt is validated against "
            "Triton's ModelConfig protobuf."
        ),
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--engine", metavar="E.engine", help="TensorRT engine (tensorrt_plan model, GPU)")
    model.add_argument("--onnx", metavar="O.onnx", help="ONNX graph (Python backend + onnxruntime, CPU)")
    parser.add_argument("--output", "-o", required=True, metavar="REPO", help="the model repository folder")
    parser.add_argument("--name", default="biformer", help="model name (default biformer)")
    parser.add_argument(
        "--max-batch", type=int, metavar="N", help="max batch (default: the engine profile's max; 8)"
    )
    parser.add_argument(
        "--queue-delay-us",
        type=int,
        default=500,
        metavar="US",
        help="dynamic batcher queue delay (default 500)",
    )
    parser.add_argument("--instances", type=int, default=1, metavar="N", help="model instances (default 1)")
    parser.add_argument(
        "--gpus", type=_gpus, default=(), metavar="0,1", help="GPUs of the instances (engine)"
    )
    parser.add_argument(
        "--ensemble", action="store_true", help="add NAME_preprocess and NAME_ensemble (images in)"
    )
    RuntimeArgs().add(parser)
    parser.add_argument(
        "--threads", type=int, default=0, metavar="N", help="onnxruntime threads (CPU; 0: default)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing repository folder")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``serve-repo``."""
    from edge_biformer.serve import RepositoryOptions, serve_commands, write_repository

    if args.max_batch is not None and args.max_batch < 1:
        raise EdgeBiformerError(f"--max-batch must be at least 1, got {args.max_batch}")
    options = RepositoryOptions(
        output=Path(args.output),
        name=args.name,
        engine=Path(args.engine) if args.engine else None,
        onnx=Path(args.onnx) if args.onnx else None,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        instances=args.instances,
        gpus=args.gpus,
        ensemble=args.ensemble,
        plugin_library=Path(args.plugin_library) if args.plugin_library else None,
        labels=Path(args.labels) if args.labels else None,
        threads=args.threads,
        force=args.force,
    )
    with stage("model repository") as st:
        result = write_repository(options)
        st.details.append(f"-> {result.path}")
        st.details.append(
            f"{result.kind}: {', '.join(result.models)}; max batch {result.max_batch}, dynamic batching, "
            f"config.pbtxt {'validated (Triton ModelConfig)' if result.validated else 'NOT validated'}"
        )
    for note in result.notes:
        log(note)
    if result.kind == "cpu":
        log("the CPU variant needs numpy<2 in the serving Python (Triton 2.51's Python backend stub); "
            "edge_biformer.serve.cpu_server prepares such an environment")  # fmt: skip
    log("next:")
    for command in serve_commands(result):
        print(f"  {command}")
    return 0
