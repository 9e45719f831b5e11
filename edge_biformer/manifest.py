"""The manifest: one schema for the side-car record of every artifact, one writer, one reader.

Every artifact (an ONNX graph, an engine, a build directory) gets a JSON side-car, whichever
command made it (``model.onnx`` -> ``model.manifest.json``; ``model.fp16.engine`` ->
``model.fp16.engine.manifest.json``; a build directory -> ``manifest.json``). The common fields:

=================  ===============================================================================
``schema``         version of this format (:data:`SCHEMA_VERSION`)
``artifact``       file name of the artifact
``kind``           ``onnx`` | ``engine`` | ``build``
``stage``          the stage that wrote it: ``export`` | ``quantize`` | ``rewrite`` | ``engine`` | ``build``
``model``          model name (``biformer_tiny``), with ``config``, ``weights``, ``weights_sha256``
``source``         ``{"path", "sha256", "manifest"}`` of the input, its own manifest embedded: the chain
``versions``       tool versions (:func:`tool_versions`)
``argv``           the command line, when a command made it
``options``        the resolved options of the stage
``created``        UTC time
=================  ===============================================================================

and the stage's own facts beside them (export: shapes, opset, verification; rewrite: blocks...).
The model fields travel down the chain, so any artifact names the model and weights it comes
from. The key fields also go into the ONNX graph's ``metadata_props`` (:func:`provenance`), so a
graph carries its provenance without its side-car.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from edge_biformer import __version__
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import atomic_output, sha256_file

__all__ = [
    "MODEL_FIELDS",
    "SCHEMA_VERSION",
    "make_manifest",
    "manifest_path",
    "model_fields",
    "provenance",
    "read_manifest",
    "set_command_line",
    "source_path",
    "source_record",
    "sources",
    "tool_versions",
    "write_manifest",
]

SCHEMA_VERSION = 1
#: The fields that name the model an artifact comes from.
#: ``random_weights``: a registry model created without a checkpoint (its random initialisation).
MODEL_FIELDS = ("model", "config", "weights", "weights_sha256", "random_weights")
#: Distributions whose versions every manifest records.
_DISTRIBUTIONS = {
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "onnx_graphsurgeon": "onnx-graphsurgeon",
    "polygraphy": "polygraphy",
    "modelopt": "nvidia-modelopt",
    "tensorrt": "tensorrt",
    "triton": "triton",
}
_COMMAND_LINE: list[str] | None = None


def set_command_line(argv: Sequence[str] | None) -> None:
    """Record the command line of this process (the CLI does); manifests then carry it as ``argv``."""
    global _COMMAND_LINE
    _COMMAND_LINE = None if argv is None else ["edge-biformer", *argv]


def manifest_path(artifact: str | os.PathLike[str]) -> Path:
    """The side-car of an artifact: ``x.onnx`` -> ``x.manifest.json``, ``x.engine`` ->
    ``x.engine.manifest.json`` (a name that differs from the ONNX graph's of the same stem).

    A directory (a build) has its ``manifest.json`` inside.
    """
    p = Path(artifact)
    if p.is_dir():
        return p / "manifest.json"
    if p.suffix == ".onnx":
        return p.with_name(p.stem + ".manifest.json")
    return p.with_name(p.name + ".manifest.json")


def tool_versions() -> dict[str, str | None]:
    """Versions of Python, edge-biformer and the tools the pipeline uses (``None``: not installed)."""
    versions: dict[str, str | None] = {"edge_biformer": __version__, "python": platform.python_version()}
    for key, dist in _DISTRIBUTIONS.items():
        try:
            versions[key] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            versions[key] = None
    if versions["tensorrt"] is None and "tensorrt" in sys.modules:  # JetPack's TensorRT has no dist-info
        versions["tensorrt"] = getattr(sys.modules["tensorrt"], "__version__", None)
    return versions


def _plain(value: Any) -> Any:
    """JSON-friendly form of options (dataclasses, paths, tuples)."""
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def read_manifest(path: str | os.PathLike[str], *, required: bool = False) -> dict[str, Any] | None:
    """Read a manifest (``None`` if absent and not ``required``); a clear error if it is not valid JSON."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise EdgeBiformerError(f"{path} does not exist")
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        if required:
            raise EdgeBiformerError(
                f"{path} is not a readable manifest ({err}); make the artifact again"
            ) from None
        return None
    return data if isinstance(data, dict) else None


def source_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"path", "resolved", "sha256", "manifest"}`` of an input artifact, with its side-car manifest.

    ``path`` is as the user gave it, ``resolved`` the absolute path (what later lookups open);
    ``manifest`` is ``None`` when the artifact has no side-car.
    """
    return {
        "path": str(path),
        "resolved": str(Path(path).resolve()),
        "sha256": sha256_file(path),
        "manifest": read_manifest(manifest_path(path)),
    }


def source_path(record: Mapping[str, Any]) -> Path | None:
    """The file a source record names, where it still exists (absolute path first)."""
    for key in ("resolved", "path"):
        if record.get(key) and Path(record[key]).is_file():
            return Path(record[key])
    return None


def sources(manifest: Mapping[str, Any] | None) -> Iterator[Mapping[str, Any]]:
    """The source records of a manifest, nearest first (the artifact it was made from, that one's, ...)."""
    record = (manifest or {}).get("source")
    for _ in range(32):  # a chain is a few stages long; a cycle would be a corrupt manifest
        if not isinstance(record, Mapping):
            return
        yield record
        record = (record.get("manifest") or {}).get("source")


def model_fields(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """The model fields of a manifest, found by following its ``source`` chain (``{}`` if none names one)."""
    chain = [record, *(r.get("manifest") for r in sources(record))]
    for m in chain:
        if isinstance(m, Mapping) and m.get("model"):
            return {k: m.get(k) for k in MODEL_FIELDS}
    return {}


def make_manifest(
    artifact: str | os.PathLike[str],
    *,
    kind: str,
    stage: str,
    model: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    options: Any = None,
    **details: Any,
) -> dict[str, Any]:
    """A manifest in the common schema; ``details`` are the stage's own fields.

    ``model`` holds the model fields (``model``, ``config``, ``weights``, ``weights_sha256``);
    without it they are taken from the ``source`` chain.
    """
    fields = dict(model) if model else model_fields((source or {}).get("manifest"))
    manifest: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "artifact": Path(artifact).name,
        "kind": kind,
        "stage": stage,
        **{k: fields.get(k) for k in MODEL_FIELDS},
        "source": dict(source) if source else None,
    }
    manifest.update(details)
    manifest["versions"] = tool_versions()
    manifest["argv"] = list(_COMMAND_LINE) if _COMMAND_LINE is not None else None
    manifest["options"] = _plain(options) if options is not None else None
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return manifest


def write_manifest(path: str | os.PathLike[str], manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest`` as JSON, atomically; return the path."""
    path = Path(path)
    with atomic_output(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(_plain(manifest), indent=2, default=str) + "\n")
    return path


def provenance(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The key fields of a manifest as strings, for the ONNX ``metadata_props`` of the artifact.

    No timestamps: the same inputs give the same graph bytes (calibration caches key on them).
    """
    fields: dict[str, str] = {
        "version": __version__,
        "stage": str(manifest.get("stage")),
    }
    for key in ("model", "weights_sha256"):
        if manifest.get(key):
            fields[key] = str(manifest[key])
    if manifest.get("config") is not None:
        fields["config"] = json.dumps(manifest["config"], sort_keys=True, separators=(",", ":"))
    source = manifest.get("source") or {}
    if source.get("sha256"):
        fields["source_sha256"] = str(source["sha256"])
    for key in ("precision", "graph"):
        if manifest.get(key):
            fields[key] = str(manifest[key])
    return fields


def exported_img_size(manifest: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """The image size the nearest export in a manifest's source chain was made (and verified) at.

    A graph with a dynamic H/W input is built and calibrated at that size unless told another.
    """
    for record in sources(manifest):
        size = ((record.get("manifest") or {}).get("options") or {}).get("img_size")
        if isinstance(size, (list, tuple)) and len(size) == 2:
            return int(size[0]), int(size[1])
    return None
