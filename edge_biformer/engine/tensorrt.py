"""TensorRT itself, imported lazily: availability, version, the process-wide logger, plugin loading.

Nothing here imports TensorRT at module import; every caller that needs it goes through
:func:`import_tensorrt`, so machines without TensorRT (CI, a CPU laptop) run every other stage.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from edge_biformer.errors import EdgeBiformerError

__all__ = [
    "EngineBuildError",
    "import_tensorrt",
    "load_plugin_library",
    "logger",
    "missing_reason",
    "tensorrt_available",
    "tensorrt_version",
]

_LOGGER_LOCK = threading.Lock()
_LOGGER: Any = None


class EngineBuildError(EdgeBiformerError):
    """A TensorRT build that failed (parser errors, unsupported option, builder failure)."""


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (raises ``ImportError`` where it is not installed)."""
    import tensorrt as trt

    return trt


def tensorrt_available() -> bool:
    """True when the TensorRT Python package imports (a GPU is still needed to build)."""
    try:
        import_tensorrt()
    except Exception:
        return False
    return True


def missing_reason() -> str:
    """Why TensorRT cannot be used here (for logs and skipped checks); empty when it can."""
    try:
        import_tensorrt()
    except Exception as err:
        return (
            f"TensorRT is not installed here ({type(err).__name__}: {err}); the engine must be built on "
            "the target GPU (pip install tensorrt on x86-64, or JetPack's TensorRT on Jetson)"
        )
    return ""


def tensorrt_version() -> tuple[int, int, int] | None:
    """TensorRT's version as a tuple, or ``None`` when it is absent."""
    try:
        trt = import_tensorrt()
    except Exception:
        return None
    parts = [int(p) for p in trt.__version__.split(".")[:3] if p.isdigit()]
    return tuple([*parts, 0, 0, 0][:3])  # type: ignore[return-value]


def logger(trt: Any | None = None) -> Any:
    """The one ``trt.Logger`` of the process, for plugins, builder, parser and runtime alike.

    libnvinfer_plugin keeps the raw pointer it is given, so the logger must outlive every use:
    it is created once and never released.
    """
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None:
            trt = trt or import_tensorrt()
            _LOGGER = trt.Logger(trt.Logger.WARNING)
        return _LOGGER


def load_plugin_library(path: str | os.PathLike[str] | None, trt: Any | None = None) -> None:
    """Load the plugin library into TensorRT's plugin registry (needed to parse and to run)."""
    if path is None:
        return
    if not Path(path).is_file():
        raise EngineBuildError(
            f"plugin library {path} does not exist: build it (plugins/, CMake) or pass --plugin-library"
        )
    trt = trt or import_tensorrt()
    # libnvinfer_plugin keeps this pointer (plugin/api/inferPlugin.cpp): the process-wide logger, never a
    # temporary one.
    trt.init_libnvinfer_plugins(logger(trt), "")
    registry = trt.get_plugin_registry()
    if hasattr(registry, "load_library"):  # TensorRT >= 8.6: IPluginRegistry::loadLibrary
        registry.load_library(str(path))
    else:  # TensorRT 8.5: the library registers its creator while it is loaded
        import ctypes

        ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
