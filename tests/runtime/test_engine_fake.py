"""The Python engine runtime's own logic (buffers per shape, dynamic batch, chunks, profile errors, CUDA
graphs, threads, closing) on a stand-in for TensorRT and cuda-python that computes on host memory.

The stand-in follows the TensorRT 10 Python API and cuda-python's ``(err, value)`` results; it checks
that every device address the engine passes was allocated and is large enough. What it cannot show
(TensorRT itself, the plugin on a GPU) is ``test_predictor.py::test_engine_top5_matches_polygraphy``.
"""

from __future__ import annotations

import ctypes
import enum
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from edge_biformer.runtime import engine as engine_module
from edge_biformer.runtime.engine import Engine, EngineError

CLASSES, H, W = 10, 8, 8


class FakeCudart:
    """cuda-python's runtime API on host memory: every call returns ``(err, *values)``."""

    class cudaError_t(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind(enum.IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self) -> None:
        self.blocks: dict[int, ctypes.Array] = {}
        self.calls: list[str] = []
        self.capturing = False
        self.graph_launches = 0

    def _alloc(self, nbytes: int) -> tuple[int, int]:
        block = (ctypes.c_byte * nbytes)()
        self.blocks[ctypes.addressof(block)] = block
        return 0, ctypes.addressof(block)

    def size_at(self, ptr: int) -> int:
        assert ptr in self.blocks, f"address {ptr:#x} was never allocated"
        return len(self.blocks[ptr])

    def cudaSetDevice(self, device):
        return (0,)

    def cudaMalloc(self, nbytes):
        self.calls.append("cudaMalloc")
        return self._alloc(nbytes)

    cudaMallocHost = cudaMalloc

    def cudaFree(self, ptr):
        self.blocks.pop(ptr)
        return (0,)

    cudaFreeHost = cudaFree

    def cudaStreamCreate(self):
        return 0, 7

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        device = dst if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else src
        assert self.size_at(device) >= nbytes
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaMemcpy(self, dst, src, nbytes, kind):
        return self.cudaMemcpyAsync(dst, src, nbytes, kind, 0)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = True
        return (0,)

    def cudaStreamEndCapture(self, stream):
        self.capturing = False
        return 0, "graph"

    def cudaGraphInstantiate(self, graph, flags):
        return 0, SimpleNamespace(replay=None)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.graph_launches += 1
        graph_exec.replay()
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec):
        return (0,)

    def cudaGraphDestroy(self, graph):
        return (0,)

    def cudaGetErrorName(self, err):
        return 0, self.cudaError_t(err).name.encode()


class FakeContext:
    """An execution context: logits[n, c] = mean of image n's channel (c % 3) + c."""

    def __init__(self, cudart: FakeCudart) -> None:
        self.cudart = cudart
        self.shape: tuple[int, ...] | None = None
        self.addresses: dict[str, int] = {}
        self.runs = 0

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        assert self.shape is not None
        return self.shape if name == "input" else (self.shape[0], CLASSES)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def _compute(self) -> None:
        n = self.shape[0]
        src, dst = self.addresses["input"], self.addresses["logits"]
        assert self.cudart.size_at(src) >= n * 3 * H * W * 4 and self.cudart.size_at(dst) >= n * CLASSES * 4
        x = np.frombuffer((ctypes.c_float * (n * 3 * H * W)).from_address(src), np.float32).reshape(
            n, 3, H, W
        )
        out = np.frombuffer((ctypes.c_float * (n * CLASSES)).from_address(dst), np.float32).reshape(
            n, CLASSES
        )
        out[:] = x.mean(axis=(2, 3))[:, np.arange(CLASSES) % 3] + np.arange(CLASSES)

    def execute_async_v3(self, stream):
        self.runs += 1
        if self.cudart.capturing:  # recorded, not run: the graph replays it
            addresses, shape = dict(self.addresses), self.shape

            def replay() -> None:
                self.addresses, self.shape = dict(addresses), shape
                self._compute()

            self.captured = replay
            return True
        self._compute()
        return True


def _fake_tensorrt(cudart: FakeCudart, max_batch: int = 4):
    mode = SimpleNamespace(INPUT="in", OUTPUT="out")
    contexts: list[FakeContext] = []

    class FakeEngine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["input", "logits"][i]

        def get_tensor_mode(self, name):
            return mode.INPUT if name == "input" else mode.OUTPUT

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_shape(self, name):
            return (-1, 3, H, W) if name == "input" else (-1, CLASSES)

        def get_tensor_profile_shape(self, name, profile):
            return (1, 3, H, W), (2, 3, H, W), (max_batch, 3, H, W)

        def create_execution_context(self):
            contexts.append(FakeContext(cudart))
            return contexts[-1]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return FakeEngine() if data == b"plan" else None

    trt = SimpleNamespace(__version__="10.9.0", Runtime=Runtime, TensorIOMode=mode, nptype=np.dtype)
    return trt, contexts


@pytest.fixture()
def fake(monkeypatch, tmp_path):
    from edge_biformer.engine import tensorrt as trt_module

    cudart = FakeCudart()
    trt, contexts = _fake_tensorrt(cudart)
    monkeypatch.setattr(trt_module, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_module, "logger", lambda trt=None: None)
    monkeypatch.setattr(engine_module, "import_cudart", lambda: cudart)
    monkeypatch.setattr(engine_module, "find_plugin_library", lambda path, explicit=None: None)
    # a graph capture records the enqueue; the launch replays what was recorded
    original = FakeCudart.cudaGraphInstantiate

    def instantiate(self, graph, flags):
        err, graph_exec = original(self, graph, flags)
        graph_exec.replay = contexts[-1].captured
        return err, graph_exec

    monkeypatch.setattr(FakeCudart, "cudaGraphInstantiate", instantiate)
    path = tmp_path / "model.fp16.engine"
    path.write_bytes(b"plan")
    return SimpleNamespace(cudart=cudart, contexts=contexts, path=path)


def _expected(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=(2, 3))[:, np.arange(CLASSES) % 3] + np.arange(CLASSES)


def test_dynamic_batch_buffers_once_per_shape_and_chunks(fake):
    rng = np.random.default_rng(0)
    with Engine(fake.path) as engine:
        assert (engine.max_batch, engine.image_size, engine.input.name) == (4, (H, W), "input")
        for n in (1, 3, 3, 1):
            x = rng.standard_normal((n, 3, H, W)).astype(np.float32)
            np.testing.assert_allclose(engine.run(x), _expected(x), rtol=1e-5, atol=1e-6)
        assert sorted(engine._buffers) == [(1, 3, H, W), (3, 3, H, W)]  # allocated once per shape
        assert fake.cudart.calls.count("cudaMalloc") == 2 * 2 * 2  # 2 shapes x 2 tensors x (device, pinned)
        big = rng.standard_normal((10, 3, H, W)).astype(np.float32)  # above the profile max: 4 + 4 + 2
        np.testing.assert_allclose(engine.run(big), _expected(big), rtol=1e-5, atol=1e-6)
        every = engine.run_all(big)  # every output by name, in the same chunks
        assert list(every) == ["logits"]
        np.testing.assert_allclose(every["logits"], _expected(big), rtol=1e-5, atol=1e-6)
        with pytest.raises(EngineError, match="outside the engine's optimisation profile"):
            engine.run(np.zeros((2, 3, H + 1, W), np.float32))
        with pytest.raises(EngineError, match="takes a"):
            engine.run(np.zeros((3, H, W), np.float32))
    assert not fake.cudart.blocks  # every buffer freed on close
    with pytest.raises(EngineError, match="was closed"):
        engine.run(np.zeros((1, 3, H, W), np.float32))
    engine.close()  # idempotent


def test_cuda_graph_is_captured_once_per_shape_and_replayed(fake):
    rng = np.random.default_rng(1)
    with Engine(fake.path, cuda_graph=True) as engine:
        for _ in range(3):
            x = rng.standard_normal((2, 3, H, W)).astype(np.float32)
            np.testing.assert_allclose(engine.run(x), _expected(x), rtol=1e-5, atol=1e-6)
    assert fake.cudart.graph_launches == 3  # the capture's launch, then two replays
    assert fake.contexts[0].runs == 2  # one enqueue before the capture, one recorded


def test_threads_are_serialised_and_each_gets_its_own_answer(fake):
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((1 + i % 4, 3, H, W)).astype(np.float32) for i in range(24)]
    with Engine(fake.path) as engine, ThreadPoolExecutor(max_workers=6) as pool:
        inside = threading.Semaphore(1)
        original = fake.contexts[0].execute_async_v3

        def exclusive(stream):
            assert inside.acquire(blocking=False), "two threads enqueued on one context at once"
            try:
                time.sleep(0.002)  # let another thread in, if the engine would let it
                return original(stream)
            finally:
                inside.release()

        fake.contexts[0].execute_async_v3 = exclusive
        outputs = list(pool.map(engine.run, inputs))
    for x, out in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(out, _expected(x), rtol=1e-5, atol=1e-6)


def test_a_plan_tensorrt_refuses_is_one_paragraph(fake):
    fake.path.write_bytes(b"a plan of another TensorRT")
    with pytest.raises(EngineError, match="could not deserialize") as info:
        Engine(fake.path)
    assert "rebuild it on this machine" in str(info.value) and "(none was found)" in str(info.value)


def _cubin(sm: int) -> bytes:
    """The first 64 bytes of a CUDA 12.8+ cubin for ``sm`` (ELF ABI version 8: SM in e_flags bits 8-15)."""
    import struct

    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[7], header[8] = 2, 0x41, 8
    struct.pack_into("<H", header, 18, 190)
    struct.pack_into("<I", header, 48, 0x6000004 | (sm << 8))
    return bytes(header)


@pytest.mark.parametrize(
    ("kernels", "capability", "ok"),
    [
        (_cubin(87) + _cubin(90), (9, 0), True),
        (_cubin(87), (9, 0), False),  # no sm_90 cubin, no PTX
        (_cubin(87) + b".version 8.4\n.target sm_80\n", (9, 0), True),  # PTX of an older arch: JIT
        (b"", (9, 0), True),  # no kernel image readable: TensorRT says more
    ],
)
def test_a_plugin_library_without_kernels_for_this_gpu_is_refused(fake, monkeypatch, kernels, capability, ok):
    library = fake.path.parent / "libedge_biformer_plugins.so"
    library.write_bytes(b"\x7fELF" + b"\0" * 60 + kernels)
    loaded = []
    monkeypatch.setattr(engine_module, "find_plugin_library", lambda path, explicit=None: library)
    monkeypatch.setattr(engine_module, "_check_library_major", lambda lib, trt: None)
    from edge_biformer.engine import tensorrt as trt_module

    monkeypatch.setattr(trt_module, "load_plugin_library", lambda lib, trt=None: loaded.append(lib))
    attrs = SimpleNamespace(
        cudaDevAttrComputeCapabilityMajor="major", cudaDevAttrComputeCapabilityMinor="minor"
    )
    monkeypatch.setattr(FakeCudart, "cudaDeviceAttr", attrs, raising=False)
    monkeypatch.setattr(
        FakeCudart,
        "cudaDeviceGetAttribute",
        lambda self, attr, device: (0, capability[0] if attr == "major" else capability[1]),
        raising=False,
    )
    if ok:
        Engine(fake.path).close()
        assert loaded == [library]
    else:
        with pytest.raises(EngineError, match=r"no kernels for this GPU \(sm_90\)") as info:
            Engine(fake.path)
        assert "--cuda-architectures 90" in str(info.value) and not loaded


def test_predictor_on_an_engine_feeds_its_input_and_returns_every_output(fake):
    from edge_biformer.runtime import Predictor

    x = np.random.default_rng(3).standard_normal((6, 3, H, W)).astype(np.float32)
    with Predictor(fake.path, top_k=2) as predictor:
        assert (predictor.backend, predictor.input_name, predictor.batch_size) == ("tensorrt", "input", 4)
        assert predictor.preprocessing.img_size == (H, W) and predictor.preprocessing.channels == 3
        assert [(o.name, o.shape, o.kind) for o in predictor.outputs] == [
            ("logits", ("N", CLASSES), "classifier")
        ]
        predictions = predictor.predict_tensors(x)
    expected = _expected(x)
    for p, row in zip(predictions, expected, strict=True):
        np.testing.assert_allclose(p.outputs["logits"], row, rtol=1e-5, atol=1e-6)
        assert [c.index for c in p.top] == list(np.argsort(-row, kind="stable")[:2])
