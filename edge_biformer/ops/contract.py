"""Op contracts: the machine-readable definition of a custom op, loaded from its JSON file.

A contract (``edge_biformer/ops/<op>/<Name>.json``) holds everything other code needs to know about
an op: its TensorRT identity (name, version, namespace), its ONNX identity (op type, domain, opset),
its attributes with types (and which of them are TensorRT plugin fields), inputs/outputs with their
type rules, the tolerances of an implementation against a float64 evaluation, and example cases.
Everything reads it from here: the graph rewrite writes nodes with :meth:`OpContract.node_attributes`,
:func:`edge_biformer.cpu_session` registers the CPU op from it, ``onnx.checker`` validates nodes with
the schema :meth:`OpContract.register_onnx_schema` builds, the kernel and plugin tests judge with
:meth:`OpContract.within_contract`, ``edge_biformer.plugins`` looks the creator up by its identity,
and the plugin's CMake generates its C++ identity/field header from the same file
(``plugins/cmake/op_contract_header.cmake``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_biformer.check.compare import Comparison, compare
from edge_biformer.check.tolerances import Tolerance
from edge_biformer.errors import EdgeBiformerError

__all__ = ["Attribute", "OpContract", "TensorSpec"]

#: ONNX type strings of the contract's element types.
ONNX_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "int32": "tensor(int32)"}
_SCHEMA_LOCK = threading.Lock()


@dataclass(frozen=True)
class Attribute:
    """One node attribute. ``plugin_field``: TensorRT passes it to the plugin creator as a field."""

    name: str
    type: str  # "int" | "float" | "string"
    required: bool
    plugin_field: bool
    doc: str = ""
    value: str | None = None  # fixed value (the plugin lookup keys)
    min: int | None = None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``type`` is an element type or a type-constraint name (``T``)."""

    name: str
    type: str
    shape: tuple[str, ...]
    layout: str = ""
    doc: str = ""


@dataclass(frozen=True)
class OpContract:
    """A custom op as its JSON contract defines it (see the module docstring)."""

    name: str
    version: str
    namespace: str
    op_type: str
    domain: str
    opset_version: int
    doc: str
    attributes: tuple[Attribute, ...]
    type_constraints: dict[str, tuple[str, ...]]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    constraints: tuple[str, ...]
    workspace_bytes: int
    tolerances: dict[str, Tolerance]
    cases: tuple[dict[str, Any], ...]
    path: Path

    @classmethod
    def load(cls, path: str | Path) -> OpContract:
        """Read a contract JSON file."""
        path = Path(path)
        spec = json.loads(path.read_text())
        tolerances = {
            dtype: Tolerance(
                f"{spec['name']}.{dtype}",
                entry.get("doc", ""),
                max_abs=entry.get("max_abs"),
                max_rel=entry.get("max_rel"),
            )
            for dtype, entry in spec["tolerances"].items()
        }
        return cls(
            name=spec["name"],
            version=spec["version"],
            namespace=spec["namespace"],
            op_type=spec["onnx"]["op_type"],
            domain=spec["onnx"]["domain"],
            opset_version=int(spec["onnx"]["opset_version"]),
            doc=spec.get("doc", ""),
            attributes=tuple(
                Attribute(
                    name=a["name"],
                    type=a["type"],
                    required=bool(a.get("required", True)),
                    plugin_field=bool(a.get("plugin_field", a["type"] != "string")),
                    doc=a.get("doc", ""),
                    value=a.get("value"),
                    min=a.get("min"),
                )
                for a in spec["attributes"]
            ),
            type_constraints={c["name"]: tuple(c["types"]) for c in spec.get("type_constraints", [])},
            inputs=tuple(_tensor(t) for t in spec["inputs"]),
            outputs=tuple(_tensor(t) for t in spec["outputs"]),
            constraints=tuple(spec.get("constraints", [])),
            workspace_bytes=int(spec.get("workspace_bytes", 0)),
            tolerances=tolerances,
            cases=tuple(_case(c) for c in spec.get("cases", [])),
            path=path,
        )

    # -- identity and attributes -------------------------------------------------------------------
    @property
    def attribute_names(self) -> tuple[str, ...]:
        """Every node attribute, in the contract's order."""
        return tuple(a.name for a in self.attributes)

    @property
    def plugin_fields(self) -> tuple[Attribute, ...]:
        """The attributes TensorRT hands to the plugin creator as fields."""
        return tuple(a for a in self.attributes if a.plugin_field)

    @property
    def fixed_attributes(self) -> dict[str, str]:
        """Attributes with one fixed value (the plugin version and namespace)."""
        return {a.name: a.value for a in self.attributes if a.value is not None}

    def is_node(self, node: Any) -> bool:
        """Whether an ONNX ``NodeProto`` or onnx-graphsurgeon ``Node`` is a node of this op."""
        op_type = getattr(node, "op_type", None) or getattr(node, "op", None)
        return op_type == self.op_type and getattr(node, "domain", "") == self.domain

    def node_attributes(self, **values: Any) -> dict[str, Any]:
        """The attributes of a node of this op: the fixed ones plus ``values``, typed, in order.

        Raises:
            ValueError: a required attribute is missing, unknown, or below its minimum.
        """
        unknown = sorted(set(values) - set(self.attribute_names))
        if unknown:
            raise ValueError(f"{self.op_type} has no attribute(s) {', '.join(unknown)}")
        attrs: dict[str, Any] = {}
        for a in self.attributes:
            value = a.value if a.value is not None else values.get(a.name)
            if value is None:
                if a.required:
                    raise ValueError(f"{self.op_type} needs the attribute {a.name}")
                continue
            if a.type == "int":
                value = int(value)
                if a.min is not None and value < a.min:
                    raise ValueError(f"{self.op_type} attribute {a.name}={value} is below {a.min}")
            elif a.type == "float":
                value = float(value)
            else:
                value = str(value)
            attrs[a.name] = value
        return attrs

    def check_node(self, attrs: dict[str, Any], n_inputs: int, n_outputs: int, where: str, node: str) -> None:
        """Check a node's attributes and arity against the contract (clear error naming the fix).

        ``attrs`` maps attribute names to values (bytes or str for strings).
        """
        missing = [a.name for a in self.attributes if a.required and a.value is None and a.name not in attrs]
        if missing:
            raise EdgeBiformerError(
                f"{where}: {self.op_type} node {node!r} lacks the attribute(s) {', '.join(missing)}; "
                "rewrite the original graph again with `edge-biformer rewrite`"
            )
        for name, fixed in self.fixed_attributes.items():
            got = attrs.get(name, b"")
            got = got.decode() if isinstance(got, bytes) else str(got)
            if got != fixed:
                raise EdgeBiformerError(
                    f"{where}: {self.op_type} node {node!r} asks for plugin version "
                    f"{_text(attrs.get('plugin_version'))!r} in namespace "
                    f"{_text(attrs.get('plugin_namespace'))!r}; this edge-biformer implements version "
                    f"{self.version!r} in namespace {self.namespace!r}. "
                    "Rewrite the graph with this version of edge-biformer"
                )
        if n_inputs != len(self.inputs) or n_outputs != len(self.outputs):
            raise EdgeBiformerError(
                f"{where}: {self.op_type} node {node!r} has {n_inputs} inputs and {n_outputs} outputs; "
                f"the op takes {', '.join(t.name for t in self.inputs)} and returns "
                f"{', '.join(t.name for t in self.outputs)}"
            )

    def element_types(self, tensor: TensorSpec) -> tuple[str, ...]:
        """The element types an input or output may have."""
        return self.type_constraints.get(tensor.type, (tensor.type,))

    # -- ONNX schema ------------------------------------------------------------------------------
    def register_onnx_schema(self) -> None:
        """Register the op's schema with ``onnx`` (once per process).

        With it, :func:`onnx.checker.check_model` validates the node's attributes, input count and
        types instead of skipping an unknown op. It has no shape inference function (``onnx`` takes
        none from Python): the rewrite writes the output's shape itself.
        """
        import onnx

        with _SCHEMA_LOCK:
            if onnx.defs.has(self.op_type, self.opset_version, self.domain):
                return
            schema_cls = onnx.defs.OpSchema
            kinds = {"int": schema_cls.AttrType.INT, "float": schema_cls.AttrType.FLOAT}
            kinds["string"] = schema_cls.AttrType.STRING

            def param(t: TensorSpec) -> Any:
                kind = t.type if t.type in self.type_constraints else ONNX_TYPES[t.type]
                return schema_cls.FormalParameter(t.name, kind, f"{list(t.shape)} {t.layout}".strip())

            schema = schema_cls(
                self.op_type,
                self.domain,
                self.opset_version,
                doc=self.doc,
                inputs=[param(t) for t in self.inputs],
                outputs=[param(t) for t in self.outputs],
                type_constraints=[
                    (name, [ONNX_TYPES[t] for t in types], f"{name}: {', '.join(types)}")
                    for name, types in self.type_constraints.items()
                ],
                attributes=[
                    schema_cls.Attribute(a.name, kinds[a.type], a.doc, required=a.required)
                    for a in self.attributes
                ],
            )
            onnx.defs.register_schema(schema)

    # -- tolerances -------------------------------------------------------------------------------
    def tolerance(self, dtype: Any) -> Tolerance:
        """The tolerance of an implementation computing in ``dtype`` (``float32``/``float16``, or a dtype)."""
        key = _dtype_name(dtype)
        if key not in self.tolerances:
            raise ValueError(
                f"{self.op_type} defines tolerances for {', '.join(self.tolerances)}, not {dtype}"
            )
        return self.tolerances[key]

    def within_contract(self, o: Any, ref: Any, dtype: Any) -> Comparison:
        """Judge an implementation's output ``o`` against a float64 evaluation ``ref`` of the op."""
        return compare(o, ref, self.tolerance(dtype))


def _tensor(spec: dict[str, Any]) -> TensorSpec:
    return TensorSpec(
        spec["name"], spec["type"], tuple(spec["shape"]), spec.get("layout", ""), spec.get("doc", "")
    )


def _case(spec: dict[str, Any]) -> dict[str, Any]:
    case = {"pattern": "perm", **spec}
    case.setdefault("scale", spec["c_qk"] ** -0.5 if "c_qk" in spec else 1.0)
    return case


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else ("" if value is None else str(value))


def _dtype_name(dtype: Any) -> str:
    text = str(dtype).replace("torch.", "")
    aliases = {"fp32": "float32", "fp16": "float16", "float": "float32", "half": "float16"}
    return aliases.get(text, text)
