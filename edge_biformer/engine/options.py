"""Engine build options: the batch profile, the builder settings and the equivalent trtexec line."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.onnx_io import INPUT_NAME
from edge_biformer.stages import PRECISIONS

__all__ = ["INT8_MODES", "BatchProfile", "EngineOptions", "trtexec_command"]

INT8_MODES = ("qdq", "calibrator")


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
    """The engine stage: what to build (``source`` -> ``output``) and the builder settings.

    ``calib`` (a :class:`edge_biformer.calib.CalibrationData`) feeds the implicit INT8 calibrator
    (``int8_mode="calibrator"``, TensorRT < 10.1); ``calib_key`` identifies graph + data + method, and
    the calibrator's cache is reused only for the same key (kept in ``<calib_cache>.json``).
    """

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
    calib_key: str | None = None
    source: str | os.PathLike[str] | None = None
    output: str | os.PathLike[str] | None = None
    calib: Any = None

    @property
    def implicit_int8(self) -> bool:
        """INT8 through TensorRT's calibrator (weakly typed) instead of the graph's Q/DQ."""
        return self.precision == "int8" and self.int8_mode == "calibrator"


def trtexec_command(
    onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], options: EngineOptions
) -> str:
    """The equivalent ``trtexec`` line for the target."""
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    args += options.batch.trtexec_args(options.img_size)
    if options.plugin_library:
        # --plugins works on TensorRT 8.x-10.x (10.x also has --staticPlugins, same effect here).
        args.append(f"--plugins={options.plugin_library}")
    if options.implicit_int8:
        args += ["--int8", "--fp16"]
        if options.calib_cache:
            args.append(f"--calib={options.calib_cache}")
    else:
        args += list(PRECISIONS[options.precision].trtexec)
    if options.workspace_mib:
        args.append(f"--memPoolSize=workspace:{options.workspace_mib}M")
    if options.opt_level is not None:
        args.append(f"--builderOptimizationLevel={options.opt_level}")
    if options.timing_cache:
        args.append(f"--timingCacheFile={options.timing_cache}")
    if options.dla_core is not None:
        args += [f"--useDLACore={options.dla_core}", "--allowGPUFallback"]
    return shlex.join(args)
