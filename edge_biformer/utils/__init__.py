"""Small shared helpers: atomic file writes and the CLI's per-stage log lines."""

from edge_biformer.utils.fileio import (
    atomic_output,
    check_onnx_output,
    file_size_str,
    require_writable_dir,
    sha256_file,
)
from edge_biformer.utils.log import heartbeat, log, stage

__all__ = [
    "atomic_output",
    "check_onnx_output",
    "file_size_str",
    "heartbeat",
    "log",
    "require_writable_dir",
    "sha256_file",
    "stage",
]
