"""BRA as people deploy it: the official NCHW module, pooled K/V, NCHW wrappers, a detector, a U-Net.

The models (:mod:`tests.rewrite.nchw_models`) compute BRA op for op as the official modules do; each
is exported with the torchscript exporter, simplified with onnxslim (Ultralytics' export) and (slow)
exported with the dynamo exporter, rewritten with the full checks, and run with ``cpu_session``
against the original in onnxruntime and against PyTorch at its real input size.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

import edge_biformer
from edge_biformer.ops.bra import CONTRACT
from edge_biformer.rewrite import RewriteError, Rewriter, load_onnx, rewrite_onnx
from edge_biformer.rewrite.checks import DISCRIMINATION
from edge_biformer.testing import assert_close
from tests.rewrite import nchw_models as M


class TransposedProjectionBRA(M.NchwBRA):
    """The NCHW module with its qkv projection computed channels-last (a Linear between permutes).

    The q/k/v ``chunk`` on axis 1 of the NCHW tensor then cuts channels that are the last axis of
    the projection's output: the matcher must follow the channel axis through the Transpose.
    """

    def __init__(self, dim: int, **kw: int) -> None:
        super().__init__(dim, **kw)
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x: Tensor) -> Tensor:
        _, _, height, width = x.size()
        region = (height // self.n_win, width // self.n_win)
        qkv = self.qkv(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        q, k, v = qkv.chunk(3, dim=1)
        q_means = torch.nn.functional.avg_pool2d(
            q, kernel_size=region, ceil_mode=True, count_include_pad=False
        )
        k_means = torch.nn.functional.avg_pool2d(
            k, kernel_size=region, ceil_mode=True, count_include_pad=False
        )
        adjacency = q_means.permute(0, 2, 3, 1).flatten(1, 2) @ k_means.flatten(2, 3)
        _, index = torch.topk(adjacency, k=self.topk, dim=-1)
        graph = index.unsqueeze_(1).expand(-1, self.num_heads, -1, -1)
        out = M.routed_attention_nchw(q, k, v, self.scale, graph, region)
        return self.output_linear(out + self.lepe(v))


class HalfSizeKeysBRA(M.NchwBRA):
    """Keys and values on a map of half the queries' size (rrsda's ``kv_region_size``): Hk != Hq.

    The form of deformable and agent-query variants (DeBiFormer): same region grid, other region
    sizes for queries and keys.
    """

    def forward(self, x: Tensor) -> Tensor:
        _, _, height, width = x.size()
        region = (height // self.n_win, width // self.n_win)
        kv_region = (region[0] // 2, region[1] // 2)
        q, k, v = self.qkv_linear(x).chunk(3, dim=1)
        k, v = torch.nn.functional.avg_pool2d(k, 2), torch.nn.functional.avg_pool2d(v, 2)
        q_means = torch.nn.functional.avg_pool2d(q, kernel_size=region, ceil_mode=True)
        k_means = torch.nn.functional.avg_pool2d(k, kernel_size=kv_region, ceil_mode=True)
        _, index = torch.topk(q_means.permute(0, 2, 3, 1).flatten(1, 2) @ k_means.flatten(2, 3), k=self.topk)
        graph = index.unsqueeze_(1).expand(-1, self.num_heads, -1, -1)
        batch, heads = q.shape[0], self.num_heads
        q_seq, grid_h, grid_w = M._regions_of(q, *region, heads)
        k_seq = M._regions_of(k, *kv_region, heads)[0]
        v_seq = M._regions_of(v, *kv_region, heads)[0]
        _, _, kv_regions, tokens, d = k_seq.shape
        q_regions = q_seq.size(2)
        index = graph.view(batch, heads, q_regions, self.topk, 1, 1).expand(-1, -1, -1, -1, tokens, d)
        k_all = k_seq.view(batch, heads, 1, kv_regions, tokens, d).expand(-1, -1, q_regions, -1, -1, -1)
        v_all = v_seq.view(batch, heads, 1, kv_regions, tokens, d).expand(-1, -1, q_regions, -1, -1, -1)
        k_sel, v_sel = torch.gather(k_all, 3, index), torch.gather(v_all, 3, index)
        logits = (q_seq * self.scale) @ k_sel.flatten(-3, -2).transpose(-1, -2)
        out = torch.softmax(logits, dim=-1) @ v_sel.flatten(-3, -2)
        return self.output_linear(M._map_of(out, grid_h, grid_w, *region))


def _legacy(mode: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        return M.LegacyBRA(
            64, num_heads=2, n_win=7, topk=4, kv_downsample_mode=mode, kv_per_win=2, kv_downsample_ratio=2
        )

    return make


#: name -> (model factory, input shape, n_win per plugin node, pooled K/V per plugin node)
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], list[int], list[bool]]] = {
    # 20x20 map, n_win=7: regions of 20 // 7 = 2x2 tokens, a 10x10 region grid
    "nchw_20": (lambda: M.NchwBRA(64, num_heads=2, n_win=7, topk=4), (1, 64, 20, 20), [10], [False]),
    "nchw_28": (lambda: M.NchwBRA(64, num_heads=4, n_win=7, topk=4), (2, 64, 28, 28), [7], [False]),
    # 22x22, n_win=7: 3x3-token regions, q/k/v zero-padded to 24x24 (an 8x8 grid) inside the module
    "nchw_pad": (lambda: M.NchwBRA(64, num_heads=2, n_win=7, topk=4), (1, 64, 22, 22), [8], [False]),
    "nchw_linear_qkv": (
        lambda: TransposedProjectionBRA(64, num_heads=2, n_win=7, topk=4),
        (1, 64, 28, 28),
        [7],
        [False],
    ),
    # 28x28 queries in 4x4-token regions, 14x14 keys/values in 2x2-token regions
    "nchw_half_kv": (lambda: HalfSizeKeysBRA(64, num_heads=2, n_win=7, topk=4), (1, 64, 28, 28), [7], [True]),
    "ada_avgpool": (_legacy("ada_avgpool"), (1, 28, 28, 64), [7], [True]),
    "ada_maxpool": (_legacy("ada_maxpool"), (1, 28, 28, 64), [7], [True]),
    "maxpool": (_legacy("maxpool"), (1, 28, 28, 64), [7], [True]),
    "avgpool": (_legacy("avgpool"), (1, 28, 28, 64), [7], [True]),
    # YOLO-like detector, 320x320 -> P5 20x20: C2BRA (the NCHW module, 10x10 grid of 2x2 regions)
    "det_c2bra": (
        lambda: M.TinyDetector("c2bra", width=64, num_heads=2, n_win=7, topk=4),
        (1, 3, 320, 320),
        [10],
        [False],
    ),
    # ... the official Block with pooled K/V (ada_avgpool, kv_per_win=2) as YOLO forks' BiFormerBlock
    "det_biformer_block": (
        lambda: M.TinyDetector("biformer_block", width=64, num_heads=2, n_win=5, topk=4, kv_per_win=2),
        (1, 3, 320, 320),
        [5],
        [True],
    ),
    # ... the legacy module between NCHW permutes, auto_pad (20 -> 21)
    "det_legacy": (
        lambda: M.TinyDetector("legacy", width=64, num_heads=2, n_win=7, topk=4, auto_pad=True),
        (1, 3, 320, 320),
        [7],
        [False],
    ),
    "unet": (lambda: M.TinyUNet(), (1, 3, 224, 224), [7] * 5, [False] * 5),
}

FAST_SLIM = {"nchw_20", "ada_avgpool", "det_c2bra", "det_biformer_block"}
#: kv_region (tokens per key/value region) per case where it differs from the query regions
KV_REGIONS = {"nchw_half_kv": [[2, 2]], "ada_avgpool": [[2, 2]], "det_biformer_block": [[2, 2]]}


def _params() -> list:
    params = []
    for name in CASES:
        for exporter in ("torchscript", "slim", "dynamo"):
            slow = exporter == "dynamo" or name == "unet" or (exporter == "slim" and name not in FAST_SLIM)
            params.append(pytest.param(name, exporter, marks=[pytest.mark.slow] if slow else []))
    return params


def _model(name: str) -> tuple[nn.Module, Tensor]:
    factory, shape, _, _ = CASES[name]
    torch.manual_seed(0)
    model = M.sharpen(factory()).eval()
    return model, torch.randn(shape, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    directory = tmp_path_factory.mktemp("nchw_exports")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, exporter: str) -> Path:
        if (name, exporter) not in cache:
            model, x = _model(name)
            path = directory / f"{name}.{exporter}.onnx"
            M.export(
                model,
                x,
                str(path),
                "torchscript" if exporter == "slim" else exporter,
                slim=exporter == "slim",
            )
            cache[name, exporter] = path
        return cache[name, exporter]

    return get


def _plugins(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if CONTRACT.is_node(n)]


@pytest.mark.parametrize(("name", "exporter"), _params())
def test_rewrite_deployed_forms(exported, tmp_path: Path, name: str, exporter: str) -> None:
    _, _, n_wins, pooled = CASES[name]
    source = exported(name, exporter)
    out = tmp_path / f"{name}.plugin.onnx"
    report = rewrite_onnx(source, out)
    model, x = _model(name)
    assert (report.found, report.replaced) == (len(M.bra_modules(model)),) * 2 == (len(n_wins),) * 2
    rewritten = onnx.load(str(out))
    plugins = _plugins(rewritten)
    assert len(plugins) == len(n_wins)
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in plugins]
    assert [a["n_win"] for a in attrs] == n_wins  # the geometry the graph computes
    assert [b["kv_pooled"] for b in report.blocks] == pooled
    if name in KV_REGIONS:
        assert [b["kv_region"] for b in report.blocks] == KV_REGIONS[name]
    assert not any(n.op_type in ("GatherElements", "Einsum") for n in rewritten.graph.node)
    # The checks could fail: with random q/k/v a wrong pairing of keys and values is far off.
    for check in report.block_checks:
        assert check.passed and check.exercised is not None
        assert check.exercised.wrong_pairing > DISCRIMINATION * check.exercised.tolerance
    assert all(b["check"]["with_random_qkv"]["max_rel_diff"] <= 1e-4 for b in report.blocks)
    assert report.output_check is not None and report.output_check.passed
    assert report.output_check.exercised is not None and report.output_check.exercised.passed
    verification = report.output_check.to_dict()  # per output and per attention output
    assert set(verification["with_random_qkv"]["outputs"]) == set(verification["outputs"])
    assert {b["o"] for b in report.blocks} <= set(verification["outputs"])
    # cpu_session on the rewritten graph == the original in onnxruntime == PyTorch, at the real size
    feeds = {rewritten.graph.input[0].name: x.numpy()}
    expected = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = edge_biformer.cpu_session(out).run(None, feeds)
    with torch.no_grad():
        ref = model(x)
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert len(got) == len(expected) == len(ref)
    for g, e, r in zip(got, expected, ref, strict=True):
        assert_close(g, e, max_rel=1e-4, msg=f"{name} ({exporter}) vs onnxruntime")
        assert_close(g, r.numpy(), max_rel=1e-4, msg=f"{name} ({exporter}) vs PyTorch")


def test_attention_matters_in_the_standalone_modules(exported) -> None:
    """Sharpened weights: on real activations the attention depends on which value each key meets."""
    for name in ("nchw_20", "ada_avgpool"):
        rewriter = Rewriter(load_onnx(exported(name, "torchscript")))
        rewriter.find()
        (check,) = rewriter.check()
        assert check.passed and check.wrong_pairing > 0.1 and not check.inconclusive


def _roll_plugin_values(model: onnx.ModelProto) -> None:
    """Pair every key with the value of its right neighbour at the first plugin node (a wrong rewrite)."""
    node = _plugins(model)[0]
    v = node.input[2]
    const = [
        onnx.helper.make_tensor(f"wrong/{k}", onnx.TensorProto.INT64, [1], [val])
        for k, val in (("one", 1), ("end", 2**62), ("zero", 0), ("axis", 2))
    ]
    model.graph.initializer.extend(const)
    nodes = [
        onnx.helper.make_node("Slice", [v, "wrong/one", "wrong/end", "wrong/axis"], ["wrong/tail"]),
        onnx.helper.make_node("Slice", [v, "wrong/zero", "wrong/one", "wrong/axis"], ["wrong/head"]),
        onnx.helper.make_node("Concat", ["wrong/tail", "wrong/head"], ["wrong/v"], axis=2),
    ]
    position = list(model.graph.node).index(node)
    for offset, extra in enumerate(nodes):
        model.graph.node.insert(position + offset, extra)
    node.input[2] = "wrong/v"


def test_a_wrong_rewrite_of_a_detector_fails_the_graph_check(exported) -> None:
    """On the detector the real inputs hardly exercise the C2BRA attention (flat P5 maps after SPPF);
    the check with random q/k/v and the in-place attention outputs still catch a wrong pairing."""
    rewriter = Rewriter(load_onnx(exported("det_c2bra", "torchscript")))
    rewriter.find()
    (check,) = rewriter.check()
    assert check.passed and check.exercised is not None
    assert check.exercised.wrong_pairing > DISCRIMINATION * check.exercised.tolerance
    rewritten = rewriter.apply()
    _roll_plugin_values(rewritten)
    with pytest.raises(RewriteError, match="outputs differ from the original's") as err:
        rewriter.verify_outputs()
    assert "with random q/k/v: block 0 (" in str(err.value)
    assert rewriter.output_check is not None and not rewriter.output_check.passed
    exercised = rewriter.output_check.exercised
    assert exercised is not None and not exercised.passed
    attention = rewriter.matches[0].output.name
    assert exercised.outputs[attention]["max_rel_diff"] > 0.1
    outputs = [o.name for o in rewritten.graph.output]
    assert max(exercised.outputs[name]["max_rel_diff"] for name in outputs) > 1e-2


def _swapped_key_tokens(
    q: Tensor, k: Tensor, v: Tensor, scale: float, graph: Tensor, region: tuple[int, int]
) -> Tensor:
    """:func:`routed_attention_nchw` with the tokens of each key region transposed (rows <-> cols):
    only layout ops, so the structure matches, but keys no longer meet their own values."""
    batch, heads, q_regions, topk = graph.shape
    rows, cols = region
    q_seq, grid_h, grid_w = M._regions_of(q, rows, cols, heads)
    b, c, height, width = k.shape
    k_seq = k.view(b, heads, c // heads, height // rows, rows, width // cols, cols)
    k_seq = torch.einsum("bmdhpwq->bmhwqpd", k_seq).flatten(2, 3).flatten(-3, -2)
    v_seq = M._regions_of(v, rows, cols, heads)[0]
    _, _, kv_regions, tokens, head_dim = k_seq.shape
    index = graph.view(batch, heads, q_regions, topk, 1, 1).expand(-1, -1, -1, -1, tokens, head_dim)
    k_all = k_seq.view(batch, heads, 1, kv_regions, tokens, head_dim).expand(-1, -1, q_regions, -1, -1, -1)
    v_all = v_seq.view(batch, heads, 1, kv_regions, tokens, head_dim).expand(-1, -1, q_regions, -1, -1, -1)
    k_sel = torch.gather(k_all, dim=3, index=index)
    v_sel = torch.gather(v_all, dim=3, index=index)
    logits = (q_seq * scale) @ k_sel.flatten(-3, -2).transpose(-1, -2)
    out = torch.softmax(logits, dim=-1) @ v_sel.flatten(-3, -2)
    return M._map_of(out, grid_h, grid_w, rows, cols)


def test_a_block_that_computes_something_else_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Keys paired with the wrong values inside the original module: the block check refuses it."""
    monkeypatch.setattr(M, "routed_attention_nchw", _swapped_key_tokens)
    torch.manual_seed(0)
    model = M.sharpen(M.NchwBRA(64, num_heads=2, n_win=7, topk=4)).eval()
    source = tmp_path / "swapped.onnx"
    M.export(model, torch.randn(1, 64, 28, 28), str(source), "torchscript")
    with pytest.raises(RewriteError, match=r"block 0 \(.*\): its structure matches, but on real activations"):
        rewrite_onnx(source, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_non_square_region_grid_is_refused(tmp_path: Path) -> None:
    """20x30 with n_win=7: 2x4-token regions, a 10x8 grid (30 padded to 32); the op needs S x S regions."""
    torch.manual_seed(0)
    model = M.NchwBRA(64, num_heads=2, n_win=7, topk=4).eval()
    source = tmp_path / "wide.onnx"
    M.export(model, torch.randn(1, 64, 20, 30), str(source), "torchscript")
    with pytest.raises(
        RewriteError, match=r"block 0 \(.*\): the routing logits .* have 80 regions, not a square"
    ):
        rewrite_onnx(source, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.slow
def test_biformer_block_defaults_at_a_p5_map(tmp_path: Path) -> None:
    """The official Block's defaults at a 20x20 map (n_win=7, auto_pad, kv_per_win=4): 3x3 regions
    pooled *up* to 4x4 tokens. Only the dynamo exporter exports that adaptive pooling (as sums divided
    by per-bin counts, no pooling op); the pooled table is still read as the op's k/v."""
    torch.manual_seed(0)
    model = M.TinyDetector(
        "biformer_block", width=64, num_heads=2, n_win=7, topk=4, kv_per_win=4, auto_pad=True
    )
    model = M.sharpen(model).eval()
    x = torch.randn(1, 3, 320, 320, generator=torch.Generator().manual_seed(1))
    source = tmp_path / "block_defaults.onnx"
    M.export(model, x, str(source), "dynamo")
    out = tmp_path / "block_defaults.plugin.onnx"
    report = rewrite_onnx(source, out)
    assert report.replaced == 1
    assert [(b["n_win"], b["q_region"], b["kv_region"]) for b in report.blocks] == [(7, [3, 3], [4, 4])]
    got = edge_biformer.cpu_session(out).run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    for g, r in zip(got, ref, strict=True):
        assert_close(g, r.numpy(), max_rel=1e-4, msg="Block defaults (dynamo) vs PyTorch")
