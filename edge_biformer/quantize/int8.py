"""Explicit INT8: nvidia-modelopt's ONNX post-training quantization, calibrated with onnxruntime on the CPU.

Calibration runs on the plain export (before the plugin rewrite) with onnxruntime's
CPUExecutionProvider; the nodes of :func:`edge_biformer.quantize.policy.node_policy` get Q/DQ, the
rest is converted to FP16 (``high_precision="fp16"``, default) with LayerNorm and the routing in
FP32. The activation ranges are saved as a TensorRT-format calibration cache
(:mod:`edge_biformer.quantize.calib_cache`) and reused for the same model, data, method and nodes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_biformer.onnx_io import graph_inputs
from edge_biformer.quantize.calib_cache import (
    activation_scales,
    cache_matches,
    calib_cache_key,
    write_cache_key,
    write_calib_cache,
)
from edge_biformer.quantize.fp16 import convert_fp16_model
from edge_biformer.quantize.policy import DEFAULT_ROUTING_PROTECTION, fp32_nodes_after, node_policy
from edge_biformer.quantize.source import calibration_batches, load_source, private_folder, write_private_copy
from edge_biformer.quantize.toolkit import QuantizationError, QuantizeResult, quiet_modelopt, require_modelopt
from edge_biformer.utils import atomic_output, heartbeat, log

__all__ = ["CALIB_METHODS", "HIGH_PRECISIONS", "quantize_int8"]

CALIB_METHODS = ("entropy", "max")
HIGH_PRECISIONS = ("fp16", "fp32")
#: Fewer calibration images than this get a warning.
FEW_IMAGES = 32


def _count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op_type)


def quantize_int8(
    onnx_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    calib_data: Any,
    *,
    method: str = "entropy",
    exclude: Sequence[str] = (),
    high_precision: str = "fp16",
    cache: str | os.PathLike[str] | None = None,
    routing_protection: str = DEFAULT_ROUTING_PROTECTION,
) -> QuantizeResult:
    """Explicit INT8 (Q/DQ) copy of ``onnx_path``, calibrated on the CPU with onnxruntime.

    Args:
        onnx_path: the plain export (before the plugin rewrite), float32.
        output: the ``.onnx`` to write (atomically).
        calib_data: a :class:`edge_biformer.calib.CalibrationData` (its tensors and batch size).
        method: ``entropy`` (KL divergence, TensorRT's EntropyCalibrator2) or ``max`` (absolute max).
        exclude: node-name regular expressions that must not be quantized.
        high_precision: ``fp16`` (convert the non-INT8 ops to FP16, routing and LayerNorm in FP32)
            or ``fp32``.
        cache: calibration cache path; reused when its key (model, data, method, nodes) matches.
        routing_protection: ``path`` (the routing path out of INT8), ``top1`` (default: also
            everything upstream of a single-region routing) or ``inputs`` (everything upstream of
            any deciding routing TopK): :mod:`edge_biformer.quantize.policy`.
    """
    if method not in CALIB_METHODS:
        raise QuantizationError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {method!r}")
    if high_precision not in HIGH_PRECISIONS:
        raise QuantizationError(f"--high-precision must be fp16 or fp32, got {high_precision!r}")
    mq = require_modelopt()
    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    output = Path(output)
    model = load_source(onnx_path, "int8")
    policy = node_policy(model, exclude, routing_protection)
    if not policy.int8:
        raise QuantizationError(
            f"no node of {onnx_path} is left to quantize (the --exclude patterns removed all "
            f"{len(policy.excluded_by_user)} candidates)"
        )
    tensors = np.ascontiguousarray(calib_data.tensors, dtype=np.float32)
    if len(tensors) < FEW_IMAGES and getattr(calib_data, "kind", None) != "demo":  # the demo set says so
        log(
            f"WARNING: only {len(tensors)} calibration image(s): INT8 ranges from so few are noisy and "
            "may not cover the inputs the model will see; a few hundred representative images are usual"
        )
    plan = calibration_batches(model, int(calib_data.batch_size), len(tensors))
    if plan.note:
        log(f"calibration: {plan.note}")
    batch, tensors = plan.batch, tensors[: plan.usable]
    key = calib_cache_key(onnx_path, calib_data.sha256, method, policy)
    cache_path = Path(cache) if cache is not None else None
    if cache_path is not None and (cache_path.is_dir() or not cache_path.parent.is_dir()):
        raise QuantizationError(
            f"--calib-cache {cache_path} must be a file path in an existing folder (it is "
            f"{'a directory' if cache_path.is_dir() else 'in a folder that does not exist'})"
        )
    reuse = cache_path is not None and cache_matches(cache_path, key)
    feed = tensors[:batch] if reuse else tensors  # cached scales overwrite the ranges of one batch
    shape = "x".join(str(d) for d in (batch, *tensors.shape[1:]))
    name = graph_inputs(model)[0].name
    what = (
        f"int8: {'reusing the calibration cache' if reuse else f'calibrating on {len(tensors)} images'} "
        f"(batches of {batch}, {method}) with modelopt"
        + (", then FP16 for the other ops" if high_precision == "fp16" else "")
    )
    with (
        atomic_output(output, suffix=".onnx") as tmp,
        private_folder() as work,
        heartbeat(what),
        quiet_modelopt() as chatter,
    ):
        # modelopt rewrites its input in place and writes intermediate graphs (model_named.onnx,
        # model_opset19.onnx, ...) beside its input and output: both live in a private folder.
        private = write_private_copy(model, work)
        quantized_path = Path(work) / "quantized.onnx"
        try:
            mq.quantize(
                str(private),
                quantize_mode="int8",
                calibration_data={name: feed},
                calibration_method=method,
                calibration_cache_path=str(cache_path) if reuse else None,
                calibration_shapes=f"{name}:{shape}",
                calibration_eps=["cpu"],
                nodes_to_quantize=[f"^{re.escape(n)}$" for n in policy.int8],
                high_precision_dtype="fp32",
                output_path=str(quantized_path),
                log_level="WARNING",
            )
        except Exception as err:
            said = chatter.getvalue().strip()[-500:]
            raise QuantizationError(
                f"INT8 quantization of {onnx_path} with nvidia-modelopt failed ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no message'})"
                + (f"; modelopt said: {said}" if said else "")
            ) from err
        quantized = onnx.load(str(quantized_path))
        if _count(quantized, "QuantizeLinear") == 0:
            raise QuantizationError(f"modelopt inserted no Q/DQ node into {onnx_path}; nothing was quantized")
        scales = activation_scales(quantized)
        if high_precision == "fp16":
            quantized = convert_fp16_model(quantized, fp32_nodes_after(quantized, policy))
        onnx.save(quantized, str(tmp))
        onnx.checker.check_model(str(tmp))
    if cache_path is not None and not reuse:
        write_calib_cache(cache_path, scales, method)
        write_cache_key(cache_path, key)
    return QuantizeResult(
        path=str(output),
        precision="int8",
        seconds=time.perf_counter() - start,
        quantized_nodes=len(policy.int8),
        qdq_pairs=_count(quantized, "QuantizeLinear"),
        fp32_nodes=len(fp32_nodes_after(quantized, policy)) if high_precision == "fp16" else -1,
        fp16_tensors=sum(1 for i in quantized.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16),
        calib_method=method,
        calib_cache=str(cache_path) if cache_path else None,
        calib_cache_reused=reuse,
        calib_summary={
            **calib_data.summary(),
            "used_for_calibration": len(tensors),
            "calibration_batch": batch,
        },
        excluded=policy.excluded_by_user,
        policy=policy.describe(),
    )
