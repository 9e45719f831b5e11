"""The engine stage: build the TensorRT plan where TensorRT and a GPU are present, else say how.

:func:`run` is what ``edge-biformer build`` runs after the rewrite. Where TensorRT is absent it
builds nothing and returns the equivalent ``trtexec`` line (and the reason), which the pipeline
prints with the ``edge-biformer build --from-onnx`` command that finishes the job on the target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edge_biformer import manifest as manifests
from edge_biformer.engine.builder import EngineResult, build_engine
from edge_biformer.engine.options import EngineOptions, trtexec_command
from edge_biformer.engine.tensorrt import EngineBuildError, missing_reason, tensorrt_available
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.onnx_io import graph_kind
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

    def to_manifest(self) -> dict[str, Any]:
        """The build manifest's ``engine`` section."""
        record: dict[str, Any] = {
            "path": Path(self.path).name if self.built else None,
            "built": self.built,
            "trtexec": self.trtexec,
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
    command = trtexec_command(source, output, options)
    if not tensorrt_available():
        reason = missing_reason()
        log(f"engine: not built here. {reason}.")
        return EngineRecord(str(output), False, command, library, reason=reason)
    if needs_plugin and lib is None:
        raise EngineBuildError(
            f"the engine needs the plugin library ({found_by}); build it or pass --plugin-library"
        )
    with stage("tensorrt engine") as st:
        calib = options.calib
        result = build_engine(
            source, output, options, calib_batches=(lambda: calib.batches()) if calib is not None else None
        )
        st.output = output
        st.details.append(f"TensorRT {result.tensorrt_version}, strongly typed {result.strongly_typed}")
    record = EngineRecord(str(output), True, command, library, result=result)
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
