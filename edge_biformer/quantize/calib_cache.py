"""INT8 activation ranges as a TensorRT calibration cache, with the key that says when it can be reused.

The cache has TensorRT's format (``TRT-8501-EntropyCalibration2`` / ``MinMaxCalibration`` header,
``tensor: hex(big-endian float32 scale)`` lines), so TensorRT's implicit calibrator and trtexec read
it too. A JSON key beside it (``<cache>.json``: the model bytes, the calibration tensors, the method
and the quantized nodes) decides whether a later calibration may reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_biformer.quantize.policy import NodePolicy
from edge_biformer.quantize.toolkit import QuantizationError
from edge_biformer.utils import atomic_output, sha256_file

__all__ = [
    "activation_scales",
    "cache_matches",
    "calib_cache_key",
    "read_calib_cache",
    "write_cache_key",
    "write_calib_cache",
]

_CACHE_HEADERS = {"entropy": "TRT-8501-EntropyCalibration2", "max": "TRT-8501-MinMaxCalibration"}


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """``{tensor name: scale}`` of the activation QuantizeLinear nodes of a Q/DQ graph."""
    inits = {i.name: i for i in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    scales: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale_name = node.input[1]
        if scale_name in inits:
            value = onnx.numpy_helper.to_array(inits[scale_name])
        elif scale_name in constants:
            value = onnx.numpy_helper.to_array(constants[scale_name].attribute[0].t)
        else:
            continue
        if value.size == 1:
            scales[node.input[0]] = float(np.asarray(value, np.float32).reshape(()))
    return scales


def write_calib_cache(path: str | os.PathLike[str], scales: dict[str, float], method: str) -> None:
    """Write ``scales`` as a TensorRT calibration cache (big-endian float32 hex per tensor)."""
    lines = [_CACHE_HEADERS[method]]
    for name in sorted(scales):
        lines.append(f"{name}: {struct.pack('!f', scales[name]).hex()}")
    with atomic_output(path, suffix=".cache") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def read_calib_cache(path: str | os.PathLike[str]) -> dict[str, float]:
    """Read a TensorRT calibration cache into ``{tensor name: scale}``."""
    scales: dict[str, float] = {}
    text = Path(path).read_text().splitlines()
    for line in text[1:]:
        name, sep, hex_value = line.rpartition(": ")
        if not sep:
            continue
        try:
            scales[name] = struct.unpack("!f", bytes.fromhex(hex_value.strip()))[0]
        except ValueError:
            raise QuantizationError(
                f"calibration cache {path} has a malformed line {line!r}; delete the file to recalibrate"
            ) from None
    return scales


def calib_cache_key(
    model_path: str | os.PathLike[str], data_sha256: str, method: str, policy: NodePolicy
) -> dict[str, Any]:
    """What identifies a calibration: the model bytes, the data, the method and the quantized nodes."""
    nodes = hashlib.sha256("\n".join(sorted(policy.int8)).encode()).hexdigest()
    return {
        "model_sha256": sha256_file(model_path),
        "data_sha256": data_sha256,
        "method": method,
        "quantized_nodes_sha256": nodes,
    }


def _key_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")


def cache_matches(cache: Path, key: dict[str, Any]) -> bool:
    """Whether ``cache`` exists and was written for ``key``."""
    try:
        return cache.is_file() and json.loads(_key_path(cache).read_text()) == key
    except (OSError, ValueError):
        return False


def write_cache_key(cache: Path, key: dict[str, Any]) -> None:
    """Write the key of a freshly written cache beside it."""
    with atomic_output(_key_path(cache), suffix=".json") as tmp:
        tmp.write_text(json.dumps(key, indent=2) + "\n")
