"""nvidia-modelopt as the quantize stage uses it: imported with a clear error, its chatter kept quiet.

Also the stage's error type and the record of a conversion.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_biformer.errors import EdgeBiformerError

__all__ = ["QuantizationError", "QuantizeResult", "quiet_modelopt", "require_modelopt"]


class QuantizationError(EdgeBiformerError):
    """Quantization that cannot run (missing package, bad option) or that failed."""


@dataclass
class QuantizeResult:
    """What a precision conversion wrote."""

    path: str
    precision: str
    seconds: float
    quantized_nodes: int = 0
    qdq_pairs: int = 0
    fp32_nodes: int = 0
    fp16_tensors: int = 0
    calib_method: str | None = None
    calib_cache: str | None = None
    calib_cache_reused: bool = False
    calib_summary: dict[str, Any] | None = None
    excluded: list[str] = field(default_factory=list)
    policy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for the manifest)."""
        return asdict(self)


def require_modelopt() -> Any:
    try:
        import modelopt.onnx.quantization as mq
    except ImportError as err:
        raise QuantizationError(
            "INT8/FP16 conversion needs nvidia-modelopt, which is not importable "
            f'({err}): install it with `pip install "nvidia-modelopt==0.47.0" onnxslim lief` '
            "(not the [onnx] extra, which pulls onnxruntime-gpu and cupy)"
        ) from None
    return mq


@contextlib.contextmanager
def quiet_modelopt() -> Iterator[io.StringIO]:
    """Keep modelopt's and onnxruntime's INFO chatter and progress bars out of the CLI log."""
    loggers = [logging.getLogger(n) for n in ("modelopt", "modelopt.onnx", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield sink
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
