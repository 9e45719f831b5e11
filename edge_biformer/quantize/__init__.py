"""The quantize stage: mixed FP16 or explicit INT8 (Q/DQ) graphs for strongly typed TensorRT, on the CPU.

* :mod:`.policy`: which nodes get INT8 and which stay FP32;
* :mod:`.int8`: modelopt's ONNX PTQ calibrated with onnxruntime (:func:`quantize_int8`);
* :mod:`.fp16`: modelopt's AutoCast (:func:`quantize_fp16`);
* :mod:`.calib_cache`: the TensorRT-format calibration cache and its key;
* :mod:`.toolkit`: nvidia-modelopt access, the error and result types;
* :mod:`.stage`: :func:`run`, what ``edge-biformer quantize`` and ``build`` run.
"""

from edge_biformer.quantize.calib_cache import calib_cache_key, read_calib_cache, write_calib_cache
from edge_biformer.quantize.fp16 import convert_fp16_model, quantize_fp16
from edge_biformer.quantize.int8 import CALIB_METHODS, HIGH_PRECISIONS, quantize_int8
from edge_biformer.quantize.policy import FP32_OP_TYPES, NodePolicy, node_policy, routing_nodes
from edge_biformer.quantize.stage import QuantizeOptions, run
from edge_biformer.quantize.toolkit import QuantizationError, QuantizeResult

__all__ = [
    "CALIB_METHODS",
    "FP32_OP_TYPES",
    "HIGH_PRECISIONS",
    "NodePolicy",
    "QuantizationError",
    "QuantizeOptions",
    "QuantizeResult",
    "calib_cache_key",
    "convert_fp16_model",
    "node_policy",
    "quantize_fp16",
    "quantize_int8",
    "read_calib_cache",
    "routing_nodes",
    "run",
    "write_calib_cache",
]
