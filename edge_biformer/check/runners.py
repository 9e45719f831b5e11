"""Running an artifact on the check inputs: onnxruntime, the CPU op session, or a TensorRT engine.

Every check target is one of these kinds; :func:`run_target` gives its outputs per batch, or raises
:class:`Skip` when it cannot run on this machine (no TensorRT, an engine not built yet).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.onnx_io import INPUT_NAME

__all__ = ["KINDS", "Skip", "Target", "float32_outputs", "run_target", "session_runner"]

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
    #: The graph's image input (:func:`edge_biformer.onnx_io.graph_interface`).
    input_name: str = INPUT_NAME


class Skip(Exception):
    """A target that cannot run here (no TensorRT, no engine yet)."""


#: One batch's outputs by name, in the graph's order.
Run = Callable[[np.ndarray], dict[str, np.ndarray]]


def session_runner(session: Any, input_name: str) -> Run:
    """Every output of an onnxruntime session on one batch, by name."""
    names = [o.name for o in session.get_outputs()]
    return lambda x: dict(zip(names, session.run(names, {input_name: x}), strict=True))


def _onnxruntime(path: str, input_name: str) -> Run:
    import onnx
    import onnxruntime as ort

    from edge_biformer.runtime.cpu import session_options

    session = ort.InferenceSession(path, session_options(onnx.load(path)), providers=["CPUExecutionProvider"])
    return session_runner(session, input_name)


def _cpu_session(path: str, input_name: str) -> Run:
    from edge_biformer.runtime.cpu import cpu_session

    return session_runner(cpu_session(path), input_name)


def _tensorrt(path: str, plugin_library: str | None, input_name: str) -> Run:
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

    def run(batch: np.ndarray, _keep: tuple[object, ...] = (runtime, engine)) -> dict[str, np.ndarray]:
        # _keep: the runtime must outlive its engine, and both the runner.
        outputs = runner.infer({input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in outputs.items()}

    return run


def run_target(target: Target, batches: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Run ``target`` on every batch: its outputs per batch (``{name: array}``, float outputs as float32).

    Raises :class:`Skip` when it cannot run on this machine.
    """
    if target.kind == "onnxrt":
        run = _onnxruntime(target.path, target.input_name)
    elif target.kind == "cpu_session":
        run = _cpu_session(target.path, target.input_name)
    elif target.kind == "tensorrt":
        run = _tensorrt(target.path, target.plugin_library, target.input_name)
    else:
        raise ValueError(f"unknown target kind {target.kind!r}; expected one of {', '.join(KINDS)}")
    return [float32_outputs(run(np.ascontiguousarray(b))) for b in batches]


def float32_outputs(outputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Float outputs as float32 (an FP16 artifact is compared in the reference's type), others as they are."""
    out = {}
    for name, value in outputs.items():
        a = np.asarray(value)
        out[name] = np.ascontiguousarray(a, np.float32 if np.issubdtype(a.dtype, np.floating) else None)
    return out


def path_of(outdir: str | os.PathLike[str], name: str) -> str:
    """An artifact path of a build directory: absolute as given, else relative to ``outdir``."""
    p = Path(name)
    return str(p if p.is_absolute() else Path(outdir) / p)
