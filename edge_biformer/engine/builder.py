"""Build and serialize a TensorRT engine from an ONNX graph (needs TensorRT and a GPU).

* TensorRT >= 10: a *strongly typed* network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``)
  parsed from the precision-specific ONNX (fp32, mixed fp16, or int8 Q/DQ); the types in the graph
  decide every layer's precision, so no precision flags are set. For fp32, TF32 is disabled so
  the engine matches PyTorch's FP32 within the fp32 tolerance.
* TensorRT 8.5/8.6 (JetPack 5.1 / 6.0) has no strongly typed networks: an explicit-batch, *weakly typed*
  network from the graph the engine stage made for that parser (:mod:`.onnx_compat`), with the
  precision flags the graph's types ask for (``FP16`` for float16 tensors, ``INT8`` for Q/DQ nodes) and
  each layer asked (``PREFER_PRECISION_CONSTRAINTS``) to keep the precision its ONNX types give it, so
  LayerNorm and the routing stay FP32 as in a strongly typed build; Q/DQ-fed layers are left to
  explicit quantization.
* TensorRT < 10.1 can also use implicit INT8 with a calibrator (``int8_mode="calibrator"``,
  :mod:`.calibrator`): a weakly typed network from the FP32 rewritten ONNX, FP16 + INT8 builder flags,
  with a calibration cache.

Common: the plugin library is loaded into the plugin registry before parsing; one optimisation
profile (min/opt/max batch); workspace limit; builder optimisation level; a timing cache read
before and written after each build; ``dla_core`` with GPU fallback (Jetson). The output is a
plain serialized plan (``trtexec --loadEngine=... --plugins=...`` and C++ ``deserializeCudaEngine``
load it as is).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.engine.calibrator import make_calibrator
from edge_biformer.engine.options import EngineOptions
from edge_biformer.engine.tensorrt import (
    EngineBuildError,
    import_tensorrt,
    load_plugin_library,
    logger,
    tensorrt_version,
)
from edge_biformer.onnx_io import graph_precision
from edge_biformer.utils import atomic_output, sha256_file

__all__ = ["EngineResult", "build_engine"]


@dataclass
class EngineResult:
    """What a build wrote and measured."""

    path: str
    seconds: float
    tensorrt_version: str
    strongly_typed: bool
    sha256: str
    size_bytes: int
    timing_cache: str | None = None
    notes: list[str] = field(default_factory=list)


def _timing_cache(config: Any, path: str, notes: list[str]) -> Any:
    """The timing cache to build with: the one at ``path`` if this GPU and TensorRT can reuse it, else new."""
    blob = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(blob) if blob else None
    # A cache of another GPU or TensorRT version (an output folder copied from a dGPU to a Jetson)
    # or a corrupt file is not an error: start from an empty cache and say so.
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if blob:
            notes.append("timing cache not reusable on this GPU/TensorRT: started a new one")
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise EngineBuildError("TensorRT could not create a timing cache; build without one")
    else:
        notes.append("timing cache reused")
    if not blob:
        notes.append("timing cache created")
    return cache


def _weakly_typed(trt: Any, network: Any, config: Any, precision: str, onnx_path: Any) -> str:
    """TensorRT 8: the precision flags of the graph's types, and each layer kept in its ONNX precision."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(onnx_path), load_external_data=False)
    has_fp16 = any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)
        for n in model.graph.node
    )
    flags = []
    if has_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        flags.append("FP16")
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        flags.append("INT8")
    pinned = _pin_layer_precisions(trt, network) if flags else 0
    if pinned:
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return (
        f"weakly typed (TensorRT 8): flags {', '.join(flags) or 'none'}; {pinned} layers asked to keep the "
        "precision of their ONNX types"
    )


def _pin_layer_precisions(trt: Any, network: Any) -> int:
    """Set the precision and output types of each float layer to its tensors' types (the ONNX types)."""
    floats = {trt.float32, trt.float16}
    left_alone = {
        getattr(trt.LayerType, name)
        for name in ("QUANTIZE", "DEQUANTIZE", "CONSTANT", "SHAPE", "PLUGIN_V2", "PLUGIN_V3", "IDENTITY")
        if hasattr(trt.LayerType, name)
    }
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    dequantized = {
        layer.get_output(0).name
        for layer in layers
        if layer.type == getattr(trt.LayerType, "DEQUANTIZE", None)
    }
    pinned = 0
    for layer in layers:
        if layer.type in left_alone:
            continue
        inputs = [layer.get_input(k) for k in range(layer.num_inputs)]
        if any(i is not None and i.name in dequantized for i in inputs):
            continue  # explicit quantization decides (INT8 with the Q/DQ scales)
        types = {layer.get_output(j).dtype for j in range(layer.num_outputs)}
        if len(types) != 1 or not types <= floats:
            continue
        dtype = types.pop()
        layer.precision = dtype
        for j in range(layer.num_outputs):
            layer.set_output_type(j, dtype)
        pinned += 1
    return pinned


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: EngineOptions,
    calib_batches: Callable[[], Iterator[np.ndarray]] | None = None,
) -> EngineResult:
    """Build and serialize an engine from ``onnx_path`` (needs TensorRT and a GPU).

    Args:
        onnx_path: the precision-specific, rewritten ONNX (fp32 ONNX for ``int8_mode="calibrator"``).
        engine_path: the plan to write (atomically).
        options: precision, profile, workspace, optimisation level, caches, DLA, plugin library.
        calib_batches: for ``int8_mode="calibrator"``: yields calibration batches (N x 3 x H x W).
    """
    trt = import_tensorrt()
    version = tensorrt_version() or (0, 0, 0)
    start = time.perf_counter()
    log = logger(trt)
    load_plugin_library(options.plugin_library, trt)
    builder = trt.Builder(log)
    implicit_int8 = options.implicit_int8
    # Strongly typed from TensorRT 10 (9.x had the flag too, but not the IPluginV3 the library has there).
    strongly_typed = not implicit_int8 and version >= (10, 0, 0)
    if implicit_int8 and version >= (10, 1, 0):
        raise EngineBuildError(
            f"--int8-mode calibrator needs TensorRT < 10.1 (found {trt.__version__}, where implicit INT8 "
            "calibration is deprecated); use the default --int8-mode qdq"
        )
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if version < (10, 0, 0):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    # Parser flags: 8.5 has none; 8.6's only one (NATIVE_INSTANCENORM, default on from 10) concerns
    # InstanceNormalization, which these graphs do not hold, so every version parses with its defaults.
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(
            f"TensorRT could not parse {onnx_path}: {errors}. If the error names BiLevelRoutingAttention, "
            "the plugin library was not loaded (--plugin-library)"
        )
    config = builder.create_builder_config()
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.opt_level is not None and hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = options.opt_level  # TensorRT >= 8.6
    if options.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if not options.batch.static:  # a static graph takes no profile
        profile = builder.create_optimization_profile()
        shapes = options.batch.shapes(options.img_size)
        profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    notes: list[str] = []
    if options.opt_level is not None and not hasattr(config, "builder_optimization_level"):
        notes.append(f"--opt-level ignored: TensorRT {trt.__version__} has no builder optimization level")
    if not strongly_typed and not implicit_int8:
        notes.append(_weakly_typed(trt, network, config, graph_precision(onnx_path), onnx_path))
    if options.dla_core is not None:
        if builder.num_DLA_cores == 0:
            raise EngineBuildError(f"--dla-core {options.dla_core}: this device has no DLA core")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        notes.append(f"DLA core {options.dla_core} with GPU fallback")
    if implicit_int8:
        if calib_batches is None:
            raise EngineBuildError("--int8-mode calibrator needs calibration data (--calib-data)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
        config.int8_calibrator = make_calibrator(trt, calib_batches, options)
        config.set_calibration_profile(profile)
    cache = _timing_cache(config, options.timing_cache, notes) if options.timing_cache else None
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT messages above); "
            "try a larger --workspace or another --opt-level"
        )
    with atomic_output(engine_path, suffix=".engine") as tmp, open(tmp, "wb") as f:
        f.write(memoryview(serialized))
    if cache is not None and options.timing_cache:
        updated = config.get_timing_cache()
        if updated is not None:
            with atomic_output(options.timing_cache, suffix=".cache") as tmp, open(tmp, "wb") as f:
                f.write(memoryview(updated.serialize()))
    return EngineResult(
        path=str(engine_path),
        seconds=time.perf_counter() - start,
        tensorrt_version=trt.__version__,
        strongly_typed=strongly_typed,
        sha256=sha256_file(engine_path),
        size_bytes=Path(engine_path).stat().st_size,
        timing_cache=options.timing_cache,
        notes=notes,
    )
