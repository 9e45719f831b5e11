"""The implicit INT8 calibrator (TensorRT < 10.1, JetPack 5 / 6.0): TensorRT calibrates while it builds.

Batches of :mod:`edge_biformer.calib` are copied to the GPU through cuda-python (or pycuda) and fed
in fixed-size chunks (the profile's opt batch). The calibration cache is reused only for the same
graph, data and method (its key sits beside it in ``<cache>.json``).

The buffers live in the device's *primary* CUDA context, the one TensorRT and the CUDA runtime use:
cuda-python's runtime API allocates there, and pycuda is pointed at it (``pycuda.autoprimaryctx``)
rather than at a context of its own (``pycuda.autoinit`` would create and push a new one in the middle
of the build, where TensorRT's device pointers are not valid).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.engine.options import EngineOptions
from edge_biformer.engine.tensorrt import EngineBuildError
from edge_biformer.utils import atomic_output

__all__ = ["fixed_batches", "make_calibrator"]


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
            import pycuda.driver as cuda
        except ImportError:
            raise EngineBuildError(
                "the INT8 calibrator needs cuda-python (pip install cuda-python) or pycuda to copy "
                "calibration batches to the GPU"
            ) from None
        _use_primary_context(cuda)
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
        elif self._cudart is None and self.ptr:
            self._alloc.free()
        self.ptr = 0


def _use_primary_context(cuda: Any) -> None:
    """Make pycuda allocate in the context current here (TensorRT's), or in the primary context if none is."""
    cuda.init()
    if cuda.Context.get_current() is None:
        try:
            import pycuda.autoprimaryctx  # noqa: F401  retains and pushes the device's primary context
        except ImportError:
            raise EngineBuildError(
                "pycuda is too old for the INT8 calibrator (it needs pycuda.autoprimaryctx, pycuda >= "
                "2021.1); pip install 'pycuda>=2022.2' or cuda-python"
            ) from None


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
                self._iter = fixed_batches(batches(), batch_size)
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


def fixed_batches(source: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
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
