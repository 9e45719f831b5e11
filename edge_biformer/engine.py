"""TensorRT engine build (lazy: TensorRT is imported only when an engine is built or run).

* TensorRT >= 10: a *strongly typed* network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``)
  parsed from the precision-specific ONNX (fp32, mixed fp16, or int8 Q/DQ); the types in the graph
  decide every layer's precision, so no precision flags are set. For fp32, TF32 is disabled so
  the engine matches PyTorch's FP32 within the fp32 tolerance.
* TensorRT < 10.1 (JetPack 5 / 6.0) can also use implicit INT8 with a calibrator
  (``int8_mode="calibrator"``): a weakly typed network from the FP32 rewritten ONNX, FP16 + INT8
  builder flags and :class:`EntropyCalibrator` / :class:`MinMaxCalibrator` fed from
  :mod:`edge_biformer.calib` through cuda-python (or pycuda), with a calibration cache.

Common: the plugin library is loaded into the plugin registry before parsing; one optimisation
profile (min/opt/max batch); workspace limit; builder optimisation level; a timing cache read
before and written after each build; ``dla_core`` with GPU fallback (Jetson). The output is a
plain serialized plan (``trtexec --loadEngine=... --plugins=...`` and C++ ``deserializeCudaEngine``
load it as is).
"""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import atomic_output, sha256_file

INPUT_NAME = "input"
INT8_MODES = ("qdq", "calibrator")


class EngineBuildError(EdgeBiformerError):
    """A TensorRT build that failed (parser errors, unsupported option, builder failure)."""


def _import_tensorrt() -> Any:
    import tensorrt as trt

    return trt


def tensorrt_available() -> bool:
    """True when the TensorRT Python package imports (a GPU is still needed to build)."""
    try:
        _import_tensorrt()
    except Exception:
        return False
    return True


def missing_reason() -> str:
    """Why TensorRT cannot be used here (for logs and skipped checks)."""
    try:
        _import_tensorrt()
    except Exception as err:
        return (
            f"TensorRT is not installed here ({type(err).__name__}: {err}); the engine must be built on "
            "the target GPU (pip install tensorrt on x86-64, or JetPack's TensorRT on Jetson)"
        )
    return ""


def tensorrt_version() -> tuple[int, int, int] | None:
    """TensorRT's version as a tuple, or ``None`` when it is absent."""
    try:
        trt = _import_tensorrt()
    except Exception:
        return None
    parts = [int(p) for p in trt.__version__.split(".")[:3] if p.isdigit()]
    return tuple([*parts, 0, 0, 0][:3])  # type: ignore[return-value]


@dataclass
class BatchProfile:
    """One optimisation profile over the batch dimension."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``"1,8,32"`` (min,opt,max) or ``"8"`` (static)."""
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise EdgeBiformerError(f"--batch expects MIN,OPT,MAX or N, got {text!r}") from None
        if len(values) == 1:
            values = values * 3
        if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
            raise EdgeBiformerError(f"--batch expects 1 <= MIN <= OPT <= MAX (e.g. 1,8,32), got {text!r}")
        return cls(*values)

    def shapes(self, img_size: tuple[int, int]) -> dict[str, list[int]]:
        """Input shapes of the profile."""
        h, w = img_size
        return {k: [getattr(self, k), 3, h, w] for k in ("min", "opt", "max")}

    def trtexec_args(self, img_size: tuple[int, int]) -> list[str]:
        """``--minShapes/--optShapes/--maxShapes`` for trtexec."""
        s = self.shapes(img_size)
        return [f"--{k}Shapes={INPUT_NAME}:{'x'.join(map(str, s[k]))}" for k in ("min", "opt", "max")]


@dataclass
class EngineOptions:
    """Builder options (the CLI's ``build`` flags)."""

    precision: str
    img_size: tuple[int, int]
    batch: BatchProfile
    workspace_mib: int | None = None
    opt_level: int | None = None
    timing_cache: str | None = None
    dla_core: int | None = None
    plugin_library: str | None = None
    int8_mode: str = "qdq"
    calib_cache: str | None = None
    calib_method: str = "entropy"
    #: Identifies the graph + calibration data + method; the calibrator cache is reused only for the
    #: same key (kept in ``<calib_cache>.json``).
    calib_key: str | None = None


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


def trtexec_command(
    onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], options: EngineOptions
) -> str:
    """The equivalent ``trtexec`` line for the target."""
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    args += options.batch.trtexec_args(options.img_size)
    if options.plugin_library:
        # --plugins works on TensorRT 8.x-10.x (10.x also has --staticPlugins, same effect here).
        args.append(f"--plugins={options.plugin_library}")
    if options.precision == "int8" and options.int8_mode == "calibrator":
        args += ["--int8", "--fp16"]
        if options.calib_cache:
            args.append(f"--calib={options.calib_cache}")
    else:
        args.append("--stronglyTyped")
        if options.precision == "fp32":
            args.append("--noTF32")
    if options.workspace_mib:
        args.append(f"--memPoolSize=workspace:{options.workspace_mib}M")
    if options.opt_level is not None:
        args.append(f"--builderOptimizationLevel={options.opt_level}")
    if options.timing_cache:
        args.append(f"--timingCacheFile={options.timing_cache}")
    if options.dla_core is not None:
        args += [f"--useDLACore={options.dla_core}", "--allowGPUFallback"]
    return shlex.join(args)


def _trt_logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def load_plugin_library(path: str | os.PathLike[str] | None, trt: Any | None = None) -> None:
    """Load the plugin library into TensorRT's plugin registry (needed to parse and to run)."""
    if path is None:
        return
    if not Path(path).is_file():
        raise EngineBuildError(
            f"plugin library {path} does not exist: build it (plugins/, CMake) or pass --plugin-library"
        )
    trt = trt or _import_tensorrt()
    trt.init_libnvinfer_plugins(_trt_logger(trt), "")
    registry = trt.get_plugin_registry()
    if hasattr(registry, "load_library"):
        registry.load_library(str(path))
    else:  # very old TensorRT: static registration on dlopen
        import ctypes

        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)


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
    trt = _import_tensorrt()
    version = tensorrt_version() or (0, 0, 0)
    start = time.perf_counter()
    logger = _trt_logger(trt)
    load_plugin_library(options.plugin_library, trt)
    builder = trt.Builder(logger)
    implicit_int8 = options.precision == "int8" and options.int8_mode == "calibrator"
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
    parser = trt.OnnxParser(network, logger)
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
    calibrator = None
    if implicit_int8:
        if calib_batches is None:
            raise EngineBuildError("--int8-mode calibrator needs calibration data (--calib-data)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
        calibrator = make_calibrator(trt, calib_batches, options)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)
    cache = None
    if options.timing_cache:
        blob = Path(options.timing_cache).read_bytes() if Path(options.timing_cache).is_file() else b""
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


# --------------------------------------------------------------------------------------------------
# Implicit INT8 calibrator (TensorRT < 10.1)


class _DeviceBuffer:
    """One device allocation through cuda-python (preferred) or pycuda."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        try:
            from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        except ImportError:
            try:
                from cuda import cudart  # older cuda-python
            except ImportError:
                cudart = None
        self._cudart = cudart
        if cudart is not None:
            err, ptr = cudart.cudaMalloc(nbytes)
            if int(err) != 0:
                raise EngineBuildError(f"cudaMalloc({nbytes}) failed with {err}")
            self.ptr = int(ptr)
            return
        try:
            import pycuda.autoinit  # noqa: F401
            import pycuda.driver as cuda
        except ImportError:
            raise EngineBuildError(
                "the INT8 calibrator needs cuda-python (pip install cuda-python) or pycuda to copy "
                "calibration batches to the GPU"
            ) from None
        self._pycuda = cuda
        self._alloc = cuda.mem_alloc(nbytes)
        self.ptr = int(self._alloc)

    def upload(self, array: np.ndarray) -> None:
        """Copy a host array (contiguous) to the buffer."""
        array = np.ascontiguousarray(array)
        if self._cudart is not None:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            (err,) = self._cudart.cudaMemcpy(self.ptr, array.ctypes.data, array.nbytes, kind)
            if int(err) != 0:
                raise EngineBuildError(f"cudaMemcpy failed with {err}")
        else:
            self._pycuda.memcpy_htod(self._alloc, array)

    def free(self) -> None:
        """Release the allocation."""
        if self._cudart is not None and self.ptr:
            self._cudart.cudaFree(self.ptr)
            self.ptr = 0


def make_calibrator(trt: Any, batches: Callable[[], Iterator[np.ndarray]], options: EngineOptions) -> Any:
    """An ``IInt8EntropyCalibrator2`` (or ``IInt8MinMaxCalibrator`` for ``calib_method=max``)."""
    base = trt.IInt8MinMaxCalibrator if options.calib_method == "max" else trt.IInt8EntropyCalibrator2
    cache_path = Path(options.calib_cache) if options.calib_cache else None
    key_path = cache_path.with_name(cache_path.name + ".json") if cache_path is not None else None
    batch_size = options.batch.opt

    class _Calibrator(base):  # type: ignore[misc, valid-type]
        """Feeds fixed-size batches (the profile's opt batch); a smaller last batch is dropped."""

        def __init__(self) -> None:
            base.__init__(self)
            self._iter: Iterator[np.ndarray] | None = None
            self._buffer: _DeviceBuffer | None = None

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            if self._iter is None:
                self._iter = _fixed_batches(batches(), batch_size)
            batch = next(self._iter, None)
            if batch is None:
                if self._buffer is not None:
                    self._buffer.free()
                    self._buffer = None
                return None
            if self._buffer is None:
                self._buffer = _DeviceBuffer(batch.nbytes)
            self._buffer.upload(batch)
            return [self._buffer.ptr]

        def read_calibration_cache(self) -> bytes | None:
            # Only a cache of the same graph, data and method: other scales would be wrong silently.
            if cache_path is None or key_path is None or not cache_path.is_file() or not key_path.is_file():
                return None
            try:
                key = json.loads(key_path.read_text()).get("key")
            except (OSError, ValueError):
                return None
            return cache_path.read_bytes() if key and key == options.calib_key else None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path is not None and key_path is not None:
                with atomic_output(cache_path, suffix=".cache") as tmp:
                    tmp.write_bytes(bytes(memoryview(cache)))
                with atomic_output(key_path, suffix=".json") as tmp:
                    tmp.write_text(json.dumps({"key": options.calib_key}) + "\n")

    return _Calibrator()


def _fixed_batches(source: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Re-chunk arbitrary batches into exactly ``size`` samples each (the remainder is dropped)."""
    pending: list[np.ndarray] = []
    count = 0
    for batch in source:
        pending.append(batch)
        count += batch.shape[0]
        while count >= size:
            stacked = np.concatenate(pending)
            yield np.ascontiguousarray(stacked[:size], dtype=np.float32)
            rest = stacked[size:]
            pending, count = ([rest] if rest.shape[0] else []), rest.shape[0]


# --------------------------------------------------------------------------------------------------
# Running an engine (for the accuracy check)


def engine_runner(
    engine_path: str | os.PathLike[str], plugin_library: str | None
) -> Callable[[np.ndarray], np.ndarray]:
    """A function running the engine on one batch, through Polygraphy's ``TrtRunner``."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    load_plugin_library(plugin_library)
    runner = TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))))
    runner.activate()

    def run(batch: np.ndarray) -> np.ndarray:
        outputs = runner.infer({INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        value = next(iter(outputs.values()))
        return np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float32)

    return run
