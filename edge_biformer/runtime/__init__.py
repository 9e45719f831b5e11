"""Running models: ``cpu_session`` (onnxruntime with the plugin ops on the CPU), :class:`Engine` (a
TensorRT plan from Python), :class:`Predictor` (images in, every output by name and a classifier's
top-k out, on either)."""

from typing import TYPE_CHECKING, Any

from edge_biformer.runtime.cpu import cpu_session, prepare_for_cpu

__all__ = [
    "Engine",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "cpu_session",
    "prepare_for_cpu",
    "read_preprocessing",
]

if TYPE_CHECKING:
    from edge_biformer.runtime.engine import Engine
    from edge_biformer.runtime.predictor import Prediction, Predictor
    from edge_biformer.runtime.preprocessing import Preprocessing, read_preprocessing


def __getattr__(name: str) -> Any:
    # Lazy: the engine and predictor modules are imported when used.
    if name == "Engine":
        from edge_biformer.runtime.engine import Engine

        return Engine
    if name in ("Prediction", "Predictor"):
        from edge_biformer.runtime import predictor

        return getattr(predictor, name)
    if name in ("Preprocessing", "read_preprocessing"):
        from edge_biformer.runtime import preprocessing

        return getattr(preprocessing, name)
    raise AttributeError(f"module 'edge_biformer.runtime' has no attribute {name!r}")
