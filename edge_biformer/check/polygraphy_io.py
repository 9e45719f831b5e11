"""Polygraphy's side of the checks: its JSON formats, its comparator, and the commands that repeat a check.

Inputs and reference outputs are written in Polygraphy's own formats (``inputs.json``: a list of
feed dicts, one per batch; ``reference.json``: ``RunResults`` of a runner named ``pytorch``), so
every comparison can be rerun by hand with ``polygraphy run ... --load-inputs inputs.json
--load-outputs reference.json``. The printed options exist from Polygraphy 0.53.6 (the pinned minimum;
tests/engine/test_commands.py checks them against it); the TensorRT build of a plugin graph is strongly
typed for TensorRT >= 10 and uses precision flags for 8.5/8.6 (``Target.tensorrt``).
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from edge_biformer.check.runners import Target
from edge_biformer.onnx_io import INPUT_NAME, OUTPUT_NAME
from edge_biformer.stages import PRECISIONS
from edge_biformer.utils import atomic_output

__all__ = [
    "REFERENCE_RUNNER",
    "Results",
    "as_results",
    "load_polygraphy_inputs",
    "load_polygraphy_outputs",
    "polygraphy_command",
    "polygraphy_compare",
    "quiet_polygraphy",
    "save_polygraphy_inputs",
    "save_polygraphy_outputs",
]

REFERENCE_RUNNER = "pytorch"


@contextlib.contextmanager
def quiet_polygraphy() -> Iterator[Any]:
    """Polygraphy without its INFO lines ("Saving inference results ...") and import-time notice."""
    with contextlib.redirect_stdout(io.StringIO()):
        from polygraphy.logger import G_LOGGER  # prints a notice about 'colored' on first import
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        yield G_LOGGER
    finally:
        G_LOGGER.module_severity = severity


#: One batch's outputs: ``{output name: array}``, in the graph's output order.
Results = dict[str, np.ndarray]


def as_results(
    values: Sequence[np.ndarray | Mapping[str, np.ndarray]], name: str = OUTPUT_NAME
) -> list[Results]:
    """Per-batch outputs as ``{name: array}`` dicts (a bare array is the single output ``name``)."""
    return [dict(v) if isinstance(v, Mapping) else {name: np.asarray(v)} for v in values]


def save_polygraphy_inputs(
    batches: Sequence[np.ndarray], path: str | os.PathLike[str], input_name: str = INPUT_NAME
) -> None:
    """Write the batches as Polygraphy input JSON (``--load-inputs``): a list of feed dicts."""
    from polygraphy.json import save_json

    with atomic_output(path, suffix=".json") as tmp, quiet_polygraphy():
        save_json([{input_name: np.ascontiguousarray(b)} for b in batches], str(tmp))


def load_polygraphy_inputs(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """The input batches of a Polygraphy input JSON file (of its one input, whatever its name)."""
    from polygraphy.json import load_json

    with quiet_polygraphy():
        feeds = load_json(str(path))
    return [np.asarray(next(iter(f.values()))) for f in feeds]


def save_polygraphy_outputs(
    outputs: Sequence[np.ndarray | Mapping[str, np.ndarray]],
    path: str | os.PathLike[str],
    runner_name: str = REFERENCE_RUNNER,
) -> None:
    """Write per-batch outputs as Polygraphy ``RunResults`` JSON (``--load-outputs``) of ``runner_name``."""
    from polygraphy.comparator import IterationResult, RunResults

    results = RunResults()
    results.append(
        (runner_name, [IterationResult(outputs=o, runner_name=runner_name) for o in as_results(outputs)])
    )
    with atomic_output(path, suffix=".json") as tmp, quiet_polygraphy():
        results.save(str(tmp))


def load_polygraphy_outputs(path: str | os.PathLike[str]) -> list[Results]:
    """The per-batch outputs (``{name: array}``) of the first runner of a ``RunResults`` JSON file."""
    from polygraphy.comparator import RunResults

    with quiet_polygraphy():
        results = RunResults.load(str(path))
    _, iterations = next(iter(results.items()))
    return [{name: np.asarray(value) for name, value in it.items()} for it in iterations]


def polygraphy_compare(
    reference: Sequence[np.ndarray | Mapping[str, np.ndarray]],
    outputs: Sequence[np.ndarray | Mapping[str, np.ndarray]],
    atol: float | Mapping[str, float],
    rtol: float,
    stat: str,
) -> bool:
    """The verdict of Polygraphy's comparator (what ``polygraphy run`` would print) for these outputs.

    ``atol``: one value, or one per output name (each output's tolerance follows its own range).
    """
    from polygraphy.comparator import Comparator, IterationResult, RunResults

    try:
        from polygraphy.comparator import SimpleCompareFunc as _simple
    except ImportError:  # Polygraphy < 0.50
        from polygraphy.comparator import CompareFunc

        _simple = CompareFunc.simple

    results = RunResults()
    results.append(
        (REFERENCE_RUNNER, [IterationResult(r, runner_name=REFERENCE_RUNNER) for r in as_results(reference)])
    )
    results.append(("artifact", [IterationResult(o, runner_name="artifact") for o in as_results(outputs)]))
    with quiet_polygraphy() as logger:
        logger.module_severity = logger.CRITICAL
        verdict = Comparator.compare_accuracy(
            results,
            compare_func=_simple(atol=dict(atol) if isinstance(atol, Mapping) else atol, rtol=rtol,
                                 check_error_stat=stat),
        )  # fmt: skip
    return bool(verdict)


def _strongly_typed(tensorrt: str | None) -> bool:
    """Whether the target TensorRT builds strongly typed networks (unknown: the default, TensorRT >= 10)."""
    if not tensorrt:
        return True
    from edge_biformer.engine.target import parse_version

    return parse_version(tensorrt) >= (10, 0, 0)


def polygraphy_command(
    target: Target,
    inputs_json: str,
    reference_json: str,
    atol: float | Mapping[str, float],
    rtol: float,
    stat: str,
) -> str:
    """The ``polygraphy run`` line that repeats this comparison by hand."""
    precision = PRECISIONS[target.precision]
    args = ["polygraphy", "run", target.path]
    if target.kind == "tensorrt":
        args += ["--model-type", "engine", "--trt"]
        if target.plugin_library:
            args += ["--plugins", target.plugin_library]
    elif target.kind == "cpu_session":
        # The plugin op has no onnxruntime kernel in the polygraphy CLI: the target GPU builds the
        # graph with TensorRT and the plugin library instead.
        args += ["--trt"]
        if target.plugin_library:
            args += ["--plugins", target.plugin_library]
        args += list(precision.polygraphy if _strongly_typed(target.tensorrt) else precision.polygraphy_weak)
        for level in ("min", "opt", "max"):
            if target.profile_shapes and level in target.profile_shapes:
                dims = ",".join(str(d) for d in target.profile_shapes[level])
                args += [f"--trt-{level}-shapes", f"{target.input_name}:[{dims}]"]
    else:
        args += ["--onnxrt"]
        if precision.ort_optimization != "ORT_ENABLE_ALL":
            args += ["--graph-optimization-level", precision.ort_optimization]
    args += ["--load-inputs", inputs_json, "--load-outputs", reference_json]
    if isinstance(atol, Mapping):  # one per output: "name:value" entries
        args += ["--atol", *(f"{name}:{value:g}" for name, value in atol.items())]
    else:
        args += ["--atol", f"{atol:g}"]
    args += ["--rtol", f"{rtol:g}", "--check-error-stat", stat]
    return shlex.join(args)
