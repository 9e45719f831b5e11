"""Run a TensorRT engine (``.engine`` plan) from Python: the plugin library, I/O buffers, a CUDA stream.

::

    from edge_biformer.runtime import Engine

    with Engine("tiny-int8/model.int8.engine") as engine:   # finds libedge_biformer_plugins.so
        logits = engine(batch)                             # numpy N x 3 x H x W float32 -> numpy

* **Plugin library**: :func:`find_plugin_library` (the argument, ``EDGE_BIFORMER_PLUGIN_LIB``, the
  engine's folder, the path its manifest records, the repository build, the package), loaded into
  TensorRT's registry with the process-wide logger (:func:`edge_biformer.engine.tensorrt.logger`)
  before the plan is deserialized. A library built for another TensorRT major is refused with the
  library's own words, one without kernels for this GPU's arch (no cubin of it, no older PTX) with the
  rebuild command; a plan TensorRT cannot deserialize (another TensorRT version, another GPU,
  no plugin) is a one-paragraph error naming the file.
* **Buffers**: device buffers and pinned host buffers are allocated once per input shape (the batch is
  dynamic within the optimisation profile; batches above its max are run in chunks) and kept.
* **Stream**: one CUDA stream per engine (cuda-python's runtime API). ``torch`` CUDA tensors are used
  in place (zero copy) on torch's current stream, and the output is a torch CUDA tensor.
* **CUDA graphs**: ``cuda_graph=True`` captures ``enqueueV3`` once per shape and replays it.
* **Threads**: an :class:`Engine` has one execution context; :meth:`Engine.run` holds a lock, so calls
  from several threads are safe but serialised. For parallel inference make one :class:`Engine` per
  thread (each has its own context, buffers and stream).

Nothing here imports TensorRT or cuda-python until an :class:`Engine` is made.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.errors import EdgeBiformerError

__all__ = ["Engine", "EngineError", "IOTensor", "compute_capability", "find_plugin_library", "import_cudart"]


class EngineError(EdgeBiformerError):
    """An engine that cannot be loaded or run here (no TensorRT, no plugin, another TensorRT or GPU)."""


def import_cudart() -> Any:
    """cuda-python's CUDA runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]
        except ImportError as err:
            raise EngineError(
                "running a TensorRT engine from Python needs cuda-python, which cannot be imported here "
                f"({err}): pip install 'cuda-python>=12,<14' (or the [tensorrt] extra of edge-biformer)"
            ) from None
    return cudart


def _check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` result; raise :class:`EngineError` on an error."""
    cudart = import_cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != int(cudart.cudaError_t.cudaSuccess):
        _, name = cudart.cudaGetErrorName(err)
        raise EngineError(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _engine_manifest(engine_path: Path) -> dict[str, Any]:
    from edge_biformer.manifest import manifest_path, read_manifest

    return read_manifest(manifest_path(engine_path)) or {}


def find_plugin_library(
    engine_path: str | os.PathLike[str], explicit: str | os.PathLike[str] | None = None
) -> Path | None:
    """The plugin library for an engine, or ``None`` when none is found (and none is required).

    Order: ``explicit``, ``EDGE_BIFORMER_PLUGIN_LIB``, ``libedge_biformer_plugins.so`` beside the
    engine, the library its manifest records (``plugin_library.path``), then
    :func:`edge_biformer.plugins.candidate_paths` (the repository build, the package's ``lib/``).

    Raises:
        EngineError: ``explicit`` or the environment variable names a missing file, or the engine's
            manifest says it needs the plugin and no library is found.
    """
    from edge_biformer import plugins

    engine_path = Path(engine_path)
    if explicit is not None:
        if not Path(explicit).is_file():
            raise EngineError(f"--plugin-library {explicit} does not exist; give the path of a built library")
        return Path(explicit).resolve()
    env = os.environ.get(plugins.ENV_VAR)
    if env:
        if not Path(env).is_file():
            raise EngineError(
                f"{plugins.ENV_VAR} is set to {env!r}, but there is no file there: point it at a built "
                f"{plugins.LIBRARY_NAME} or unset it"
            )
        return Path(env).resolve()
    record = _engine_manifest(engine_path).get("plugin_library") or {}
    candidates = [engine_path.parent / plugins.LIBRARY_NAME]
    if record.get("path"):
        candidates.append(Path(record["path"]))
    candidates += plugins.candidate_paths()
    for path in candidates:
        if path.is_file():
            return path.resolve()
    if record.get("needed"):
        raise EngineError(
            f"{engine_path} holds BiLevelRoutingAttention plugin layers, and the plugin library "
            f"{plugins.LIBRARY_NAME} was not found (looked in: {', '.join(str(p) for p in candidates)}). "
            f"Copy it next to the engine, set {plugins.ENV_VAR}, or pass plugin_library= / "
            f"--plugin-library; build it with '{plugins.build_command()}'"
        )
    return None


def _check_library_major(library: Path, trt: Any) -> None:
    """Refuse a plugin library built against another TensorRT major than the one installed."""
    import re

    from edge_biformer import plugins

    try:
        status = plugins.library_status(library)
    except EdgeBiformerError as err:
        raise EngineError(str(err)) from None
    match = re.search(r"built against TensorRT (\d+)\.", status)
    installed = int(str(trt.__version__).split(".")[0])
    if match and int(match.group(1)) != installed:
        raise EngineError(
            f"the plugin library {library} was built against TensorRT {match.group(1)} headers, but TensorRT "
            f"{trt.__version__} is installed (the library reports: {status}). Rebuild it for this TensorRT "
            f"with '{plugins.build_command()}'"
        )


def compute_capability(cudart: Any, device: int) -> tuple[int, int]:
    """(major, minor) of a CUDA device."""
    attr = cudart.cudaDeviceAttr
    major = _check(
        cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device),
        "cudaDeviceGetAttribute",
    )
    minor = _check(
        cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device),
        "cudaDeviceGetAttribute",
    )
    return int(major), int(minor)


def _check_library_arch(library: Path, capability: tuple[int, int]) -> None:
    """Refuse a plugin library without kernels for this GPU (no cubin of its arch, no older PTX to JIT).

    A library whose kernel images cannot be read (none found in its bytes) is let through: TensorRT's
    own error then says more than a guess would.
    """
    from edge_biformer import plugins
    from edge_biformer.plugins import library_archs

    cubins, ptx = library_archs(library.read_bytes())
    sm = capability[0] * 10 + capability[1]
    if not (cubins or ptx) or sm in cubins or any(p <= sm for p in ptx):
        return
    raise EngineError(
        f"the plugin library {library} has no kernels for this GPU (sm_{sm}): it holds cubins for "
        f"sm {sorted(cubins) or '-'} and PTX for sm {sorted(ptx) or '-'}. Rebuild it for this GPU with "
        f"'{plugins.build_command()} --cuda-architectures {sm}'"
    )


@dataclass(frozen=True)
class IOTensor:
    """One input or output of the engine."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for dynamic dims


class _Buffers:
    """Device and pinned host memory for one input shape (and, once captured, its CUDA graph)."""

    def __init__(self, cudart: Any, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype]) -> None:
        self.cudart = cudart
        self.shapes = shapes
        self.device: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        self._host_ptrs: list[int] = []
        self.graph_exec: Any = None
        self.graph: Any = None
        for name, shape in shapes.items():
            nbytes = int(np.prod(shape)) * dtypes[name].itemsize
            self.device[name] = int(
                _check(cudart.cudaMalloc(max(nbytes, 1)), f"cudaMalloc({nbytes}) for {name}")
            )
            ptr = int(_check(cudart.cudaMallocHost(max(nbytes, 1)), f"cudaMallocHost({nbytes}) for {name}"))
            self._host_ptrs.append(ptr)
            import ctypes

            raw = (ctypes.c_byte * max(nbytes, 1)).from_address(ptr)
            self.host[name] = np.frombuffer(raw, dtype=dtypes[name], count=int(np.prod(shape))).reshape(shape)

    def free(self) -> None:
        cudart = self.cudart
        if self.graph_exec is not None:
            cudart.cudaGraphExecDestroy(self.graph_exec)
            cudart.cudaGraphDestroy(self.graph)
            self.graph_exec = self.graph = None
        for ptr in self.device.values():
            cudart.cudaFree(ptr)
        for ptr in self._host_ptrs:
            cudart.cudaFreeHost(ptr)
        self.device.clear()
        self.host.clear()
        self._host_ptrs.clear()


class Engine:
    """A deserialized TensorRT engine with one execution context, ready to run batches.

    Args:
        path: the ``.engine`` plan.
        plugin_library: the plugin library; default :func:`find_plugin_library`.
        device: the CUDA device to run on.
        cuda_graph: capture the enqueue once per input shape and replay it (less launch overhead).

    Raises:
        EngineError: TensorRT or cuda-python are missing, the plan cannot be read or deserialized,
            or the plugin library does not fit the installed TensorRT.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        plugin_library: str | os.PathLike[str] | None = None,
        *,
        device: int = 0,
        cuda_graph: bool = False,
    ) -> None:
        from edge_biformer.engine.tensorrt import import_tensorrt, load_plugin_library, logger, missing_reason

        self.path = Path(path)
        if not self.path.is_file():
            raise EngineError(f"the engine {self.path} does not exist; build it with `edge-biformer build`")
        try:
            trt = import_tensorrt()
        except Exception:
            raise EngineError(missing_reason()) from None
        self._trt = trt
        self._cudart = cudart = import_cudart()
        _check(cudart.cudaSetDevice(device), f"cudaSetDevice({device})")
        self.device = device
        self.plugin_library = find_plugin_library(self.path, plugin_library)
        if self.plugin_library is not None:
            _check_library_major(self.plugin_library, trt)
            _check_library_arch(self.plugin_library, compute_capability(cudart, device))
            load_plugin_library(self.plugin_library, trt)
        self._runtime = trt.Runtime(logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            built = (_engine_manifest(self.path).get("versions") or {}).get("tensorrt")
            raise EngineError(
                f"TensorRT {trt.__version__} could not deserialize {self.path} (see TensorRT's messages)"
                + (f"; it was built with TensorRT {built}" if built else "")
                + ". An engine runs only with the TensorRT version and GPU it was built for, and an engine "
                "with plugin layers needs the plugin library"
                + (f" (loaded: {self.plugin_library})" if self.plugin_library else " (none was found)")
                + ": rebuild it on this machine with `edge-biformer build --from-onnx ...`"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EngineError(f"TensorRT could not create an execution context for {self.path} (GPU memory?)")
        self.tensors: list[IOTensor] = []
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            self.tensors.append(
                IOTensor(
                    name=name,
                    is_input=self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                    dtype=np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))),
                    shape=tuple(self._engine.get_tensor_shape(name)),
                )
            )
        inputs = [t for t in self.tensors if t.is_input]
        if len(inputs) != 1:
            raise EngineError(
                f"{self.path} has {len(inputs)} inputs; this runtime runs image models with one"
            )
        self.input = inputs[0]
        self.outputs = [t for t in self.tensors if not t.is_input]
        if -1 in self.input.shape:
            lo, opt, hi = self._engine.get_tensor_profile_shape(self.input.name, 0)
            self.profile = (tuple(lo), tuple(opt), tuple(hi))
        else:
            self.profile = (self.input.shape,) * 3
        self.cuda_graph = cuda_graph
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[tuple[int, ...], _Buffers] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- facts ----------------------------------------------------------------------------------------
    @property
    def max_batch(self) -> int:
        """The largest batch of the optimisation profile."""
        return int(self.profile[2][0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the input."""
        return int(self.profile[2][2]), int(self.profile[2][3])

    # -- running --------------------------------------------------------------------------------------
    def __call__(self, batch: Any) -> Any:
        return self.run(batch)

    def run(self, batch: Any) -> Any:
        """The first output for ``batch`` (``N x 3 x H x W``): numpy in, numpy out; torch CUDA in, torch out.

        Batches larger than the profile's max run in chunks. Raises :class:`EngineError` for a shape
        outside the profile or a failed CUDA/TensorRT call.
        """
        if self._closed:
            raise EngineError(f"the engine {self.path} was closed")
        if type(batch).__module__.startswith("torch") and getattr(batch, "is_cuda", False):
            return self._run_torch(batch)
        x = np.ascontiguousarray(batch, dtype=self.input.dtype)
        if x.ndim != len(self.input.shape):
            raise EngineError(f"{self.path} takes a {self.input.shape} input, got shape {x.shape}")
        if x.shape[0] > self.max_batch:
            return np.concatenate(
                [self.run(x[i : i + self.max_batch]) for i in range(0, x.shape[0], self.max_batch)]
            )
        with self._lock:
            return self._run_numpy(x)

    def run_all(self, batch: Any) -> dict[str, np.ndarray]:
        """Every output by name for a numpy ``batch`` (``N x C x H x W``), in chunks of the profile's max.

        Raises :class:`EngineError` as :meth:`run` does.
        """
        if self._closed:
            raise EngineError(f"the engine {self.path} was closed")
        x = np.ascontiguousarray(batch, dtype=self.input.dtype)
        if x.ndim != len(self.input.shape):
            raise EngineError(f"{self.path} takes a {self.input.shape} input, got shape {x.shape}")
        chunks = []
        for i in range(0, x.shape[0], self.max_batch):
            with self._lock:
                chunks.append(self._run_numpy_all(x[i : i + self.max_batch]))
        return {t.name: np.concatenate([c[t.name] for c in chunks]) for t in self.outputs}

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile
        if any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=True)):
            raise EngineError(
                f"input shape {shape} is outside the engine's optimisation profile (min {lo}, max {hi}) of "
                f"{self.path}; rebuild with another --batch or --img-size"
            )

    def _buffers_for(self, shape: tuple[int, ...]) -> _Buffers:
        buffers = self._buffers.get(shape)
        if buffers is not None:
            return buffers
        self._check_shape(shape)
        ctx = self._context
        if not ctx.set_input_shape(self.input.name, shape):
            raise EngineError(f"TensorRT refused the input shape {shape} for {self.path}")
        shapes = {self.input.name: shape}
        for t in self.outputs:
            shapes[t.name] = tuple(ctx.get_tensor_shape(t.name))
        buffers = _Buffers(self._cudart, shapes, {t.name: t.dtype for t in self.tensors})
        self._buffers[shape] = buffers
        return buffers

    def _enqueue(self, buffers: _Buffers) -> None:
        cudart, ctx = self._cudart, self._context
        if not ctx.set_input_shape(self.input.name, buffers.shapes[self.input.name]):
            raise EngineError(f"TensorRT refused the input shape {buffers.shapes[self.input.name]}")
        for name, ptr in buffers.device.items():
            ctx.set_tensor_address(name, ptr)
        if buffers.graph_exec is not None:
            _check(cudart.cudaGraphLaunch(buffers.graph_exec, self._stream), "cudaGraphLaunch")
            return
        if self.cuda_graph:
            if not ctx.execute_async_v3(self._stream):  # once outside the capture (TensorRT's first-run work)
                raise EngineError(f"TensorRT enqueueV3 failed for {self.path} (see TensorRT's messages)")
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
            _check(cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
            ok = ctx.execute_async_v3(self._stream)
            graph = _check(cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
            if not ok:
                raise EngineError(f"TensorRT enqueueV3 failed during CUDA graph capture of {self.path}")
            buffers.graph = graph
            buffers.graph_exec = _check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            _check(cudart.cudaGraphLaunch(buffers.graph_exec, self._stream), "cudaGraphLaunch")
            return
        if not ctx.execute_async_v3(self._stream):
            raise EngineError(f"TensorRT enqueueV3 failed for {self.path} (see TensorRT's messages above)")

    def _run_numpy(self, x: np.ndarray) -> np.ndarray:
        return self._run_numpy_all(x, first_only=True)[self.outputs[0].name]

    def _run_numpy_all(self, x: np.ndarray, first_only: bool = False) -> dict[str, np.ndarray]:
        cudart = self._cudart
        buffers = self._buffers_for(tuple(x.shape))
        name = self.input.name
        np.copyto(buffers.host[name], x)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(
            cudart.cudaMemcpyAsync(
                buffers.device[name], buffers.host[name].ctypes.data, x.nbytes, h2d, self._stream
            ),
            "cudaMemcpyAsync (input)",
        )
        self._enqueue(buffers)
        wanted = self.outputs[:1] if first_only else self.outputs
        for t in wanted:
            host = buffers.host[t.name]
            _check(
                cudart.cudaMemcpyAsync(
                    host.ctypes.data, buffers.device[t.name], host.nbytes, d2h, self._stream
                ),
                f"cudaMemcpyAsync (output {t.name})",
            )
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {t.name: buffers.host[t.name].copy() for t in wanted}

    def _run_torch(self, batch: Any) -> Any:
        import torch

        x = batch.contiguous().to(dtype=getattr(torch, str(self.input.dtype)))
        shape = tuple(x.shape)
        if shape[0] > self.max_batch:
            return torch.cat(
                [self._run_torch(x[i : i + self.max_batch]) for i in range(0, shape[0], self.max_batch)]
            )
        with self._lock:
            self._check_shape(shape)
            ctx = self._context
            if not ctx.set_input_shape(self.input.name, shape):
                raise EngineError(f"TensorRT refused the input shape {shape} for {self.path}")
            out_t = self.outputs[0]
            out = torch.empty(
                tuple(ctx.get_tensor_shape(out_t.name)),
                dtype=getattr(torch, str(out_t.dtype)),
                device=x.device,
            )
            extra = [
                torch.empty(
                    tuple(ctx.get_tensor_shape(t.name)), dtype=getattr(torch, str(t.dtype)), device=x.device
                )
                for t in self.outputs[1:]
            ]
            ctx.set_tensor_address(self.input.name, x.data_ptr())
            ctx.set_tensor_address(out_t.name, out.data_ptr())
            for t, e in zip(self.outputs[1:], extra, strict=True):
                ctx.set_tensor_address(t.name, e.data_ptr())
            stream = torch.cuda.current_stream(x.device).cuda_stream
            if not ctx.execute_async_v3(stream):
                raise EngineError(
                    f"TensorRT enqueueV3 failed for {self.path} (see TensorRT's messages above)"
                )
        return out  # ordered on torch's current stream: no synchronisation needed by torch code

    def time_compute(self, batch: np.ndarray, iterations: int = 50) -> list[float]:
        """GPU time of ``iterations`` enqueues on resident buffers, in seconds each (CUDA events)."""
        cudart = self._cudart
        x = np.ascontiguousarray(batch, dtype=self.input.dtype)
        with self._lock:
            buffers = self._buffers_for(tuple(x.shape))
            np.copyto(buffers.host[self.input.name], x)
            h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            _check(
                cudart.cudaMemcpy(
                    buffers.device[self.input.name], buffers.host[self.input.name].ctypes.data, x.nbytes, h2d
                ),
                "cudaMemcpy (input)",
            )
            start = _check(cudart.cudaEventCreate(), "cudaEventCreate")
            stop = _check(cudart.cudaEventCreate(), "cudaEventCreate")
            times = []
            try:
                for _ in range(iterations):
                    _check(cudart.cudaEventRecord(start, self._stream), "cudaEventRecord")
                    self._enqueue(buffers)
                    _check(cudart.cudaEventRecord(stop, self._stream), "cudaEventRecord")
                    _check(cudart.cudaEventSynchronize(stop), "cudaEventSynchronize")
                    times.append(
                        float(_check(cudart.cudaEventElapsedTime(start, stop), "cudaEventElapsedTime")) / 1e3
                    )
            finally:
                cudart.cudaEventDestroy(start)
                cudart.cudaEventDestroy(stop)
        return times

    # -- lifetime -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the buffers, the stream, the context and the engine (idempotent)."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            for buffers in self._buffers.values():
                buffers.free()
            self._buffers.clear()
            self._cudart.cudaStreamDestroy(self._stream)
            self._context = None
            self._engine = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        with contextlib.suppress(Exception):
            self.close()
