"""``edge-biformer rewrite``: every BRA routed attention of an ONNX graph -> one plugin node."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_biformer.cli.args import RewriteArgs, add_groups
from edge_biformer.utils import check_onnx_output, log

GROUPS = (RewriteArgs(),)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``rewrite``."""
    parser = subparsers.add_parser(
        "rewrite",
        help="replace every BRA routed attention by a BiLevelRoutingAttention TensorRT plugin node",
        description=(
            "Find every Bi-level Routing Attention block of an ONNX graph by the structure of its "
            "computation (our exports and the official BRA module, torchscript or dynamo exporter, auto_pad "
            "or not) and replace its top-k gather attention by one BiLevelRoutingAttention node (domain "
            "trt.plugins). Routing, padding, LCE, projections and Q/DQ nodes stay as they are. By default "
            "each block is checked on real activations and the rewritten graph against the original in "
            "onnxruntime (CPU) before anything is written."
        ),
    )
    parser.add_argument("input", metavar="IN.onnx", help="the ONNX graph to rewrite")
    parser.add_argument(
        "--output", "-o", required=True, metavar="OUT.onnx", help="the rewritten graph to write"
    )
    add_groups(parser, GROUPS)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``rewrite``."""
    from edge_biformer import rewrite

    source = Path(args.input)
    output = check_onnx_output(args.output, source)
    report = rewrite.run(RewriteArgs.options(args, source, output))
    log("next:")
    # The commands for the graph's own precision; trtexec's options depend on its version: one line per
    # TensorRT major (TensorRT 8.5/8.6 first need the graph their parser takes: build --target-trt 8.5|8.6).
    from edge_biformer.engine import BatchProfile, EngineOptions, trtexec_commands
    from edge_biformer.engine.stage import PLUGIN_LIBRARY_NAME

    build = f"edge-biformer build --from-onnx {output} --precision {report.precision}"
    print(f"  {build} --output {output.stem}_engine")
    options = EngineOptions(
        report.precision, (224, 224), BatchProfile(1, 1, 1), plugin_library=f"/path/to/{PLUGIN_LIBRARY_NAME}"
    )
    engine_path = output.with_suffix(".engine")
    for family, command in trtexec_commands(output, engine_path, options, None, shapes=False).items():
        print(f"  {command}  # TensorRT {family}, on the target GPU")
    print(
        f"  python -c \"import edge_biformer; s = edge_biformer.cpu_session('{output}')\"  # run on the CPU"
    )
    return 0
