"""Engine build options: the batch profile, the builder settings and the equivalent trtexec line.

trtexec exits on an option it does not know, and its options differ by TensorRT version (8.5 has only
``--plugins``, 8.6 adds ``--staticPlugins``/``--dynamicPlugins`` and ``--builderOptimizationLevel``, 10
adds ``--stronglyTyped``, 11 drops ``--fp16``/``--int8``/``--calib``), so the line is made for one target
TensorRT (:class:`~edge_biformer.engine.target.TensorRTTarget`); tests/engine/test_commands.py checks every
flag against each version's ``samples/common/sampleOptions.cpp``.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any

from edge_biformer.engine.target import TensorRTTarget
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.onnx_io import INPUT_NAME
from edge_biformer.stages import PRECISIONS

__all__ = [
    "DEFAULT_TARGETS",
    "INT8_MODES",
    "BatchProfile",
    "EngineOptions",
    "trtexec_command",
    "trtexec_commands",
]

INT8_MODES = ("qdq", "calibrator")
#: What the commands are printed for when the target TensorRT is unknown: the newest majors (8.5/8.6 need
#: their own graph, which the engine stage writes for ``--target-trt 8.5|8.6``).
DEFAULT_TARGETS = (TensorRTTarget((10, 0, 0), "TensorRT 10.x"), TensorRTTarget((11, 0, 0), "TensorRT 11.x"))
#: The label of the implicit-calibrator line.
CALIBRATOR_ONLY = "TensorRT < 10.1 only"


@dataclass
class BatchProfile:
    """One optimisation profile over the batch dimension of the graph's image input.

    ``input_name`` and ``channels`` are the input's (:func:`edge_biformer.onnx_io.graph_interface`);
    ``static``: the graph fixes every input dim (its batch too), so TensorRT takes no profile and
    trtexec no ``--minShapes`` (it refuses shapes for a static input).
    """

    min: int
    opt: int
    max: int
    input_name: str = INPUT_NAME
    channels: int = 3
    static: bool = False

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

    @classmethod
    def from_manifest(cls, record: dict[str, Any]) -> BatchProfile:
        """The profile a manifest's ``profile`` record describes (older records: ``input``, 3 channels)."""
        fields = ("min", "opt", "max", "input_name", "channels", "static")
        return cls(**{k: record[k] for k in fields if k in record})

    def shapes(self, img_size: tuple[int, int]) -> dict[str, list[int]]:
        """Input shapes of the profile."""
        h, w = img_size
        return {k: [getattr(self, k), self.channels, h, w] for k in ("min", "opt", "max")}

    def trtexec_args(self, img_size: tuple[int, int]) -> list[str]:
        """``--minShapes/--optShapes/--maxShapes`` for trtexec (none for a static graph)."""
        if self.static:
            return []
        s = self.shapes(img_size)
        name = self.input_name
        return [f"--{k}Shapes={name}:{'x'.join(map(str, s[k]))}" for k in ("min", "opt", "max")]


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
    #: ``--target-trt``: the TensorRT the engine is for (default: the installed one, else the Jetson's).
    target_tensorrt: str | None = None
    source: str | os.PathLike[str] | None = None
    output: str | os.PathLike[str] | None = None
    calib: Any = None

    @property
    def implicit_int8(self) -> bool:
        """INT8 through TensorRT's calibrator (weakly typed) instead of the graph's Q/DQ."""
        return self.precision == "int8" and self.int8_mode == "calibrator"


def trtexec_command(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: EngineOptions,
    target: TensorRTTarget | None = None,
    *,
    shapes: bool = True,
) -> str:
    """The equivalent ``trtexec`` line for ``target`` (default: TensorRT 10); ``shapes=False``: no profile."""
    target = target or DEFAULT_TARGETS[0]
    version = target.version
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if shapes:
        args += options.batch.trtexec_args(options.img_size)
    if options.plugin_library:
        # --plugins is deprecated from 8.6, which added --staticPlugins (the same dlopen at start-up).
        flag = "--staticPlugins" if version >= (8, 6, 0) else "--plugins"
        args.append(f"{flag}={options.plugin_library}")
    if options.implicit_int8:
        if not target.implicit_calibrator:
            raise EdgeBiformerError(
                f"--int8-mode calibrator needs TensorRT < 10.1, the target is {target.label()}; use "
                "--int8-mode qdq"
            )
        args += ["--int8", "--fp16"]
        if options.calib_cache:
            args.append(f"--calib={options.calib_cache}")
    elif target.strongly_typed:
        args += list(PRECISIONS[options.precision].trtexec)
    else:
        args += list(PRECISIONS[options.precision].trtexec_weak)
    if options.workspace_mib:
        args.append(f"--memPoolSize=workspace:{options.workspace_mib}")  # MiB in every version
    if options.opt_level is not None and version >= (8, 6, 0):
        args.append(f"--builderOptimizationLevel={options.opt_level}")
    if options.timing_cache:
        args.append(f"--timingCacheFile={options.timing_cache}")
    if options.dla_core is not None:
        args += [f"--useDLACore={options.dla_core}", "--allowGPUFallback"]
    line = shlex.join(args)
    return f"{line}  # {CALIBRATOR_ONLY}" if options.implicit_int8 else line


def trtexec_commands(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: EngineOptions,
    target: TensorRTTarget | None,
    *,
    shapes: bool = True,
) -> dict[str, str]:
    """The trtexec line per TensorRT family (``"8.6"``, ``"10, 11"``): the target's, or (unknown target)
    those of :data:`DEFAULT_TARGETS`.

    A family that cannot build this engine (the implicit calibrator on TensorRT >= 10.1) is left out.
    """
    by_line: dict[str, list[str]] = {}
    for t in (target,) if target is not None else DEFAULT_TARGETS:
        if options.implicit_int8 and not t.implicit_calibrator:
            continue
        line = trtexec_command(onnx_path, engine_path, options, t, shapes=shapes)
        by_line.setdefault(line, []).append(t.family)
    # Families whose lines are the same share one entry ("10, 11").
    return {", ".join(families): line for line, families in by_line.items()}
