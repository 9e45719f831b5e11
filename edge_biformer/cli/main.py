"""Entry point of ``edge-biformer``.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` whose parser sets ``func`` (taking the parsed
namespace, returning an exit code). Errors the user can fix (:class:`EdgeBiformerError`) are
printed as one paragraph, without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edge_biformer import __version__
from edge_biformer.errors import EdgeBiformerError

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = (
    "export", "rewrite", "quantize", "build", "check", "predict", "serve", "bench", "doctor",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="edge-biformer",
        description="BiFormer from PyTorch to TensorRT: export, rewrite, quantize, build, check.",
    )
    parser.add_argument("--version", action="version", version=f"edge-biformer {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"edge_biformer.cli.{name}_cmd")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    from edge_biformer import manifest

    parser = build_parser()
    args = parser.parse_args(argv)
    manifest.set_command_line(list(argv) if argv is not None else sys.argv[1:])
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EdgeBiformerError as err:
        print(f"edge-biformer {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"edge-biformer {args.command}: interrupted; no partial output was kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
