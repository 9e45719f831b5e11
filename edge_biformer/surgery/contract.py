"""The identity of the ``BiLevelRoutingAttention`` op in ONNX (``plugins/bra/BiLevelRoutingAttention.json``).

The JSON file in ``plugins/bra/`` is the machine-readable contract; these constants mirror it for
code that runs from an installed package (the test suite checks that both agree).
"""

from __future__ import annotations

import onnx

__all__ = [
    "ATTR_NAMES",
    "OPSET_VERSION",
    "OP_DOMAIN",
    "OP_TYPE",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "register_onnx_schema",
]

OP_TYPE = "BiLevelRoutingAttention"
OP_DOMAIN = "trt.plugins"
#: Version of the ``trt.plugins`` domain in ``opset_import``.
OPSET_VERSION = 1
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "edge_biformer"
#: Attributes of the node, in the order the contract lists them.
ATTR_NAMES = ("plugin_version", "plugin_namespace", "n_win", "num_heads", "topk", "scale")


def register_onnx_schema() -> None:
    """Register the op's schema with ``onnx`` (once per process).

    With the schema known, :func:`onnx.checker.check_model` validates the node's attributes,
    input count and types instead of skipping an unknown op. The schema has no shape inference
    function (``onnx`` cannot take one from Python): the rewrite writes the output's shape itself.
    """
    if onnx.defs.has(OP_TYPE, OPSET_VERSION, OP_DOMAIN):
        return
    attr = onnx.defs.OpSchema.Attribute
    attr_type = onnx.defs.OpSchema.AttrType
    param = onnx.defs.OpSchema.FormalParameter
    schema = onnx.defs.OpSchema(
        OP_TYPE,
        OP_DOMAIN,
        OPSET_VERSION,
        doc="Routed (top-k region gather) attention of BiFormer's BRA; see plugins/bra/README.md.",
        inputs=[
            param("q", "T", "[N, Hq, Wq, Cqk] NHWC"),
            param("k", "T", "[N, Hk, Wk, Cqk] NHWC"),
            param("v", "T", "[N, Hk, Wk, Cv] NHWC"),
            param("r_idx", "tensor(int32)", "[N, S*S, topk] routed region indices"),
        ],
        outputs=[param("o", "T", "[N, Hq, Wq, Cv] NHWC")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "q, k, v and o")],
        attributes=[
            attr("plugin_version", attr_type.STRING, "TensorRT plugin version", required=True),
            attr("plugin_namespace", attr_type.STRING, "TensorRT plugin namespace", required=True),
            attr("n_win", attr_type.INT, "S: regions per side", required=True),
            attr("num_heads", attr_type.INT, "heads (channels split head-major)", required=True),
            attr("topk", attr_type.INT, "routed regions per query region", required=True),
            attr("scale", attr_type.FLOAT, "logit scale", required=True),
        ],
    )
    onnx.defs.register_schema(schema)
