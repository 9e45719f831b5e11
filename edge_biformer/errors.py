"""User-facing errors.

Anything the user can fix (a wrong path, a checkpoint of another variant, a bad size) is raised as
:class:`EdgeBiformerError` with a one-paragraph message that names the file and the fix. The CLI
prints that paragraph and exits non-zero, without a traceback.
"""

from __future__ import annotations


class EdgeBiformerError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""


class CheckpointError(EdgeBiformerError):
    """A checkpoint file that cannot be read or does not fit the model."""


class ExportError(EdgeBiformerError):
    """An export that failed or produced a graph that does not match PyTorch."""


class CalibrationDataError(EdgeBiformerError):
    """Calibration or evaluation data that cannot be used."""
