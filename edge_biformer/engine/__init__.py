"""The TensorRT engine stage (TensorRT is imported lazily, only to build or run an engine).

* :mod:`.options`: the batch profile, the builder settings and the equivalent ``trtexec`` lines;
* :mod:`.target`: which TensorRT the engine is for (``--target-trt``, the installed one, the Jetson's);
* :mod:`.onnx_compat`: the graph the ONNX parser of TensorRT 8.5/8.6 takes (opset 17; 8.5: no LayerNorm);
* :mod:`.builder`: the build itself (strongly typed on TensorRT >= 10, weakly typed on 8.5/8.6);
* :mod:`.calibrator`: the implicit INT8 calibrator (TensorRT < 10.1);
* :mod:`.tensorrt`: importing TensorRT, its version, the process-wide logger, plugin loading;
* :mod:`.stage`: :func:`run`, what ``edge-biformer build`` runs.
"""

from edge_biformer.engine.builder import EngineResult, build_engine
from edge_biformer.engine.calibrator import fixed_batches, make_calibrator
from edge_biformer.engine.options import (
    INT8_MODES,
    BatchProfile,
    EngineOptions,
    trtexec_command,
    trtexec_commands,
)
from edge_biformer.engine.stage import EngineRecord, run
from edge_biformer.engine.target import TensorRTTarget, detect_target
from edge_biformer.engine.tensorrt import (
    EngineBuildError,
    load_plugin_library,
    missing_reason,
    tensorrt_available,
    tensorrt_version,
)

__all__ = [
    "INT8_MODES",
    "BatchProfile",
    "EngineBuildError",
    "EngineOptions",
    "EngineRecord",
    "EngineResult",
    "TensorRTTarget",
    "build_engine",
    "detect_target",
    "fixed_batches",
    "load_plugin_library",
    "make_calibrator",
    "missing_reason",
    "run",
    "tensorrt_available",
    "tensorrt_version",
    "trtexec_command",
    "trtexec_commands",
]
