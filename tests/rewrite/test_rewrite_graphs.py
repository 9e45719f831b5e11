"""Graph surgery on real exports: every BRA block -> one plugin node, outputs equal to the original.

Graphs: biformer_tiny and the small official-architecture configuration (SMALL_W7), both
torch.onnx exporters, our index gather and the official expand + gather pattern, auto_pad graphs
with dynamic H/W, the official reference export, and a graph with Q/DQ nodes. Each rewritten graph
is run with ``edge_biformer.cpu_session`` against the original in onnxruntime.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

import edge_biformer
from edge_biformer.export import export_onnx
from edge_biformer.ops.bra import CONTRACT
from edge_biformer.rewrite import RewriteError, rewrite_onnx
from edge_biformer.testing import assert_close
from tests.conftest import REFERENCE_DIR, SMALL_W7

#: name -> (model overrides on biformer_tiny, export size, exporter)
GRAPHS: dict[str, tuple[dict, tuple[int, int], str]] = {
    "tiny": ({}, (224, 224), "torchscript"),
    "small_ts": (SMALL_W7, (224, 224), "torchscript"),
    "small_dynamo": (SMALL_W7, (224, 224), "dynamo"),
    "expand_ts": ({**SMALL_W7, "gather_mode": "expand"}, (224, 224), "torchscript"),
    "expand_dynamo": ({**SMALL_W7, "gather_mode": "expand"}, (224, 224), "dynamo"),
    "pad8_ts": ({**SMALL_W7, "n_win": 8, "auto_pad": True}, (200, 232), "torchscript"),
    "pad8_expand_ts": (
        {**SMALL_W7, "n_win": 8, "auto_pad": True, "gather_mode": "expand"},
        (200, 232),
        "torchscript",
    ),
    # The dynamo exporter is slow with dynamic H/W: one BRA block per stage keeps it short.
    "pad8_dynamo": (
        {**SMALL_W7, "depth": [1, 1, 1, 1], "n_win": 8, "auto_pad": True},
        (200, 232),
        "dynamo",
    ),
    "soft": ({**SMALL_W7, "soft_routing": True}, (224, 224), "torchscript"),
    "pooled": (
        {**SMALL_W7, "kv_downsample_mode": "avgpool", "kv_downsample_ratios": [2, 2, 1, 1]},
        (224, 224),
        "torchscript",
    ),
    "no_bra": ({**SMALL_W7, "topks": [-1, -1, -1, -2]}, (224, 224), "torchscript"),
}


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Export a graph of :data:`GRAPHS` once per session; the official reference is used as is."""
    directory = tmp_path_factory.mktemp("surgery_exports")
    cache: dict[str, Path] = {"official": REFERENCE_DIR / "official_small_w7.ts17.onnx"}

    def get(name: str) -> Path:
        if name not in cache:
            overrides, size, exporter = GRAPHS[name]
            torch.manual_seed(0)
            model = edge_biformer.create_model("biformer_tiny", **overrides)
            path = directory / f"{name}.onnx"
            export_onnx(
                model,
                path,
                img_size=size,
                exporter=exporter,
                opset=18 if exporter == "dynamo" else 17,
                verify=False,
            )
            cache[name] = path
        return cache[name]

    return get


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def _assert_pair(original: Path, rewritten: Path, shape: tuple[int, ...], seed: int = 0) -> None:
    """max |rewritten - original| / max |original| <= 1e-4 for one random input."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    expected = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    got = edge_biformer.cpu_session(rewritten).run(None, {"input": x})[0]
    assert got.shape == expected.shape
    assert_close(got, expected, max_rel=1e-4, msg=f"{rewritten.name} at {shape}")


def _check_structure(path: Path, plugin_nodes: int, topks: list[int], heads: list[int], n_win: int) -> None:
    """The rewritten graph: plugin nodes with the right attributes and typed outputs, no routed gathers."""
    model = onnx.load(str(path))
    ops = _ops(model)
    assert ops[CONTRACT.op_type] == plugin_nodes
    assert ops["GatherElements"] == 0 and ops["TopK"] == plugin_nodes  # routing stays native
    assert any(o.domain == CONTRACT.domain and o.version == 1 for o in model.opset_import)
    producers = {out: n for n in model.graph.node for out in n.output}
    value_info = {v.name: v for v in model.graph.value_info}
    plugins = [n for n in model.graph.node if n.op_type == CONTRACT.op_type]
    for node, topk, m in zip(plugins, topks, heads, strict=True):
        assert node.domain == CONTRACT.domain
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"edge_biformer"
        assert (attrs["n_win"], attrs["topk"], attrs["num_heads"]) == (n_win, topk, m)
        assert attrs["scale"] == pytest.approx((32 * m) ** -0.5, rel=1e-6)  # qk_dim ** -0.5, head_dim 32
        cast = producers[node.input[3]]
        assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.INT32
        assert producers[cast.input[0]].op_type == "TopK"
        info = value_info[node.output[0]].type.tensor_type
        assert info.elem_type == TensorProto.FLOAT and len(info.shape.dim) == 4
        assert info.shape.dim[3].dim_value == 32 * m
    # Gathers that read float data take constant indices (qkv unbind of stage 4), none routed ones.
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)
    }
    types.update({i.name: i.data_type for i in inferred.graph.initializer})
    constants = {i.name for i in model.graph.initializer} | {
        n.output[0] for n in model.graph.node if n.op_type == "Constant"
    }
    float_gathers = [n for n in model.graph.node if n.op_type == "Gather" and types.get(n.input[0]) == 1]
    assert all(n.input[1] in constants for n in float_gathers)


SMALL_TOPKS, SMALL_HEADS = [1, 4, 16, 16], [1, 2, 4, 4]


@pytest.mark.parametrize(
    ("name", "plugin_nodes"),
    [
        ("small_ts", 4),
        pytest.param("small_dynamo", 4, marks=pytest.mark.slow),
        ("expand_ts", 4),
        pytest.param("expand_dynamo", 4, marks=pytest.mark.slow),
        ("official", 4),
    ],
)
def test_rewrite_small_graphs(exported, tmp_path: Path, name: str, plugin_nodes: int) -> None:
    source = exported(name)
    out = tmp_path / f"{name}.plugin.onnx"
    report = rewrite_onnx(source, out)
    assert (report.found, report.replaced) == (plugin_nodes, plugin_nodes)
    assert [s.found for s in report.stages] == [1, 1, 2]  # depth [1, 1, 2, 1]; stage 4 is not BRA
    assert report.output_check is not None and report.output_check.passed
    assert all(c.passed for c in report.block_checks) and len(report.block_checks) == plugin_nodes
    _check_structure(out, plugin_nodes, SMALL_TOPKS, SMALL_HEADS, n_win=7)
    for batch in (1, 3):
        _assert_pair(source, out, (batch, 3, 224, 224), seed=batch)


def test_official_reference_export_keeps_golden_output(tmp_path: Path, golden) -> None:
    """The official module's export, rewritten, still gives the official logits for the golden input."""
    out = tmp_path / "official.plugin.onnx"
    rewrite_onnx(REFERENCE_DIR / "official_small_w7.ts17.onnx", out)
    logits = edge_biformer.cpu_session(out).run(None, {"input": golden["x"]})[0]
    assert_close(logits, golden["y"], max_rel=1e-4)


@pytest.mark.slow
def test_rewrite_biformer_tiny(exported, tmp_path: Path) -> None:
    source = exported("tiny")
    out = tmp_path / "tiny.plugin.onnx"
    report = rewrite_onnx(source, out)
    assert (report.found, report.replaced) == (12, 12)
    assert [(s.found, s.replaced) for s in report.stages] == [(2, 2), (2, 2), (8, 8)]
    _check_structure(out, 12, [1] * 2 + [4] * 2 + [16] * 8, [2] * 2 + [4] * 2 + [8] * 8, n_win=7)
    for batch in (1, 3):
        _assert_pair(source, out, (batch, 3, 224, 224), seed=batch)


@pytest.mark.parametrize(
    ("name", "plugin_nodes"),
    [("pad8_ts", 4), ("pad8_expand_ts", 4), pytest.param("pad8_dynamo", 3, marks=pytest.mark.slow)],
)
def test_rewrite_auto_pad_graphs_at_padded_sizes(
    exported, tmp_path: Path, name: str, plugin_nodes: int
) -> None:
    """auto_pad graphs have dynamic H/W: check at the export size and at another size, both padded."""
    source = exported(name)
    out = tmp_path / f"{name}.plugin.onnx"
    report = rewrite_onnx(source, out, input_shapes={"input": [2, 3, 200, 232]})
    assert report.replaced == plugin_nodes
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_param  # H stays dynamic
    assert _ops(model)["Pad"] == _ops(onnx.load(str(source)))["Pad"] > 0  # padding stays outside the op
    for batch, size in ((1, (200, 232)), (3, (225, 301)), (1, (97, 130))):
        _assert_pair(source, out, (batch, 3, *size), seed=batch)


def _insert_qdq(source: Path, target: Path) -> int:
    """Q/DQ on the weights of every qkv MatMul and on the activation of the first one; returns count."""
    graph = gs.import_onnx(onnx.load(str(source)))
    graph.toposort()
    qkv = [
        n
        for n in graph.nodes
        if n.op == "MatMul"
        and isinstance(n.inputs[1], gs.Constant)
        and any(
            c.op == "Add" and any(cc.op == "Split" for cc in c.outputs[0].outputs)
            for c in n.outputs[0].outputs
        )
    ]
    assert len(qkv) == 4

    def fake_quant(tensor: gs.Tensor, scale: float, name: str) -> gs.Variable:
        s = gs.Constant(f"{name}_scale", np.array(scale, dtype=np.float32))
        z = gs.Constant(f"{name}_zero", np.array(0, dtype=np.int8))
        q = gs.Variable(f"{name}_q", dtype=np.int8)
        dq = gs.Variable(f"{name}_dq", dtype=np.float32)
        graph.nodes.append(gs.Node("QuantizeLinear", f"{name}/Q", inputs=[tensor, s, z], outputs=[q]))
        graph.nodes.append(gs.Node("DequantizeLinear", f"{name}/DQ", inputs=[q, s, z], outputs=[dq]))
        return dq

    for i, node in enumerate(qkv):
        weight = node.inputs[1]
        node.inputs[1] = fake_quant(weight, float(np.abs(weight.values).max()) / 127, f"qkv{i}_w")
        if i == 0:  # an activation: only the first block's, so that no later rounding depends on the op
            node.inputs[0] = fake_quant(node.inputs[0], 0.05, f"qkv{i}_x")
    graph.cleanup().toposort()
    onnx.save(gs.export_onnx(graph), str(target))
    return sum(n.op in ("QuantizeLinear", "DequantizeLinear") for n in graph.nodes)


def test_rewrite_keeps_qdq_nodes(exported, tmp_path: Path) -> None:
    quantized = tmp_path / "small_qdq.onnx"
    inserted = _insert_qdq(exported("small_ts"), quantized)
    before = _ops(onnx.load(str(quantized)))
    assert before["QuantizeLinear"] + before["DequantizeLinear"] == inserted
    out = tmp_path / "small_qdq.plugin.onnx"
    report = rewrite_onnx(quantized, out)
    after = _ops(onnx.load(str(out)))
    assert report.replaced == 4 and after[CONTRACT.op_type] == 4
    assert (after["QuantizeLinear"], after["DequantizeLinear"]) == (
        before["QuantizeLinear"],
        before["DequantizeLinear"],
    )
    assert report.qdq_before == report.qdq_after == inserted
    for batch in (1, 3):
        _assert_pair(quantized, out, (batch, 3, 224, 224), seed=batch)


def test_rewrite_onnxruntime_quantized_graph(exported, tmp_path: Path) -> None:
    """Q/DQ everywhere (onnxruntime's quantize_static): the pairs inside the attention are bypassed."""
    quantized = tmp_path / "small_static_qdq.onnx"
    # In a fresh process: nvidia-modelopt (used by other tests) patches onnxruntime.quantization
    # process-wide once it has run, and plain quantize_static then fails.
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self):
                rng = np.random.default_rng(0)
                self.feeds = iter(
                    [{"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(2)]
                )

            def get_next(self):
                return next(self.feeds, None)

        quantize_static(sys.argv[1], sys.argv[2], Reader(), quant_format=QuantFormat.QDQ)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(exported("small_ts")), str(quantized)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = _ops(onnx.load(str(quantized)))
    out = tmp_path / "small_static_qdq.plugin.onnx"
    report = rewrite_onnx(quantized, out)  # verify=True: every block and the whole graph are checked
    after = _ops(onnx.load(str(out)))
    assert report.replaced == 4 and after[CONTRACT.op_type] == 4
    assert report.output_check is not None and report.output_check.passed
    qdq_before = before["QuantizeLinear"] + before["DequantizeLinear"]
    qdq_after = after["QuantizeLinear"] + after["DequantizeLinear"]
    assert report.qdq_before == qdq_before and report.qdq_after == qdq_after
    assert 0 < qdq_after < qdq_before  # those inside the replaced attention are gone, the rest stay


def _to_float16(source: Path, target: Path) -> None:
    """The whole graph in float16 (initializers, constants, casts, graph inputs and outputs)."""
    model = onnx.load(str(source))
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            values = onnx.numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(onnx.numpy_helper.from_array(values, init.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                values = onnx.numpy_helper.to_array(attr.t).astype(np.float16)
                attr.t.CopyFrom(onnx.numpy_helper.from_array(values, attr.t.name))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    onnx.save(model, str(target))


def test_rewrite_float16_graph(exported, tmp_path: Path) -> None:
    half = tmp_path / "small_fp16.onnx"
    _to_float16(exported("small_ts"), half)
    out = tmp_path / "small_fp16.plugin.onnx"
    report = rewrite_onnx(half, out)
    assert report.replaced == 4 and report.output_check is not None
    assert report.output_check.tolerance == 2e-2 and report.output_check.max_rel_diff <= 2e-3
    model = onnx.load(str(out))
    value_info = {v.name: v for v in model.graph.value_info}
    for node in (n for n in model.graph.node if n.op_type == CONTRACT.op_type):
        assert value_info[node.output[0]].type.tensor_type.elem_type == TensorProto.FLOAT16
    x = np.random.default_rng(0).standard_normal((3, 3, 224, 224)).astype(np.float16)
    expected = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = edge_biformer.cpu_session(out).run(None, {"input": x})[0]
    assert got.dtype == np.float16
    assert_close(got, expected, max_rel=2e-3)


def test_soft_routing_is_reported_not_rewritten(exported, tmp_path: Path) -> None:
    out = tmp_path / "soft.plugin.onnx"
    with pytest.raises(RewriteError, match=r"4 BRA block\(s\) match only in part.*soft routing") as err:
        rewrite_onnx(exported("soft"), out)
    assert "block 0 (" in str(err.value) and "--skip-partial" in str(err.value)
    assert not out.exists()
    with pytest.raises(RewriteError, match=r"all 4 BRA block\(s\) match only in part.*--allow-none"):
        rewrite_onnx(exported("soft"), out, skip_partial=True)
    assert not out.exists()


def test_pooled_kv_blocks_are_rewritten(exported, tmp_path: Path) -> None:
    """Pooled K/V (kv_downsample_mode='avgpool', ratio 2 in stages 1-2): the pooled maps are k and v.

    Issue 10 turned this former refusal ("keys are pooled per region") into a rewrite: the contract
    takes key/value maps of another size than the queries.
    """
    out = tmp_path / "pooled.plugin.onnx"
    report = rewrite_onnx(exported("pooled"), out)
    assert (report.found, report.replaced) == (4, 4)
    assert report.partial == []
    assert [b["kv_pooled"] for b in report.blocks] == [True, True, False, False]
    assert report.output_check is not None and report.output_check.passed
    model = onnx.load(str(out))
    assert _ops(model)[CONTRACT.op_type] == 4
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}

    def hw(name: str) -> tuple[int, int]:
        dims = inferred[name].type.tensor_type.shape.dim
        return dims[1].dim_value, dims[2].dim_value

    plugins = [n for n in model.graph.node if n.op_type == CONTRACT.op_type]
    # stage 1: 56x56 queries, keys pooled 2x2 -> 28x28; stage 3: 14x14 both
    assert [(hw(n.input[0]), hw(n.input[1])) for n in (plugins[0], plugins[2])] == [
        ((56, 56), (28, 28)),
        ((14, 14), (14, 14)),
    ]
    _assert_pair(exported("pooled"), out, (3, 3, 224, 224))


def test_graph_without_bra(exported, tmp_path: Path) -> None:
    source = exported("no_bra")
    out = tmp_path / "no_bra.plugin.onnx"
    with pytest.raises(RewriteError, match=r"found no BiFormer routed attention \(BRA\) block.*--allow-none"):
        rewrite_onnx(source, out)
    assert not out.exists()
    report = rewrite_onnx(source, out, allow_none=True)
    assert (report.found, report.replaced) == (0, 0)
    assert out.read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"", r"is empty \(0 bytes\)"),
        (b"\x12\x34 not a protobuf \xff\xfe" * 20, "is not a readable ONNX model"),
        ("truncated", "is not a readable ONNX model"),
    ],
)
def test_bad_input_files(exported, tmp_path: Path, content, message: str) -> None:
    source = tmp_path / "in.onnx"
    if content == "truncated":
        data = exported("small_ts").read_bytes()
        source.write_bytes(data[: len(data) // 2])
    elif content is not None:
        source.write_bytes(content)
    out = tmp_path / "out.onnx"
    with pytest.raises(RewriteError, match=message) as err:
        rewrite_onnx(source, out)
    assert str(source) in str(err.value)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name != "in.onnx"] == []


def test_check_rejects_a_block_that_computes_something_else(exported, tmp_path: Path) -> None:
    """A block that matches structurally but computes something else is reported, not replaced.

    In block 0 the key map's regions are transposed (h <-> w, both 8) before the gather: only layout
    ops, so the structure still matches, but keys no longer line up with values.
    """
    graph = gs.import_onnx(onnx.load(str(exported("small_ts"))))
    graph.toposort()
    split = next(n for n in graph.nodes if n.op == "Split" and len(n.outputs) == 3)
    reshape = next(n for n in split.outputs[1].outputs if n.op == "Reshape")  # k -> (N, S, h, S, w, C)
    swapped = gs.Variable("k_regions_swapped", dtype=np.float32)
    users = list(reshape.outputs[0].outputs)
    graph.nodes.append(
        gs.Node(
            "Transpose",
            "swap_h_w",
            attrs={"perm": [0, 1, 4, 3, 2, 5]},
            inputs=[reshape.outputs[0]],
            outputs=[swapped],
        )
    )
    for user in users:
        user.inputs[user.inputs.index(reshape.outputs[0])] = swapped
    graph.toposort()
    source = tmp_path / "odd.onnx"
    onnx.save(gs.export_onnx(graph), str(source))
    out = tmp_path / "odd.plugin.onnx"
    with pytest.raises(RewriteError, match=r"block 0 \(.*\): its structure matches, but on real activations"):
        rewrite_onnx(source, out)
    report = rewrite_onnx(source, out, skip_partial=True)
    assert (report.found, report.replaced) == (4, 3)
    _assert_pair(source, out, (1, 3, 224, 224))
