"""The engine stage: build the TensorRT plan where TensorRT and a GPU are present, else say how.

:func:`run` is what ``edge-biformer build`` runs after the rewrite. The target TensorRT
(:func:`~edge_biformer.engine.target.detect_target`: ``--target-trt``, the installed TensorRT, or the
Jetson's JetPack) decides the plugin interface, the build mode (strongly typed from TensorRT 10,
weakly typed with precision flags on 8.5/8.6) and the flags of the printed ``trtexec`` lines; for
TensorRT 8.5/8.6 the stage first writes the graph that version's ONNX parser takes
(``<graph>.trt8.5.onnx`` / ``.trt8.6.onnx``, :mod:`.onnx_compat`) and builds or prints from it. Where
TensorRT is absent, or is another version than the target, it builds nothing and returns the
``trtexec`` lines (one per TensorRT major when the target is unknown) and the reason, which the
pipeline prints with the ``edge-biformer build --from-onnx`` command that finishes the job on the target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_biformer import manifest as manifests
from edge_biformer.engine.builder import EngineResult, build_engine
from edge_biformer.engine.onnx_compat import tensorrt8_graph
from edge_biformer.engine.options import EngineOptions, trtexec_commands
from edge_biformer.engine.target import TensorRTTarget, detect_target
from edge_biformer.engine.tensorrt import (
    EngineBuildError,
    missing_reason,
    tensorrt_available,
    tensorrt_version,
)
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.onnx_io import graph_kind, load_model, save_model
from edge_biformer.utils import log, sha256_file, stage

__all__ = ["PLUGIN_LIBRARY_NAME", "EngineRecord", "resolve_plugin_library", "run"]

PLUGIN_LIBRARY_NAME = "libedge_biformer_plugins.so"


@dataclass
class EngineRecord:
    """What the engine stage did: the plan it built, or why not and how to build it."""

    path: str
    built: bool
    trtexec: str
    plugin_library: dict[str, Any]
    reason: str | None = None
    result: EngineResult | None = None
    #: The target TensorRT (``None``: unknown), and the trtexec line per TensorRT family it was made for.
    target: TensorRTTarget | None = None
    commands: dict[str, str] = field(default_factory=dict)
    #: The graph TensorRT parses (the source, or the one written for TensorRT 8's parser) and what changed.
    onnx: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_manifest(self) -> dict[str, Any]:
        """The build manifest's ``engine`` section."""
        record: dict[str, Any] = {
            "path": Path(self.path).name if self.built else None,
            "built": self.built,
            "trtexec": self.trtexec,
            "trtexec_by_tensorrt": self.commands,
            "target": self.target.to_dict() if self.target else None,
            "onnx": self.onnx,
            "onnx_notes": self.notes,
        }
        if self.result is not None:
            record.update({k: v for k, v in asdict(self.result).items() if k != "path"})
        if self.reason:
            record["reason"] = self.reason
        return record


def resolve_plugin_library(explicit: str | None) -> tuple[str | None, str]:
    """(path or ``None``, how it was found) of the plugin library."""
    if explicit:
        if not Path(explicit).is_file():
            raise EdgeBiformerError(f"--plugin-library {explicit} does not exist")
        return str(Path(explicit).resolve()), "--plugin-library"
    from edge_biformer import plugins

    try:
        return str(plugins.library_path()), "edge_biformer.plugins.library_path()"
    except EdgeBiformerError as err:
        return None, str(err)


def _graph_for_tensorrt8(source: Path, output: Path, target: TensorRTTarget) -> tuple[Path, list[str]]:
    """Write the graph TensorRT 8.5/8.6's parser takes next to the engine; returns it and what changed."""
    model, notes = tensorrt8_graph(load_model(source, check=False), target.version)
    path = output.with_name(f"{source.stem}.trt{target.family}.onnx")
    save_model(model, path)
    log(f"engine: {path.name} for {target.label()}: " + ("; ".join(notes) or "unchanged"))
    return path, notes


def _not_here(target: TensorRTTarget | None) -> str | None:
    """Why the engine cannot be built on this machine (``None``: it can)."""
    if not tensorrt_available():
        return missing_reason()
    installed = tensorrt_version() or (0, 0, 0)
    if target is not None and installed[:2] != target.version[:2]:
        return (
            f"the target is {target.label()} but TensorRT {'.'.join(map(str, installed))} is installed here; "
            "an engine runs only with the TensorRT version that built it, so build it on the target"
        )
    return None


def run(options: EngineOptions) -> EngineRecord:
    """Build ``options.source`` into ``options.output`` (or, without TensorRT, plan the build).

    The plugin library is needed when the graph holds plugin nodes; it is taken from
    ``options.plugin_library`` or found by :func:`edge_biformer.plugins.library_path`.
    """
    if options.source is None or options.output is None:
        raise ValueError("the engine stage needs options.source and options.output")
    source, output = Path(options.source), Path(options.output)
    needs_plugin = graph_kind(source) == "plugin"
    lib, found_by = resolve_plugin_library(options.plugin_library)
    library = {
        "path": lib,
        "sha256": sha256_file(lib) if lib else None,
        "found_by": found_by,
        "needed": needs_plugin,
    }
    options = replace(
        options, plugin_library=(lib or f"/path/to/{PLUGIN_LIBRARY_NAME}") if needs_plugin else None
    )
    if options.implicit_int8:
        options.calib_cache = options.calib_cache or str(output.with_name(f"{output.stem}.trt_calib.cache"))
        if options.calib is not None:
            options.calib_key = (
                f"{sha256_file(source)}:{options.calib.sha256}:{options.calib_method}:{options.batch.opt}"
            )
    target = detect_target(options.target_tensorrt)
    parsed, notes = source, []
    if target is not None and not target.strongly_typed:
        parsed, notes = _graph_for_tensorrt8(source, output, target)
    commands = trtexec_commands(parsed, output, options, target)
    plan = {"target": target, "commands": commands, "onnx": str(parsed), "notes": notes}
    command = next(iter(commands.values()), "")
    reason = _not_here(target)
    if reason:
        log(f"engine: not built here. {reason}.")
        return EngineRecord(str(output), False, command, library, reason=reason, **plan)
    if needs_plugin and lib is None:
        raise EngineBuildError(
            f"the engine needs the plugin library ({found_by}); build it or pass --plugin-library"
        )
    with stage("tensorrt engine") as st:
        calib = options.calib
        result = build_engine(
            parsed, output, options, calib_batches=(lambda: calib.batches()) if calib is not None else None
        )
        st.output = output
        st.details.append(f"TensorRT {result.tensorrt_version}, strongly typed {result.strongly_typed}")
    record = EngineRecord(str(output), True, command, library, result=result, **plan)
    manifests.write_manifest(
        manifests.manifest_path(output),
        manifests.make_manifest(
            output,
            kind="engine",
            stage="engine",
            source=manifests.source_record(source),
            options=options,
            precision=options.precision,
            engine=record.to_manifest(),
            plugin_library=library,
        ),
    )
    return record
