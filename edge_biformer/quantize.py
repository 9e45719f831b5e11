"""Precision conversion of an exported BiFormer ONNX: explicit INT8 (Q/DQ) and mixed FP16.

Both run on the CPU and produce graphs for *strongly typed* TensorRT builds (TensorRT >= 10), in
which the ONNX types decide the precision of every layer:

* **int8**: nvidia-modelopt's ONNX post-training quantization (``modelopt.onnx.quantization``),
  calibrated with onnxruntime's CPUExecutionProvider on the plain export (before the plugin
  rewrite). Default policy for a vision transformer: the weight-bearing ops (Conv, Gemm and
  MatMul with a constant weight: qkv, output and MLP projections, patch embeddings, head) get
  INT8 Q/DQ; LayerNorm, Softmax, GELU, the routing (region means, routing MatMul, TopK) and the
  token attention (activation x activation MatMuls, later the plugin) stay in high precision.
  The remaining float ops are then converted to FP16 (``high_precision="fp16"``, default) with
  LayerNorm and the routing kept in FP32.
* **fp16**: the same FP16 conversion without Q/DQ: FP16 compute, float32 graph input and output,
  LayerNormalization and the routing chain in FP32 (LayerNorm's variance overflows FP16 at
  transformer activation ranges; the routing logits decide a discrete TopK, so their rounding
  changes which regions are attended).

The activation ranges of a calibration are saved as a TensorRT-format calibration cache
(``TRT-8501-EntropyCalibration2`` / ``MinMaxCalibration`` header, ``tensor: hex(float32 scale)``
lines) with a JSON key beside it (hash of the model, the calibration tensors, the method and the
exclusions); calibrating the same model on the same data again reuses the cached scales.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import atomic_output, sha256_file

CALIB_METHODS = ("entropy", "max")
HIGH_PRECISIONS = ("fp16", "fp32")
#: Op types kept in FP32 by the FP16 conversion (see the module docstring).
FP32_OP_TYPES = ("LayerNormalization", "TopK")
_CACHE_HEADERS = {"entropy": "TRT-8501-EntropyCalibration2", "max": "TRT-8501-MinMaxCalibration"}


class QuantizationError(EdgeBiformerError):
    """Quantization that cannot run (missing package, bad option) or that failed."""


@dataclass
class NodePolicy:
    """Which nodes get INT8 Q/DQ and which stay in FP32 under the FP16 conversion."""

    int8: list[str]
    fp32: list[str]
    excluded_by_user: list[str] = field(default_factory=list)
    attention_matmuls: list[str] = field(default_factory=list)
    routing: list[str] = field(default_factory=list)


@dataclass
class QuantizeResult:
    """What a precision conversion wrote."""

    path: str
    precision: str
    seconds: float
    quantized_nodes: int = 0
    qdq_pairs: int = 0
    fp32_nodes: int = 0
    fp16_tensors: int = 0
    calib_method: str | None = None
    calib_cache: str | None = None
    calib_cache_reused: bool = False
    calib_summary: dict[str, Any] | None = None
    excluded: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for the manifest)."""
        return asdict(self)


def _require_modelopt() -> Any:
    try:
        import modelopt.onnx.quantization as mq
    except ImportError as err:
        raise QuantizationError(
            "INT8/FP16 conversion needs nvidia-modelopt, which is not importable "
            f'({err}): install it with `pip install "nvidia-modelopt==0.47.0" onnxslim lief` '
            "(not the [onnx] extra, which pulls onnxruntime-gpu and cupy)"
        ) from None
    return mq


@contextlib.contextmanager
def _quiet_modelopt() -> Any:
    """Keep modelopt's and onnxruntime's INFO chatter and progress bars out of the CLI log."""
    loggers = [logging.getLogger(n) for n in ("modelopt", "modelopt.onnx", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield sink
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def routing_nodes(graph: onnx.GraphProto, max_depth: int = 8) -> list[str]:
    """The routing chain of every BRA: TopK and its ancestors back to the region means.

    Walks up from each TopK through its data input (not its ``k`` input) and stops at
    ReduceMean (the region mean of q or k, included) or after ``max_depth`` nodes.
    """
    producers = _producers(graph)
    found: list[str] = []
    seen: set[str] = set()
    for node in graph.node:
        if node.op_type != "TopK":
            continue
        stack = [(node, 0)]
        while stack:
            current, depth = stack.pop()
            if current.name in seen:
                continue
            seen.add(current.name)
            found.append(current.name)
            if current.op_type == "ReduceMean" or depth >= max_depth:
                continue
            inputs = current.input[:1] if current.op_type in ("TopK", "Reshape", "Slice") else current.input
            for name in inputs:
                parent = producers.get(name)
                if parent is not None and parent.op_type not in ("Constant", "Shape"):
                    stack.append((parent, depth + 1))
    return found


def _exclude_patterns(exclude: Sequence[str]) -> list[re.Pattern[str]]:
    """Compile ``--exclude`` node-name patterns, with a clear error for an invalid one."""
    try:
        return [re.compile(p) for p in exclude]
    except re.error as err:
        raise QuantizationError(
            f"--exclude pattern {err.pattern!r} is not a valid regular expression: {err}"
        ) from None


def node_policy(model: onnx.ModelProto, exclude: Sequence[str] = ()) -> NodePolicy:
    """The default INT8/FP32 policy for a BiFormer graph, minus the user's ``exclude`` patterns.

    ``exclude`` holds Python regular expressions matched (``re.search``) against node names.
    """
    graph = model.graph
    constants = _constant_names(graph)
    patterns = _exclude_patterns(exclude)
    routing = routing_nodes(graph)
    routing_set = set(routing)
    int8: list[str] = []
    attention: list[str] = []
    user: list[str] = []
    for node in graph.node:
        weighted = node.op_type in ("Conv", "Gemm") or (
            node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] in constants
        )
        if node.op_type == "MatMul" and not weighted:
            attention.append(node.name)
        if not weighted or node.name in routing_set:
            continue
        if any(p.search(node.name) for p in patterns):
            user.append(node.name)
            continue
        int8.append(node.name)
    fp32 = [n.name for n in graph.node if n.op_type in FP32_OP_TYPES or n.name in routing_set]
    return NodePolicy(
        int8=int8, fp32=sorted(set(fp32)), excluded_by_user=user, attention_matmuls=attention, routing=routing
    )


def _activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """``{tensor name: scale}`` of the activation QuantizeLinear nodes of a Q/DQ graph."""
    inits = {i.name: i for i in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    scales: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale_name = node.input[1]
        if scale_name in inits:
            value = onnx.numpy_helper.to_array(inits[scale_name])
        elif scale_name in constants:
            value = onnx.numpy_helper.to_array(constants[scale_name].attribute[0].t)
        else:
            continue
        if value.size == 1:
            scales[node.input[0]] = float(np.asarray(value, np.float32).reshape(()))
    return scales


def write_calib_cache(path: str | os.PathLike[str], scales: dict[str, float], method: str) -> None:
    """Write ``scales`` as a TensorRT calibration cache (big-endian float32 hex per tensor)."""
    lines = [_CACHE_HEADERS[method]]
    for name in sorted(scales):
        lines.append(f"{name}: {struct.pack('!f', scales[name]).hex()}")
    with atomic_output(path, suffix=".cache") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def read_calib_cache(path: str | os.PathLike[str]) -> dict[str, float]:
    """Read a TensorRT calibration cache into ``{tensor name: scale}``."""
    scales: dict[str, float] = {}
    text = Path(path).read_text().splitlines()
    for line in text[1:]:
        name, sep, hex_value = line.rpartition(": ")
        if not sep:
            continue
        try:
            scales[name] = struct.unpack("!f", bytes.fromhex(hex_value.strip()))[0]
        except ValueError:
            raise QuantizationError(
                f"calibration cache {path} has a malformed line {line!r}; delete the file to recalibrate"
            ) from None
    return scales


def calib_cache_key(
    model_path: str | os.PathLike[str], data_sha256: str, method: str, policy: NodePolicy
) -> dict[str, Any]:
    """What identifies a calibration: the model bytes, the data, the method and the quantized nodes."""
    nodes = hashlib.sha256("\n".join(sorted(policy.int8)).encode()).hexdigest()
    return {
        "model_sha256": sha256_file(model_path),
        "data_sha256": data_sha256,
        "method": method,
        "quantized_nodes_sha256": nodes,
    }


def _key_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".json")


def _cache_matches(cache: Path, key: dict[str, Any]) -> bool:
    try:
        return cache.is_file() and json.loads(_key_path(cache).read_text()) == key
    except (OSError, ValueError):
        return False


def _count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(1 for n in model.graph.node if n.op_type == op_type)


def convert_fp16_model(
    model: onnx.ModelProto, fp32_nodes: Iterable[str], *, keep_io_types: bool = True
) -> onnx.ModelProto:
    """FP16 compute for every float op except ``fp32_nodes``; float32 graph I/O if ``keep_io_types``.

    Uses modelopt's AutoCast precision converter (CPU only, no reference run needed); Q/DQ nodes
    are kept (their scales become FP16, which needs opset 19: the graph is upgraded to it).
    """
    _require_modelopt()
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
    return converter.convert(high, low)


def _save(model: onnx.ModelProto, output: Path) -> None:
    with atomic_output(output, suffix=".onnx") as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))


def _fp32_nodes_after(model: onnx.ModelProto, policy: NodePolicy) -> list[str]:
    names = {n.name for n in model.graph.node}
    return [n for n in policy.fp32 if n in names]


def quantize_fp16(
    onnx_path: str | os.PathLike[str], output: str | os.PathLike[str], *, keep_fp32: Sequence[str] = ()
) -> QuantizeResult:
    """Write a mixed-precision FP16 copy of ``onnx_path`` (float32 I/O, LayerNorm/routing in FP32).

    ``keep_fp32`` adds node-name patterns (regular expressions) to keep in FP32.
    """
    start = time.perf_counter()
    model = onnx.load(str(onnx_path))
    policy = node_policy(model)
    patterns = _exclude_patterns(keep_fp32)
    extra = [n.name for n in model.graph.node if any(p.search(n.name) for p in patterns)]
    fp32 = sorted(set(policy.fp32) | set(extra))
    with _quiet_modelopt():
        converted = convert_fp16_model(model, fp32)
    output = Path(output)
    _save(converted, output)
    return QuantizeResult(
        path=str(output),
        precision="fp16",
        seconds=time.perf_counter() - start,
        fp32_nodes=len(fp32),
        fp16_tensors=sum(1 for i in converted.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16),
        excluded=sorted(set(extra)),
    )


def onnx_img_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """Static (H, W) of the graph input, or ``None`` if dynamic."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:
        raise EdgeBiformerError(f"cannot read the ONNX model {path}: {err}") from None
    dims = graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise EdgeBiformerError(f"{path}: expected an N x 3 x H x W image input, got rank {len(dims)}")
    h, w = dims[2], dims[3]
    if h.HasField("dim_value") and w.HasField("dim_value"):
        return int(h.dim_value), int(w.dim_value)
    return None


def graph_kind(model: onnx.ModelProto | str | os.PathLike[str]) -> str:
    """``plugin`` (already rewritten), ``qdq`` (quantized), ``fp16`` (converted) or ``plain``."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    if "BiLevelRoutingAttention" in ops:
        return "plugin"
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "qdq"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "plain"


def quantize_int8(
    onnx_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    calib_data: Any,
    *,
    method: str = "entropy",
    exclude: Sequence[str] = (),
    high_precision: str = "fp16",
    cache: str | os.PathLike[str] | None = None,
) -> QuantizeResult:
    """Explicit INT8 (Q/DQ) copy of ``onnx_path``, calibrated on the CPU with onnxruntime.

    Args:
        onnx_path: the plain export (before the plugin rewrite), float32.
        output: the ``.onnx`` to write (atomically).
        calib_data: a :class:`edge_biformer.calib.CalibrationData` (its tensors and batch size).
        method: ``entropy`` (KL divergence, TensorRT's EntropyCalibrator2) or ``max`` (absolute max).
        exclude: node-name regular expressions that must not be quantized.
        high_precision: ``fp16`` (convert the non-INT8 ops to FP16, routing and LayerNorm in FP32)
            or ``fp32``.
        cache: calibration cache path; reused when its key (model, data, method, nodes) matches.
    """
    if method not in CALIB_METHODS:
        raise QuantizationError(f"--calib-method must be one of {', '.join(CALIB_METHODS)}, got {method!r}")
    if high_precision not in HIGH_PRECISIONS:
        raise QuantizationError(f"--high-precision must be fp16 or fp32, got {high_precision!r}")
    mq = _require_modelopt()
    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    output = Path(output)
    model = onnx.load(str(onnx_path))
    if any(n.domain not in ("", "ai.onnx") for n in model.graph.node):
        raise QuantizationError(
            f"{onnx_path} already contains custom-domain nodes (the plugin rewrite?): INT8 calibration "
            "runs in onnxruntime on the plain export; quantize the output of `edge-biformer export` and "
            "rewrite afterwards"
        )
    kind = graph_kind(model)
    if kind == "qdq":
        raise QuantizationError(f"{onnx_path} is already quantized (it has Q/DQ nodes)")
    if kind == "fp16":
        raise QuantizationError(
            f"{onnx_path} is already converted to float16; INT8 calibration starts from the float32 export "
            "(the output of `edge-biformer export`)"
        )
    policy = node_policy(model, exclude)
    if not policy.int8:
        raise QuantizationError(
            f"no node of {onnx_path} is left to quantize (the --exclude patterns removed all "
            f"{len(policy.excluded_by_user)} candidates)"
        )
    tensors = np.ascontiguousarray(calib_data.tensors, dtype=np.float32)
    batch = min(int(calib_data.batch_size), len(tensors))
    usable = (len(tensors) // batch) * batch  # modelopt splits the array into equal batches
    if usable < len(tensors):
        tensors = tensors[:usable]
    key = calib_cache_key(onnx_path, calib_data.sha256, method, policy)
    cache_path = Path(cache) if cache is not None else None
    if cache_path is not None and (cache_path.is_dir() or not cache_path.parent.is_dir()):
        raise QuantizationError(
            f"--calib-cache {cache_path} must be a file path in an existing folder (it is "
            f"{'a directory' if cache_path.is_dir() else 'in a folder that does not exist'})"
        )
    reuse = cache_path is not None and _cache_matches(cache_path, key)
    feed = tensors[:batch] if reuse else tensors  # cached scales overwrite the ranges of one batch
    shape = "x".join(str(d) for d in (batch, *tensors.shape[1:]))
    name = model.graph.input[0].name
    with (
        atomic_output(output, suffix=".onnx") as tmp,
        tempfile.TemporaryDirectory(prefix="edge_biformer_q_") as work,
        _quiet_modelopt() as chatter,
    ):
        # modelopt rewrites its input in place and leaves side files beside it: work on a copy.
        private = Path(work) / "model.onnx"
        shutil.copyfile(onnx_path, private)
        try:
            mq.quantize(
                str(private),
                quantize_mode="int8",
                calibration_data={name: feed},
                calibration_method=method,
                calibration_cache_path=str(cache_path) if reuse else None,
                calibration_shapes=f"{name}:{shape}",
                calibration_eps=["cpu"],
                nodes_to_quantize=[f"^{re.escape(n)}$" for n in policy.int8],
                high_precision_dtype="fp32",
                output_path=str(tmp),
                log_level="WARNING",
            )
        except Exception as err:
            raise QuantizationError(
                f"INT8 quantization of {onnx_path} with nvidia-modelopt failed ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); modelopt said: "
                f"{chatter.getvalue().strip()[-500:]}"
            ) from err
        quantized = onnx.load(str(tmp))
        if _count(quantized, "QuantizeLinear") == 0:
            raise QuantizationError(f"modelopt inserted no Q/DQ node into {onnx_path}; nothing was quantized")
        scales = _activation_scales(quantized)
        if high_precision == "fp16":
            quantized = convert_fp16_model(quantized, _fp32_nodes_after(quantized, policy))
        onnx.save(quantized, str(tmp))
        onnx.checker.check_model(str(tmp))
    if cache_path is not None and not reuse:
        write_calib_cache(cache_path, scales, method)
        with atomic_output(_key_path(cache_path), suffix=".json") as tmp:
            tmp.write_text(json.dumps(key, indent=2) + "\n")
    return QuantizeResult(
        path=str(output),
        precision="int8",
        seconds=time.perf_counter() - start,
        quantized_nodes=len(policy.int8),
        qdq_pairs=_count(quantized, "QuantizeLinear"),
        fp32_nodes=len(_fp32_nodes_after(quantized, policy)) if high_precision == "fp16" else -1,
        fp16_tensors=sum(1 for i in quantized.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16),
        calib_method=method,
        calib_cache=str(cache_path) if cache_path else None,
        calib_cache_reused=reuse,
        calib_summary={**calib_data.summary(), "used_for_calibration": len(tensors)},
        excluded=policy.excluded_by_user,
    )
