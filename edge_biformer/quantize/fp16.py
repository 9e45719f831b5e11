"""Mixed FP16: FP16 compute, float32 graph I/O, LayerNorm and the routing in FP32 (modelopt AutoCast).

AutoCast's clean-up looks for the nodes whose outputs nothing reads by scanning the whole graph for
the readers of each output of each node, which is quadratic: 71 of the 107 s that BiFormer-T's
conversion took (its ~7,700 node outputs after the casts are added). :func:`_linear_cleanup`
computes the same list from one set of the names read, so the conversion takes a third of the
time and gives the same graph, byte for byte (``tests/quantize/test_quantize.py`` compares them).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx

from edge_biformer.quantize.policy import exclude_patterns, node_policy
from edge_biformer.quantize.source import load_source
from edge_biformer.quantize.toolkit import QuantizationError, QuantizeResult, quiet_modelopt, require_modelopt
from edge_biformer.utils import atomic_output, heartbeat

__all__ = ["convert_fp16_model", "quantize_fp16", "save_checked"]


@contextlib.contextmanager
def _linear_cleanup() -> Iterator[None]:
    """Within the block, AutoCast's dead-node clean-up runs in linear time (same result)."""
    from modelopt.onnx.autocast.precisionconverter import PrecisionConverter

    original = PrecisionConverter._cleanup_no_consumer_nodes

    def cleanup_no_consumer_nodes(self: Any) -> None:
        graph = self.model.graph
        kept = {o.name for o in graph.output} | {name for node in graph.node for name in node.input}
        # The list is taken before any removal, as AutoCast does: removing a dead node does not make
        # its producer dead in the same pass.
        for node in [n for n in graph.node if not any(out in kept for out in n.output)]:
            graph.node.remove(node)

    PrecisionConverter._cleanup_no_consumer_nodes = cleanup_no_consumer_nodes
    try:
        yield
    finally:
        PrecisionConverter._cleanup_no_consumer_nodes = original


def convert_fp16_model(
    model: onnx.ModelProto, fp32_nodes: Iterable[str], *, keep_io_types: bool = True, fast: bool = True
) -> onnx.ModelProto:
    """FP16 compute for every float op except ``fp32_nodes``; float32 graph I/O if ``keep_io_types``.

    ``fast=False`` runs AutoCast's own quadratic clean-up (for the comparison in the tests).

    Uses modelopt's AutoCast precision converter (CPU only, no reference run needed); Q/DQ nodes
    are kept (their scales become FP16, which needs opset 19: the graph is upgraded to it).
    """
    require_modelopt()
    from modelopt.onnx import utils as onnx_utils
    from modelopt.onnx.autocast import utils as ac_utils
    from modelopt.onnx.autocast.convert import _capture_network_io_metadata
    from modelopt.onnx.autocast.graphsanitizer import GraphSanitizer
    from modelopt.onnx.autocast.precisionconverter import PrecisionConverter
    from modelopt.onnx.utils import get_min_opset_for_precisions, get_qdq_precisions

    keep = set(fp32_nodes)
    io_metadata = _capture_network_io_metadata(model, keep_io_types)
    min_opset = max(19, get_min_opset_for_precisions(get_qdq_precisions(model)))
    sanitizer = GraphSanitizer(model, min_opset=min_opset, trt_plugins=[], max_ir_version=10)
    sanitizer.find_custom_nodes()
    if sanitizer.custom_ops:
        raise QuantizationError(
            f"FP16 conversion runs before the plugin rewrite, but the graph already has custom ops "
            f"{sorted(sanitizer.custom_ops)}: convert the plain export (edge-biformer export), then rewrite"
        )
    sanitizer.convert_opset()
    sanitizer.ensure_graph_name_exists()
    sanitizer.convert_fp64_to_fp32()
    model = onnx_utils.infer_types(sanitizer.model, False, strict_mode=True)
    value_info_map, initializer_map, node_to_init_map = ac_utils.setup_mappings(model)
    converter = PrecisionConverter(
        model,
        value_info_map,
        initializer_map,
        node_to_init_map,
        keep_io_types=keep_io_types,
        low_precision_type="fp16",
        custom_ops=set(),
        tensor_block_dict={},
        use_standalone_type_inference=False,
        original_network_io_metadata=io_metadata,
    )
    high = [n.name for n in model.graph.node if n.name in keep]
    low = [n.name for n in model.graph.node if n.name not in keep]
    if not fast:
        return converter.convert(high, low)
    with _linear_cleanup():
        return converter.convert(high, low)


def save_checked(model: onnx.ModelProto, output: Path) -> None:
    """Write ``model`` atomically and check the written file with ``onnx.checker``."""
    with atomic_output(output, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))


def quantize_fp16(
    onnx_path: str | os.PathLike[str], output: str | os.PathLike[str], *, keep_fp32: Sequence[str] = ()
) -> QuantizeResult:
    """Write a mixed-precision FP16 copy of ``onnx_path`` (float32 I/O, LayerNorm/routing in FP32).

    ``keep_fp32`` adds node-name patterns (regular expressions) to keep in FP32.
    """
    start = time.perf_counter()
    model = load_source(onnx_path, "fp16")
    policy = node_policy(model)
    patterns = exclude_patterns(keep_fp32)
    extra = [n.name for n in model.graph.node if any(p.search(n.name) for p in patterns)]
    fp32 = sorted(set(policy.fp32) | set(extra))
    what = f"fp16: converting {len(model.graph.node)} nodes ({len(fp32)} kept in fp32) with modelopt AutoCast"
    with heartbeat(what), quiet_modelopt():
        converted = convert_fp16_model(model, fp32)
    output = Path(output)
    save_checked(converted, output)
    return QuantizeResult(
        path=str(output),
        precision="fp16",
        seconds=time.perf_counter() - start,
        fp32_nodes=len(fp32),
        fp16_tensors=sum(1 for i in converted.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16),
        excluded=sorted(set(extra)),
        policy={"fp32_nodes": len(fp32), "routing_nodes_fp32": len(policy.routing)},
    )
