"""Running an artifact on the check inputs: onnxruntime, the CPU op session, or a TensorRT engine.

Every check target is one of these kinds; :func:`run_target` gives its outputs per batch, or raises
:class:`Skip` when it cannot run on this machine (no TensorRT, an engine not built yet).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_biformer.onnx_io import INPUT_NAME

__all__ = ["KINDS", "Skip", "Target", "run_target"]

#: The kinds of target: onnxruntime, onnxruntime with the plugin op on the CPU, TensorRT.
KINDS = ("onnxrt", "cpu_session", "tensorrt")


@dataclass
class Target:
    """One artifact to compare with the reference."""

    name: str  # e.g. "onnx (onnxruntime)"
    path: str
    precision: str
    kind: str  # one of KINDS
    plugin_library: str | None = None
    #: The optimisation profile's input shapes ({"min": [N, 3, H, W], "opt": ..., "max": ...}), for
    #: the TensorRT build of an ONNX target (polygraphy's default profile would be batch 1).
    profile_shapes: dict[str, list[int]] | None = None
    #: The target TensorRT version ("8.6.2"; the manifest's ``engine.target.tensorrt``), for the flags of
    #: the printed Polygraphy command; ``None``: TensorRT >= 10.
    tensorrt: str | None = None


class Skip(Exception):
    """A target that cannot run here (no TensorRT, no engine yet)."""


def _onnxruntime(path: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnx
    import onnxruntime as ort

    from edge_biformer.runtime.cpu import session_options

    session = ort.InferenceSession(path, session_options(onnx.load(path)), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def _cpu_session(path: str) -> Callable[[np.ndarray], np.ndarray]:
    from edge_biformer.runtime.cpu import cpu_session

    session = cpu_session(path)
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


def _tensorrt(path: str, plugin_library: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """The engine on one batch, through Polygraphy's ``TrtRunner``.

    The engine is deserialized with a ``trt.Runtime`` of the process-wide logger
    (:func:`edge_biformer.engine.tensorrt.logger`, the one the plugin library and the builder use),
    not with a loader of Polygraphy's, which would make a second logger.
    """
    from edge_biformer.engine.tensorrt import (
        import_tensorrt,
        load_plugin_library,
        logger,
        missing_reason,
        tensorrt_available,
    )

    if not tensorrt_available():
        raise Skip(missing_reason())
    if not Path(path).is_file():
        raise Skip(
            f"the engine {path} has not been built yet: run the engine.build_command of manifest.json "
            "on the target GPU"
        )
    from polygraphy.backend.trt import TrtRunner

    trt = import_tensorrt()
    load_plugin_library(plugin_library, trt)
    runtime = trt.Runtime(logger(trt))
    engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
    if engine is None:
        raise Skip(
            f"TensorRT could not deserialize {path} (see the TensorRT messages above): it was built by "
            "another TensorRT version or without the plugin library; rebuild it on this machine"
        )
    runner = TrtRunner(engine)
    runner.activate()

    def run(batch: np.ndarray, _keep: tuple[object, ...] = (runtime, engine)) -> np.ndarray:
        # _keep: the runtime must outlive its engine, and both the runner.
        outputs = runner.infer({INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        value = next(iter(outputs.values()))
        return np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float32)

    return run


def run_target(target: Target, batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run ``target`` on every batch; raises :class:`Skip` when it cannot run on this machine."""
    if target.kind == "onnxrt":
        run = _onnxruntime(target.path)
    elif target.kind == "cpu_session":
        run = _cpu_session(target.path)
    elif target.kind == "tensorrt":
        run = _tensorrt(target.path, target.plugin_library)
    else:
        raise ValueError(f"unknown target kind {target.kind!r}; expected one of {', '.join(KINDS)}")
    return [np.asarray(run(np.ascontiguousarray(b)), dtype=np.float32) for b in batches]


def path_of(outdir: str | os.PathLike[str], name: str) -> str:
    """An artifact path of a build directory: absolute as given, else relative to ``outdir``."""
    p = Path(name)
    return str(p if p.is_absolute() else Path(outdir) / p)
