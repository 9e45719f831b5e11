"""Every flag of the printed trtexec and polygraphy lines exists in the tool version they are printed for.

trtexec exits on an option it does not know, so each line is checked against the options of its target's
``samples/common/sampleOptions.cpp``; the polygraphy lines against ``polygraphy run --help`` of the pinned
minimum Polygraphy. The option lists are data files extracted once from the real tools (how: the ``how``
entry of each file), regenerated with::

    # tests/engine/data/trtexec_options.json, from a clone of github.com/NVIDIA/TensorRT
    for tag in 8.5.2 v8.6.1 v10.0.1 v10.3.0 v10.9.0 v11.0 v11.1; do
      git show $tag:samples/common/sampleOptions.cpp \\
        | sed '/\\(SafeBuilderOptions\\|TaskInferenceOptions\\)::parse/,$d' \\
        | grep -o '"--[A-Za-z][A-Za-z0-9]*"' | sort -u
    done
    # tests/engine/data/polygraphy_run_options.json
    python -m venv --system-site-packages /tmp/pg && /tmp/pg/bin/pip install --ignore-installed --no-deps \\
      polygraphy==0.53.6 && /tmp/pg/bin/polygraphy run --help   # the '--name's of the usage block
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from edge_biformer.check.polygraphy_io import polygraphy_command
from edge_biformer.check.runners import KINDS, Target
from edge_biformer.engine import BatchProfile, EngineOptions, trtexec_command, trtexec_commands
from edge_biformer.engine.target import TensorRTTarget, parse_version
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.stages import PRECISIONS

DATA = Path(__file__).parent / "data"
TRTEXEC = json.loads((DATA / "trtexec_options.json").read_text())["options"]
POLYGRAPHY = json.loads((DATA / "polygraphy_run_options.json").read_text())
REPO = Path(__file__).resolve().parents[2]


def _flags(command: str) -> set[str]:
    """The option names of a printed line (a trailing ``# comment`` is not part of it)."""
    words = shlex.split(command, comments=True)
    return {w.split("=", 1)[0] for w in words if w.startswith("--")}


def _options(**overrides) -> EngineOptions:
    base = {
        "precision": "fp16",
        "img_size": (224, 224),
        "batch": BatchProfile(1, 8, 32),
        "workspace_mib": 2048,
        "opt_level": 3,
        "timing_cache": "out/timing.cache",
        "dla_core": 0,
        "plugin_library": "/opt/libedge_biformer_plugins.so",
    }
    return EngineOptions(**{**base, **overrides})


def _variants() -> list[EngineOptions]:
    variants = [_options(precision=p) for p in PRECISIONS]
    variants.append(_options(precision="int8", int8_mode="calibrator", calib_cache="out/c.cache"))
    variants.append(_options(workspace_mib=None, opt_level=None, dla_core=None, plugin_library=None))
    return variants


@pytest.mark.parametrize("tag", sorted(TRTEXEC))
def test_trtexec_lines_use_only_options_of_their_tensorrt(tag: str) -> None:
    target = TensorRTTarget(parse_version(tag), "test")
    known = set(TRTEXEC[tag])
    for options in _variants():
        if options.implicit_int8 and not target.implicit_calibrator:
            with pytest.raises(EdgeBiformerError, match=r"needs TensorRT < 10.1"):
                trtexec_command("m.onnx", "m.engine", options, target)
            continue
        command = trtexec_command("m.onnx", "m.engine", options, target)
        unknown = _flags(command) - known
        assert not unknown, f"TensorRT {tag} trtexec has no {sorted(unknown)}: {command}"


def test_trtexec_flags_per_major() -> None:
    options = _options()
    line = {v: trtexec_command("m.onnx", "m.engine", options, TensorRTTarget(v, "t")) for v in TARGETS}
    assert "--plugins=" in line[(8, 5, 2)] and "--builderOptimizationLevel" not in line[(8, 5, 2)]
    assert "--staticPlugins=" in line[(8, 6, 1)] and "--fp16" in line[(8, 6, 1)]
    assert "--stronglyTyped" not in line[(8, 6, 1)] and "--stronglyTyped" in line[(10, 3, 0)]
    assert "--fp16" not in line[(11, 1, 0)] and "--plugins=" not in line[(11, 1, 0)]
    implicit = _options(precision="int8", int8_mode="calibrator", calib_cache="c")
    assert trtexec_command("m.onnx", "m.engine", implicit, TensorRTTarget((8, 6, 1), "t")).endswith(
        "  # TensorRT < 10.1 only"
    )
    # Unknown target: one line per major, equal lines once; the calibrator line only where it exists.
    assert set(trtexec_commands("m.onnx", "m.engine", options, None)) == {"10, 11"}
    assert set(trtexec_commands("m.onnx", "m.engine", implicit, None)) == {"10"}
    eight = TensorRTTarget((8, 6, 1), "t")
    assert set(trtexec_commands("m.onnx", "m.engine", options, eight)) == {"8.6"}


TARGETS = ((8, 5, 2), (8, 6, 1), (10, 3, 0), (11, 1, 0))


def test_polygraphy_pin_is_the_minimum_the_options_were_checked_against() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    pin = re.search(r'"polygraphy>=([\d.]+),', pyproject)
    assert pin and pin.group(1) == POLYGRAPHY["version"]
    import polygraphy

    installed = tuple(int(p) for p in polygraphy.__version__.split(".")[:3])
    assert installed >= tuple(int(p) for p in POLYGRAPHY["version"].split("."))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("tensorrt", [None, "8.5", "8.6", "10.3", "11.1"])
def test_polygraphy_lines_use_only_options_of_the_pinned_polygraphy(kind, precision, tensorrt) -> None:
    shapes = {k: [b, 3, 224, 224] for k, b in (("min", 1), ("opt", 8), ("max", 32))}
    target = Target(
        "t", "out/m.onnx", precision, kind, "/opt/lib.so", profile_shapes=shapes, tensorrt=tensorrt
    )
    command = polygraphy_command(target, "in.json", "ref.json", 0.1, 0.0, "mean")
    unknown = _flags(command) - set(POLYGRAPHY["options"])
    assert not unknown, f"polygraphy {POLYGRAPHY['version']} run has no {sorted(unknown)}: {command}"
    if kind == "cpu_session" and precision != "fp32":
        weak = tensorrt is not None and parse_version(tensorrt) < (10, 0, 0)
        assert ("--strongly-typed" in command) is not weak
        assert ("--fp16" in command) is weak
