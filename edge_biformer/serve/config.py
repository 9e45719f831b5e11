"""``config.pbtxt`` of the Triton models we write, and their validation against Triton's own schema.

The text is written here (no dependency); :func:`validate_config` parses it with Triton's ``ModelConfig``
protobuf (``tritonclient.grpc.model_config_pb2``, protobuf text format) and checks the rules Triton
applies when it loads a model (batching, dims, instance groups, ensemble wiring), so a file that would
not load is refused before it is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_biformer.errors import EdgeBiformerError

__all__ = [
    "ConfigError",
    "Tensor",
    "ensemble_config",
    "model_config",
    "validate_config",
]


class ConfigError(EdgeBiformerError):
    """A ``config.pbtxt`` Triton would refuse."""


@dataclass(frozen=True)
class Tensor:
    """One input or output of a Triton model (dims without the batch dimension)."""

    name: str
    data_type: str  # TYPE_FP32, TYPE_STRING, ...
    dims: tuple[int, ...]
    label_filename: str | None = None


@dataclass(frozen=True)
class InstanceGroup:
    """``instance_group``: ``count`` copies of the model on ``kind`` (KIND_GPU with ``gpus``, or KIND_CPU)."""

    count: int = 1
    kind: str = "KIND_GPU"
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class Batching:
    """Triton's dynamic batcher: requests are merged up to ``max_batch_size``."""

    max_batch_size: int
    preferred: tuple[int, ...] = ()
    max_queue_delay_us: int = 500
    dynamic: bool = True


@dataclass
class ModelSpec:
    """What a model's ``config.pbtxt`` says."""

    name: str
    inputs: Sequence[Tensor]
    outputs: Sequence[Tensor]
    batching: Batching
    platform: str | None = None  # tensorrt_plan | ensemble
    backend: str | None = None  # python
    instances: InstanceGroup | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    default_model_filename: str | None = None


def _tensor(kind: str, t: Tensor) -> list[str]:
    lines = [
        f"{kind} [",
        "  {",
        f'    name: "{t.name}"',
        f"    data_type: {t.data_type}",
        f"    dims: [ {', '.join(str(d) for d in t.dims)} ]",
    ]
    if t.label_filename:
        lines.append(f'    label_filename: "{t.label_filename}"')
    return [*lines, "  }", "]"]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def model_config(spec: ModelSpec) -> str:
    """The ``config.pbtxt`` text of ``spec``."""
    lines = [
        "# Written by edge-biformer serve-repo; Triton model configuration (protobuf text format).",
        f'name: "{spec.name}"',
    ]
    if spec.platform:
        lines.append(f'platform: "{spec.platform}"')
    if spec.backend:
        lines.append(f'backend: "{spec.backend}"')
    if spec.default_model_filename:
        lines.append(f'default_model_filename: "{spec.default_model_filename}"')
    lines.append(f"max_batch_size: {spec.batching.max_batch_size}")
    for t in spec.inputs:
        lines += _tensor("input", t)
    for t in spec.outputs:
        lines += _tensor("output", t)
    b = spec.batching
    if b.dynamic and b.max_batch_size > 0:
        lines.append("dynamic_batching {")
        if b.preferred:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(p) for p in b.preferred)} ]")
        lines += [f"  max_queue_delay_microseconds: {b.max_queue_delay_us}", "}"]
    if spec.instances is not None:
        g = spec.instances
        lines += ["instance_group [", "  {", f"    count: {g.count}", f"    kind: {g.kind}"]
        if g.gpus:
            lines.append(f"    gpus: [ {', '.join(str(x) for x in g.gpus)} ]")
        lines += ["  }", "]"]
    for key, value in spec.parameters.items():
        lines += [
            "parameters {",
            f"  key: {_quote(key)}",
            f"  value: {{ string_value: {_quote(value)} }}",
            "}",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class EnsembleStep:
    """One ensemble step: ``model`` with ``input_map`` {model input: ensemble tensor} and ``output_map``."""

    model: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]


def ensemble_config(
    name: str,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    max_batch_size: int,
    steps: Sequence[EnsembleStep],
) -> str:
    """The ``config.pbtxt`` of an ensemble (``platform: "ensemble"``) running ``steps`` in order."""
    text = model_config(
        ModelSpec(name, inputs, outputs, Batching(max_batch_size, dynamic=False), platform="ensemble")
    )
    lines = ["ensemble_scheduling {", "  step ["]
    for i, step in enumerate(steps):
        lines += ["    {", f'      model_name: "{step.model}"', "      model_version: -1"]
        for key, value in step.input_map.items():
            lines.append(f'      input_map {{ key: "{key}" value: "{value}" }}')
        for key, value in step.output_map.items():
            lines.append(f'      output_map {{ key: "{key}" value: "{value}" }}')
        lines.append("    }" + ("," if i < len(steps) - 1 else ""))
    lines += ["  ]", "}"]
    return text + "\n".join(lines) + "\n"


def _model_config_pb2() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as err:
        raise ConfigError(
            "validating config.pbtxt needs Triton's ModelConfig protobuf from tritonclient, which cannot be "
            f"imported here ({err}): pip install 'tritonclient[grpc,http]' (the [serve] extra)"
        ) from None
    return model_config_pb2


def validate_config(text: str, where: str = "config.pbtxt", models: Mapping[str, Any] | None = None) -> Any:
    """Parse ``text`` as Triton's ``ModelConfig`` and check the rules Triton applies at load time.

    ``models`` maps the names of the other models of the repository to their parsed configs (for the
    ensemble wiring). Returns the parsed message.

    Raises:
        ConfigError: the text does not parse, or breaks a load-time rule (named in the message).
    """
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    config = pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ConfigError(f"{where} is not a valid Triton ModelConfig: {err}") from None
    problems: list[str] = []
    if not config.name:
        problems.append("no name")
    if not (config.platform or config.backend):
        problems.append("neither platform nor backend")
    if config.max_batch_size < 0:
        problems.append(f"max_batch_size {config.max_batch_size} < 0")
    if config.HasField("dynamic_batching"):
        if config.max_batch_size == 0:
            problems.append("dynamic_batching needs max_batch_size > 0")
        for p in config.dynamic_batching.preferred_batch_size:
            if not 0 < p <= config.max_batch_size:
                problems.append(f"preferred_batch_size {p} outside 1..max_batch_size {config.max_batch_size}")
    for kind, tensors in (("input", config.input), ("output", config.output)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            problems.append(f"duplicate {kind} names {names}")
        for t in tensors:
            if t.data_type == pb2.TYPE_INVALID:
                problems.append(f"{kind} {t.name!r} has no data_type")
            if not t.dims:
                problems.append(f"{kind} {t.name!r} has no dims")
            if any(d == 0 or d < -1 for d in t.dims):
                problems.append(f"{kind} {t.name!r} has invalid dims {list(t.dims)}")
    if not config.input or not config.output:
        problems.append("a model needs at least one input and one output")
    for group in config.instance_group:
        if group.count < 1:
            problems.append(f"instance_group count {group.count} < 1")
        if group.kind == pb2.ModelInstanceGroup.KIND_CPU and group.gpus:
            problems.append("a KIND_CPU instance group lists gpus")
    if config.platform == "tensorrt_plan" and any(
        g.kind == pb2.ModelInstanceGroup.KIND_CPU for g in config.instance_group
    ):
        problems.append("a tensorrt_plan model runs on GPUs only (instance_group kind KIND_GPU)")
    if config.platform == "ensemble":
        problems += _ensemble_problems(config, models or {})
    if problems:
        raise ConfigError(f"{where}: Triton would refuse this model configuration: {'; '.join(problems)}")
    return config


def _ensemble_problems(config: Any, models: Mapping[str, Any]) -> list[str]:
    """Ensemble wiring: every step's model exists, its inputs are fed, the ensemble outputs are produced."""
    problems: list[str] = []
    available = {t.name for t in config.input}
    for step in config.ensemble_scheduling.step:
        model = models.get(step.model_name)
        if model is None:
            problems.append(f"step model {step.model_name!r} is not in the repository")
            continue
        wanted = {t.name for t in model.input}
        if set(step.input_map) != wanted:
            problems.append(
                f"step {step.model_name!r} maps inputs {sorted(step.input_map)}, model takes {sorted(wanted)}"
            )
        missing = [v for v in step.input_map.values() if v not in available]
        if missing:
            problems.append(f"step {step.model_name!r} reads {missing} before any step produces them")
        produced = {t.name for t in model.output}
        unknown = [k for k in step.output_map if k not in produced]
        if unknown:
            problems.append(f"step {step.model_name!r} maps outputs {unknown} the model does not have")
        available |= set(step.output_map.values())
    missing_out = [t.name for t in config.output if t.name not in available]
    if missing_out:
        problems.append(f"ensemble outputs {missing_out} are produced by no step")
    return problems
