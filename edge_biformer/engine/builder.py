"""Build and serialize a TensorRT engine from an ONNX graph (needs TensorRT and a GPU).

* TensorRT >= 10: a *strongly typed* network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``)
  parsed from the precision-specific ONNX (fp32, mixed fp16, or int8 Q/DQ); the types in the graph
  decide every layer's precision, so no precision flags are set. For fp32, TF32 is disabled so
  the engine matches PyTorch's FP32 within the fp32 tolerance.
* TensorRT < 10.1 (JetPack 5 / 6.0) can also use implicit INT8 with a calibrator
  (``int8_mode="calibrator"``, :mod:`.calibrator`): a weakly typed network from the FP32 rewritten
  ONNX, FP16 + INT8 builder flags, with a calibration cache.

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
    strongly_typed = not implicit_int8 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if implicit_int8 and version >= (10, 1, 0):
        raise EngineBuildError(
            f"--int8-mode calibrator needs TensorRT < 10.1 (found {trt.__version__}, where implicit INT8 "
            "calibration is deprecated); use the default --int8-mode qdq"
        )
    if not implicit_int8 and not strongly_typed:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} has no strongly typed networks (TensorRT >= 10 needed); on JetPack "
            "5 / 6.0 use --int8-mode calibrator for INT8, or upgrade TensorRT"
        )
    flags = 0
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if version < (10, 0, 0):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
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
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    if options.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    shapes = options.batch.shapes(options.img_size)
    profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    notes: list[str] = []
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
