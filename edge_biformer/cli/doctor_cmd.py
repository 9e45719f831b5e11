"""``edge-biformer doctor``: is this machine ready? Versions, TensorRT, CUDA, GPU, plugin library, Jetson."""

from __future__ import annotations

import argparse
import json
import sys

from edge_biformer.utils import atomic_output, log


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``doctor``."""
    parser = subparsers.add_parser(
        "doctor",
        help="check Python, packages, TensorRT, CUDA, the GPU, the plugin library, JetPack (PASS/WARN/FAIL)",
        description=(
            "Check this machine: Python and package versions against the supported ranges, TensorRT and its "
            "version, the CUDA driver and runtime, each GPU's name and compute capability, the plugin "
            "library (found, built for the installed TensorRT major, kernels for these GPUs), the Jetson's "
            "JetPack (TensorRT version and plugin interface) and the Triton client. One PASS/WARN/FAIL line "
            "each, with the command that fixes it. Exit status 1 when a check FAILs."
        ),
    )
    parser.add_argument("--json", metavar="PATH", help="also write the checks as JSON (- for stdout)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``doctor``."""
    from edge_biformer.runtime.doctor import FAIL, as_json, run_checks

    checks = run_checks()
    for c in checks:
        log(f"{c.status}  {c.name:<16s} {c.detail}")
        if c.fix and c.status != "PASS":
            print(f"      fix: {c.fix}", flush=True)
    failed = [c for c in checks if c.status == FAIL]
    warned = [c for c in checks if c.status == "WARN"]
    log(f"doctor: {len(checks) - len(failed) - len(warned)} PASS, {len(warned)} WARN, {len(failed)} FAIL")
    if args.json:
        text = json.dumps(as_json(checks), indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            with atomic_output(args.json, suffix=".json") as tmp:
                tmp.write_text(text)
    return 1 if failed else 0
