"""Serving with Triton Inference Server: the model repository writer (:mod:`.repository`), its
``config.pbtxt`` and validation (:mod:`.config`), a real CPU Triton server for the CPU variant
(:mod:`.cpu_server`) and a ``tritonclient`` client (:mod:`.client`)."""

from edge_biformer.serve.repository import (
    RepositoryOptions,
    RepositoryResult,
    serve_commands,
    write_repository,
)

__all__ = ["RepositoryOptions", "RepositoryResult", "serve_commands", "write_repository"]
