"""Write a Triton Inference Server model repository for an engine (GPU) or an ONNX graph (CPU).

::

    REPO/
      README.md                         how to serve it (the commands below)
      NAME/config.pbtxt                 platform "tensorrt_plan" (--engine) or backend "python" (--onnx)
      NAME/labels.txt                   class names (Triton's classification extension: class_count)
      NAME/libedge_biformer_plugins.so  the plugin library of an engine with plugin layers
      NAME/1/model.plan                 the engine                        (--engine)
      NAME/1/model.py, model.onnx       onnxruntime in the Python backend (--onnx)
      NAME_preprocess/...               (--ensemble) encoded image bytes -> the input tensor
      NAME_ensemble/config.pbtxt        (--ensemble) NAME_preprocess -> NAME: clients send JPEG/PNG bytes

Every ``config.pbtxt`` is validated against Triton's ``ModelConfig`` protobuf before anything is
written (:func:`edge_biformer.serve.config.validate_config`), the repository is assembled in a
temporary sibling folder and renamed into place at the end.

The TensorRT backend loads the plugin library given by ``--backend-config=tensorrt,plugins=PATH``
(or ``LD_PRELOAD``) when ``tritonserver`` starts: the README and the command's next steps say so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.serve.config import (
    Batching,
    EnsembleStep,
    InstanceGroup,
    ModelSpec,
    Tensor,
    ensemble_config,
    model_config,
    validate_config,
)

__all__ = ["RepositoryOptions", "RepositoryResult", "serve_commands", "write_repository"]

_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 6: "TYPE_INT32", 7: "TYPE_INT64"}


@dataclass
class RepositoryOptions:
    """What ``serve-repo`` writes. Exactly one of ``engine`` (TensorRT) and ``onnx`` (CPU) is given."""

    output: Path
    name: str = "biformer"
    engine: Path | None = None
    onnx: Path | None = None
    max_batch: int | None = None
    queue_delay_us: int = 500
    instances: int = 1
    gpus: tuple[int, ...] = ()
    ensemble: bool = False
    plugin_library: Path | None = None
    labels: Path | None = None
    threads: int = 0
    force: bool = False


@dataclass
class RepositoryResult:
    """The written repository: its models and the commands that serve it."""

    path: Path
    kind: str  # tensorrt | cpu
    models: list[str]
    entry_model: str
    max_batch: int
    image_size: tuple[int, int]
    input_name: str
    output_name: str
    plugin_library: Path | None = None
    validated: bool = True
    notes: list[str] = field(default_factory=list)


@dataclass
class _Io:
    input_name: str
    input_type: str
    image_size: tuple[int, int]
    output_name: str
    output_dims: tuple[int, ...]
    static_batch: int | None
    plugin_nodes: bool
    unoptimized: bool


def _onnx_io(path: Path) -> _Io:
    """Input/output facts of an ONNX graph (read without its weights)."""
    from edge_biformer.onnx_io import graph_inputs, graph_kind, graph_outputs, load_model
    from edge_biformer.runtime.cpu import runs_unoptimized

    model = load_model(path, check=False, load_external_data=False)
    inputs, outputs = graph_inputs(model), graph_outputs(model)
    if len(inputs) != 1 or len(inputs[0].dims) != 4:
        raise EdgeBiformerError(f"{path}: expected one N x 3 x H x W image input; export the model again")
    dims = inputs[0].dims
    if not all(isinstance(d, int) for d in dims[1:]):
        raise EdgeBiformerError(
            f"{path} has a dynamic H/W input ({dims}); Triton needs fixed dims: export it with --img-size"
        )
    out_dims = tuple(d if isinstance(d, int) else -1 for d in outputs[0].dims[1:])
    return _Io(
        input_name=inputs[0].name,
        input_type=_ONNX_TYPES.get(inputs[0].elem_type, "TYPE_FP32"),
        image_size=(int(dims[2]), int(dims[3])),
        output_name=outputs[0].name,
        output_dims=out_dims,
        static_batch=dims[0] if isinstance(dims[0], int) else None,
        plugin_nodes=graph_kind(model) == "plugin",
        unoptimized=runs_unoptimized(model),
    )


def _engine_facts(engine: Path) -> tuple[_Io, int, int, Mapping[str, Any]]:
    """(I/O, max batch, opt batch, manifest) of an engine: its manifest and the ONNX it was built from."""
    from edge_biformer.manifest import manifest_path, read_manifest, source_path

    manifest = read_manifest(manifest_path(engine)) or {}
    source = source_path(manifest.get("source") or {})
    if source is None or source.suffix != ".onnx":
        raise EdgeBiformerError(
            f"{engine}: the ONNX graph it was built from is not found (its manifest "
            f"{manifest_path(engine)} names none that still exists); serve-repo reads the input and output "
            "of the engine from that graph: keep the build folder together"
        )
    io = _onnx_io(source)
    batch = (manifest.get("options") or {}).get("batch") or {}
    max_batch = int(batch.get("max") or io.static_batch or 1)
    opt = int(batch.get("opt") or max_batch)
    return io, max_batch, opt, manifest


def _labels(io: _Io, manifest: Mapping[str, Any], labels: Path | None) -> tuple[list[str] | None, str | None]:
    config = manifest.get("config") or {}
    if len(io.output_dims) != 1 or io.output_dims[0] < 1 or config.get("num_classes") == 0:
        return None, None  # a backbone: no classes
    from edge_biformer.runtime.labels import resolve_labels

    return resolve_labels(io.output_dims[0], manifest, labels)


def serve_commands(result: RepositoryResult) -> list[str]:
    """The commands that serve the repository and query it (as printed by ``serve-repo``)."""
    repo = result.path.resolve()
    if result.kind == "tensorrt":
        backend = (
            f" --backend-config=tensorrt,plugins={repo / result.models[0] / result.plugin_library.name}"
            if result.plugin_library
            else ""
        )
        serve = [
            f"tritonserver --model-repository={repo}{backend}  # on the GPU machine, Triton with TensorRT"
        ]
    else:
        serve = [
            f"python -m edge_biformer.serve.cpu_server {repo}  # a Triton server on this CPU (port 8000/8001)"
        ]
    client = f"python -m edge_biformer.serve.client --url 127.0.0.1:8000 --model {result.entry_model}"
    if result.entry_model.endswith("_ensemble"):
        from edge_biformer.calib import demo_photos

        client += f" {demo_photos()[0]}"  # any JPEG/PNG file; a built-in demo photograph works as printed
    else:
        client += " --random"
    return [*serve, client, client.replace("--url 127.0.0.1:8000", "--url 127.0.0.1:8001 --grpc")]


def _readme(result: RepositoryResult, commands: list[str]) -> str:
    lines = [
        f"# Triton model repository: {result.entry_model}",
        "",
        "Written by `edge-biformer serve-repo`. Models:",
        "",
    ]
    for m in result.models:
        lines.append(f"- `{m}/`")
    lines += ["", "Serve and query it:", "", "```sh", *[c.split("  #")[0] for c in commands], "```", ""]
    if result.kind == "tensorrt":
        lines += [
            "The engine runs only with the TensorRT version and GPU it was built for: use the Triton release",
            "whose TensorRT built it. The plugin library is loaded by the TensorRT backend at start-up",
            "(`--backend-config=tensorrt,plugins=...`; `LD_PRELOAD=.../libedge_biformer_plugins.so`",
            "works too).",
        ]
    else:
        lines += [
            "CPU variant: Triton's Python backend runs the ONNX graph with onnxruntime. The serving Python",
            "needs numpy < 2 (the Python backend stub of Triton 2.51 fails every request with numpy 2),",
            "onnxruntime and Pillow; `python -m edge_biformer.serve.cpu_server` prepares such an",
            "environment.",
        ]
    if any(m.endswith("_preprocess") for m in result.models):
        lines += [
            "",
            "The preprocessing model applies the recipe the build recorded with edge-biformer's own",
            "code (`edge_biformer.calib.preprocess`): edge-biformer must be importable by Triton's Python",
            "backend (`pip install edge-biformer` in its Python; `python -m edge_biformer.serve.cpu_server`",
            "links it).",
        ]
    return "\n".join(lines) + "\n"


def write_repository(options: RepositoryOptions) -> RepositoryResult:
    """Write the model repository of ``options`` (atomically); returns what was written.

    Raises:
        EdgeBiformerError: bad options or inputs (named), an existing non-empty ``output`` without
            ``force``, or a configuration Triton would refuse.
    """
    o = options
    if (o.engine is None) == (o.onnx is None):
        raise EdgeBiformerError("serve-repo needs exactly one of --engine (TensorRT) and --onnx (CPU)")
    if not o.name.replace("_", "").replace("-", "").isalnum():
        raise EdgeBiformerError(f"--name {o.name!r}: use letters, digits, '_' and '-' only")
    if o.instances < 1:
        raise EdgeBiformerError(f"--instances must be at least 1, got {o.instances}")
    out = Path(o.output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not o.force:
        raise EdgeBiformerError(
            f"--output {out} exists and is not empty; choose a new folder or pass --force to replace it"
        )
    from edge_biformer.manifest import manifest_path, read_manifest
    from edge_biformer.runtime.predictor import Preprocessing, artifact_manifests
    from edge_biformer.utils import require_writable_dir

    require_writable_dir(out.parent if out.parent != Path("") else Path("."))
    notes: list[str] = []
    plugin: Path | None = None
    if o.engine is not None:
        engine = Path(o.engine)
        if not engine.is_file():
            raise EdgeBiformerError(f"--engine {engine} does not exist; build it with `edge-biformer build`")
        io, max_batch, opt, manifest = _engine_facts(engine)
        if o.max_batch is not None and o.max_batch > max_batch:
            raise EdgeBiformerError(
                f"--max-batch {o.max_batch} exceeds the engine's profile max {max_batch}; rebuild with "
                "--batch"
            )
        max_batch = o.max_batch or max_batch
        preferred = tuple(sorted({min(opt, max_batch), max_batch}))
        kind, artifact = "tensorrt", engine
        if io.plugin_nodes or (manifest.get("plugin_library") or {}).get("needed"):
            from edge_biformer.runtime.engine import find_plugin_library

            plugin = find_plugin_library(engine, o.plugin_library)
            if plugin is None:
                notes.append(
                    "the engine has plugin layers but no plugin library was found: copy "
                    f"libedge_biformer_plugins.so into {out / o.name}/ (or pass --plugin-library)"
                )
    else:
        onnx_path = Path(o.onnx)  # type: ignore[arg-type]
        io = _onnx_io(onnx_path)
        manifest = read_manifest(manifest_path(onnx_path)) or {}
        max_batch = o.max_batch or io.static_batch or 8
        if io.static_batch and max_batch != io.static_batch:
            notes.append(f"the graph has a static batch of {io.static_batch}: batches are padded to it")
        preferred = (max_batch,)
        kind, artifact = "cpu", onnx_path
    own, build = artifact_manifests(artifact)
    recipe = Preprocessing.from_manifests(own or manifest, build, io.image_size, artifact=artifact)
    names, labels_source = _labels(io, manifest, o.labels)
    if labels_source:
        notes.append(f"labels: {labels_source}")

    # -- the configurations -----------------------------------------------------------------------
    h, w = io.image_size
    model_input = Tensor(io.input_name, io.input_type, (3, h, w))
    model_output = Tensor(io.output_name, "TYPE_FP32", io.output_dims, "labels.txt" if names else None)
    batching = Batching(max_batch, preferred, o.queue_delay_us)
    if kind == "tensorrt":
        spec = ModelSpec(
            o.name, [model_input], [model_output], batching, platform="tensorrt_plan",
            instances=InstanceGroup(o.instances, "KIND_GPU", tuple(o.gpus)),
            default_model_filename="model.plan",
        )  # fmt: skip
    else:
        params = {
            "onnx_file": "model.onnx",
            "intra_op_threads": str(o.threads),
            "graph_optimization": "disable" if io.unoptimized else "default",
            "plugin_nodes": "true" if io.plugin_nodes else "false",
        }
        if io.static_batch:
            params["static_batch"] = str(io.static_batch)
        spec = ModelSpec(
            o.name, [model_input], [model_output], batching, backend="python",
            instances=InstanceGroup(o.instances, "KIND_CPU"), parameters=params,
        )  # fmt: skip
    configs: dict[str, str] = {o.name: model_config(spec)}
    entry = o.name
    if o.ensemble:
        pre, ens = f"{o.name}_preprocess", f"{o.name}_ensemble"
        image = Tensor("image", "TYPE_STRING", (1,))
        configs[pre] = model_config(
            ModelSpec(
                pre, [image], [Tensor(io.input_name, "TYPE_FP32", (3, h, w))],
                Batching(max_batch, (), o.queue_delay_us), backend="python",
                instances=InstanceGroup(max(1, o.instances), "KIND_CPU"),
                parameters={"preprocess": json.dumps(recipe.to_dict())},
            )
        )  # fmt: skip
        configs[ens] = ensemble_config(
            ens, [image], [model_output], max_batch,
            [
                EnsembleStep(pre, {"image": "image"}, {io.input_name: "preprocessed"}),
                EnsembleStep(o.name, {io.input_name: "preprocessed"}, {io.output_name: io.output_name}),
            ],
        )  # fmt: skip
        entry = ens
    validated = True
    try:
        parsed: dict[str, Any] = {}
        for name in sorted(configs, key=lambda n: n.endswith("_ensemble")):  # the ensemble last
            parsed[name] = validate_config(configs[name], f"{name}/config.pbtxt", parsed)
    except EdgeBiformerError as err:
        if "needs Triton's ModelConfig protobuf" not in str(err):
            raise
        validated = False
        notes.append(f"config.pbtxt not validated: {err}")

    # -- the files, in a temporary sibling, renamed into place ------------------------------------
    result = RepositoryResult(
        path=out, kind=kind, models=list(configs), entry_model=entry, max_batch=max_batch,
        image_size=io.image_size, input_name=io.input_name, output_name=io.output_name,
        plugin_library=plugin, validated=validated, notes=notes,
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        from edge_biformer.serve.triton_python import FOLDER

        for name, text in configs.items():
            (tmp / name / "1").mkdir(parents=True)
            (tmp / name / "config.pbtxt").write_text(text)
        version = tmp / o.name / "1"
        if kind == "tensorrt":
            shutil.copyfile(artifact, version / "model.plan")
            if plugin is not None:
                shutil.copyfile(plugin, tmp / o.name / plugin.name)
        else:
            shutil.copyfile(artifact, version / "model.onnx")
            _copy_external_data(artifact, version)
            shutil.copyfile(FOLDER / "classifier.py", version / "model.py")
        if names:  # Triton reads label_filename from each model's own folder
            for model in (o.name, *([entry] if o.ensemble else [])):
                (tmp / model / "labels.txt").write_text("\n".join(names) + "\n")
        if o.ensemble:
            shutil.copyfile(FOLDER / "preprocess.py", tmp / f"{o.name}_preprocess" / "1" / "model.py")
        (tmp / "README.md").write_text(_readme(result, serve_commands(result)))
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _copy_external_data(onnx_path: Path, folder: Path) -> None:
    """Copy the external-data files an ONNX graph refers to (relative to it) beside its copy."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    locations = {
        entry.value
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
    for location in locations:
        src = onnx_path.parent / location
        if not src.is_file():
            raise EdgeBiformerError(f"{onnx_path} refers to external data {location}, which is missing")
        (folder / location).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / location)
