"""Engine-level tests of the BiLevelRoutingAttention plugin: one-node TensorRT networks built with the
plugin, run on the GPU and compared with a float64 PyTorch evaluation of the op contract
(``plugins/bra/README.md``), for float32/float16, several shapes (``Hq != Hk``, ``Cqk != Cv``, dynamic
N/H/W), a serialize/deserialize round trip, the ONNX parser path and both registration paths.

They need the TensorRT Python package, a CUDA GPU with a CUDA build of PyTorch, and the built library
(``scripts/build_plugins.sh``, or ``EDGE_BIFORMER_PLUGIN_LIB``); each test says which is missing when it
skips. The float64 reference itself is checked on the CPU everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
CONTRACT = json.loads((REPO / "plugins" / "bra" / "BiLevelRoutingAttention.json").read_text())


# ------------------------------------------------------------------------------------------------
# The op, evaluated in float64 (the contract's Semantics section).


def bra_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r_idx: torch.Tensor,
    n_win: int,
    num_heads: int,
    scale: float,
) -> torch.Tensor:
    """o = BiLevelRoutingAttention(q, k, v, r_idx) in float64: the package's reference of the op."""
    from edge_biformer.kernels.reference import routed_attention_reference

    assert r_idx.shape[1] == n_win * n_win
    return routed_attention_reference(q, k, v, r_idx, num_heads=num_heads, scale=scale)


def _naive_reference(q, k, v, r_idx, n_win, num_heads, scale):
    """Token-by-token loops over the contract's wording, for checking the package reference on tiny inputs."""
    n, hq_full, wq_full, c_qk = q.shape
    _, hk_full, wk_full, c_v = v.shape
    s = n_win
    hq, wq, hk, wk = hq_full // s, wq_full // s, hk_full // s, wk_full // s
    dqk, dv = c_qk // num_heads, c_v // num_heads
    out = torch.zeros(n, hq_full, wq_full, c_v, dtype=torch.float64)
    for b in range(n):
        for r in range(s * s):
            j, i = divmod(r, s)
            for mh in range(num_heads):
                keys, values = [], []
                for t in range(r_idx.shape[2]):
                    jk, ik = divmod(int(r_idx[b, r, t]), s)
                    for y in range(jk * hk, (jk + 1) * hk):
                        for x in range(ik * wk, (ik + 1) * wk):
                            keys.append(k[b, y, x, mh * dqk : (mh + 1) * dqk].double())
                            values.append(v[b, y, x, mh * dv : (mh + 1) * dv].double())
                kmat, vmat = torch.stack(keys), torch.stack(values)
                for y in range(j * hq, (j + 1) * hq):
                    for x in range(i * wq, (i + 1) * wq):
                        logits = scale * (kmat @ q[b, y, x, mh * dqk : (mh + 1) * dqk].double())
                        out[b, y, x, mh * dv : (mh + 1) * dv] = torch.softmax(logits, 0) @ vmat
    return out


def _inputs(shape: dict, dtype: torch.dtype, device: str = "cpu", seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n, s, topk = shape["n"], shape["n_win"], shape["topk"]
    q = torch.randn(n, shape["hq"], shape["wq"], shape["c_qk"], generator=gen)
    k = torch.randn(n, shape["hk"], shape["wk"], shape["c_qk"], generator=gen)
    v = torch.randn(n, shape["hk"], shape["wk"], shape["c_v"], generator=gen)
    # Distinct regions per row like TopK, plus one row with a repeated index (allowed by the contract).
    r_idx = torch.stack([torch.randperm(s * s, generator=gen)[:topk] for _ in range(n * s * s)]).reshape(
        n, s * s, topk
    )
    if topk > 1:
        r_idx[0, 0, 1] = r_idx[0, 0, 0]
    to = {"device": device}
    return q.to(dtype=dtype, **to), k.to(dtype=dtype, **to), v.to(dtype=dtype, **to), r_idx.int().to(**to)


TINY = {"n": 2, "hq": 4, "wq": 6, "hk": 6, "wk": 4, "c_qk": 6, "c_v": 4, "n_win": 2, "heads": 2, "topk": 3}


def test_reference_matches_the_contract_wording():
    q, k, v, r_idx = _inputs(TINY, torch.float64)
    scale = 0.3
    expected = _naive_reference(q, k, v, r_idx, TINY["n_win"], TINY["heads"], scale)
    got = bra_reference(q, k, v, r_idx, TINY["n_win"], TINY["heads"], scale)
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------------
# TensorRT


@pytest.fixture(scope="module")
def trt():
    trt = pytest.importorskip(
        "tensorrt",
        reason="the TensorRT Python package is not installed: engine-level plugin tests need TensorRT",
    )
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch (a CUDA build of torch provides the device buffers)")
    return trt


@pytest.fixture(scope="module")
def loaded_plugin(trt):
    from edge_biformer import plugins

    plugins.load()
    return plugins


@pytest.fixture(scope="module")
def logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def _network_flags(trt) -> int:
    major = int(trt.__version__.split(".")[0])
    # TensorRT 11 networks are always strongly typed (the flag is deprecated there).
    return 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _create_plugin(trt, loaded_plugin, shape: dict, scale: float):
    import numpy as np

    creator = loaded_plugin.find_creator(trt.get_plugin_registry())
    assert creator is not None
    fields = trt.PluginFieldCollection(
        [
            trt.PluginField("n_win", np.array([shape["n_win"]], np.int32), trt.PluginFieldType.INT32),
            trt.PluginField("num_heads", np.array([shape["heads"]], np.int32), trt.PluginFieldType.INT32),
            trt.PluginField("topk", np.array([shape["topk"]], np.int32), trt.PluginFieldType.INT32),
            trt.PluginField("scale", np.array([scale], np.float32), trt.PluginFieldType.FLOAT32),
        ]
    )
    plugin = creator.create_plugin("bra", fields, trt.TensorRTPhase.BUILD)
    assert plugin is not None
    return plugin


def _build(trt, logger, loaded_plugin, shape: dict, dtype: torch.dtype, scale: float, profiles: list[dict]):
    """One-node network: q, k, v, r_idx -> BiLevelRoutingAttention -> o; dynamic N, H, W."""
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    t = trt.float16 if dtype == torch.float16 else trt.float32
    s2, topk = shape["n_win"] ** 2, shape["topk"]
    q = network.add_input("q", t, (-1, -1, -1, shape["c_qk"]))
    k = network.add_input("k", t, (-1, -1, -1, shape["c_qk"]))
    v = network.add_input("v", t, (-1, -1, -1, shape["c_v"]))
    r = network.add_input("r_idx", trt.int32, (-1, s2, topk))
    layer = network.add_plugin_v3([q, k, v, r], [], _create_plugin(trt, loaded_plugin, shape, scale))
    layer.get_output(0).name = "o"
    network.mark_output(layer.get_output(0))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()

    def dims(p):
        return {
            "q": (p["n"], p["hq"], p["wq"], shape["c_qk"]),
            "k": (p["n"], p["hk"], p["wk"], shape["c_qk"]),
            "v": (p["n"], p["hk"], p["wk"], shape["c_v"]),
            "r_idx": (p["n"], s2, topk),
        }

    lo, hi = dims(profiles[0]), dims(profiles[-1])
    opt = dims(profiles[len(profiles) // 2])
    for name in ("q", "k", "v", "r_idx"):
        profile.set_shape(name, lo[name], opt[name], hi[name])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    return plan


def _run(trt, engine, q, k, v, r_idx) -> torch.Tensor:
    context = engine.create_execution_context()
    assert context is not None
    out_dtype = q.dtype
    o = torch.empty(*q.shape[:3], v.shape[3], dtype=out_dtype, device=q.device)
    for name, tensor in (("q", q), ("k", k), ("v", v), ("r_idx", r_idx)):
        assert context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    context.set_tensor_address("o", o.data_ptr())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the inputs were written on the current stream
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return o


def _check(o: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype):
    err = (o.double().cpu() - ref).abs().max().item()
    if dtype == torch.float32:
        assert err <= 1e-4, f"float32 max abs error {err}"
    else:
        bound = 2e-3 * ref.abs().max().item()
        assert err <= bound, f"float16 max abs error {err} > {bound}"


SHAPES = {
    # BiFormer-S stage 2 at 224: 14x14 map, S=7, 2x2 regions, head dim 32.
    "stage2": {"n_win": 7, "heads": 4, "topk": 4, "c_qk": 128, "c_v": 128, "sizes": [(1, 14, 14, 14, 14)]},
    # Hq != Hk, Wq != Wk, Cqk != Cv (DeBiFormer-style agent queries), head dims 16/8.
    "agents": {"n_win": 7, "heads": 2, "topk": 8, "c_qk": 32, "c_v": 16, "sizes": [(2, 7, 14, 28, 21)]},
    # Stage 0 style: 64-token regions, dynamic batch and size inside one profile.
    "dynamic": {
        "n_win": 4,
        "heads": 2,
        "topk": 3,
        "c_qk": 64,
        "c_v": 64,
        "sizes": [(1, 16, 16, 16, 16), (3, 32, 32, 32, 32)],
    },
}


def _shape(spec: dict, size: tuple) -> dict:
    n, hq, wq, hk, wk = size
    return {
        **{k: spec[k] for k in ("n_win", "heads", "topk", "c_qk", "c_v")},
        "n": n,
        "hq": hq,
        "wq": wq,
        "hk": hk,
        "wk": wk,
    }


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", sorted(SHAPES))
def test_engine_matches_reference(trt, logger, loaded_plugin, case, dtype):
    spec = SHAPES[case]
    shapes = [_shape(spec, size) for size in spec["sizes"]]
    scale = spec["c_qk"] ** -0.5
    plan = _build(trt, logger, loaded_plugin, shapes[0], dtype, scale, shapes)
    assert plan is not None, "engine build failed (see the TensorRT log)"
    runtime = trt.Runtime(logger)  # kept alive as long as its engine
    engine = runtime.deserialize_cuda_engine(plan)
    for i, shape in enumerate(shapes):
        q, k, v, r_idx = _inputs(shape, dtype, device="cuda", seed=i)
        o = _run(trt, engine, q, k, v, r_idx)
        ref = bra_reference(q.cpu(), k.cpu(), v.cpu(), r_idx.cpu(), shape["n_win"], shape["heads"], scale)
        _check(o, ref, dtype)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_serialize_deserialize_round_trip(trt, logger, loaded_plugin, tmp_path):
    shape = _shape(SHAPES["agents"], SHAPES["agents"]["sizes"][0])
    scale = 0.1767767
    plan = _build(trt, logger, loaded_plugin, shape, torch.float16, scale, [shape])
    path = tmp_path / "bra.engine"
    path.write_bytes(bytes(plan))
    runtimes = [trt.Runtime(logger), trt.Runtime(logger)]
    first = runtimes[0].deserialize_cuda_engine(plan)
    second = runtimes[1].deserialize_cuda_engine(path.read_bytes())
    assert second is not None
    q, k, v, r_idx = _inputs(shape, torch.float16, device="cuda", seed=3)
    a = _run(trt, first, q, k, v, r_idx)
    b = _run(trt, second, q, k, v, r_idx)
    assert torch.equal(a, b), "a deserialized engine must compute exactly what the original computes"
    _check(
        b,
        bra_reference(q.cpu(), k.cpu(), v.cpu(), r_idx.cpu(), shape["n_win"], shape["heads"], scale),
        torch.float16,
    )


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_rejects_shapes_outside_the_contract(trt, loaded_plugin, capfd):
    class Capture(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            self.messages.append(msg)

    capture = Capture()
    shape = _shape(SHAPES["stage2"], (1, 15, 14, 14, 14))  # Hq = 15 is not a multiple of n_win = 7
    plan = _build(trt, capture, loaded_plugin, shape, torch.float32, 0.1, [shape])
    assert plan is None
    # The plugin logs through the logger TensorRT gives it, else TensorRT's process logger or stderr.
    out, err = capfd.readouterr()
    logged = "\n".join(capture.messages) + out + err
    assert "must be multiples of n_win = 7" in logged, logged


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_onnx_node_is_parsed_into_the_plugin(trt, logger, loaded_plugin, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    shape = _shape(SHAPES["stage2"], SHAPES["stage2"]["sizes"][0])
    scale = 128**-0.5
    s2 = shape["n_win"] ** 2
    node = helper.make_node(
        CONTRACT["onnx"]["op_type"],
        ["q", "k", "v", "r_idx"],
        ["o"],
        domain=CONTRACT["onnx"]["domain"],
        plugin_version=CONTRACT["version"],
        plugin_namespace=CONTRACT["namespace"],
        n_win=shape["n_win"],
        num_heads=shape["heads"],
        topk=shape["topk"],
        scale=scale,
    )
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "bra",
        [
            helper.make_tensor_value_info("q", f32, ["N", "H", "W", shape["c_qk"]]),
            helper.make_tensor_value_info("k", f32, ["N", "Hk", "Wk", shape["c_qk"]]),
            helper.make_tensor_value_info("v", f32, ["N", "Hk", "Wk", shape["c_v"]]),
            helper.make_tensor_value_info("r_idx", TensorProto.INT32, ["N", s2, shape["topk"]]),
        ],
        [helper.make_tensor_value_info("o", f32, ["N", "H", "W", shape["c_v"]])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(CONTRACT["onnx"]["domain"], 1)],
    )
    model.ir_version = 8  # opset 17 needs IR >= 8; the parsers of TensorRT 10.0+ accept it
    onnx.save(model, tmp_path / "bra.onnx")  # kept for inspection when the test fails
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(model.SerializeToString())
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    dims = {
        "q": (1, 14, 14, shape["c_qk"]),
        "k": (1, 14, 14, shape["c_qk"]),
        "v": (1, 14, 14, shape["c_v"]),
        "r_idx": (1, s2, shape["topk"]),
    }
    for name, d in dims.items():
        profile.set_shape(name, d, d, d)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    q, k, v, r_idx = _inputs(shape, torch.float32, device="cuda", seed=5)
    o = _run(trt, engine, q, k, v, r_idx)
    _check(
        o,
        bra_reference(q.cpu(), k.cpu(), v.cpu(), r_idx.cpu(), shape["n_win"], shape["heads"], scale),
        torch.float32,
    )


_REGISTRATION_SCRIPT = textwrap.dedent(
    """
    import ctypes, sys
    import tensorrt as trt
    from edge_biformer import plugins
    path = str(plugins.library_path())
    registry = trt.get_plugin_registry()
    mode = sys.argv[1]
    if mode in ("ctypes", "both"):
        ctypes.CDLL(path)
    if mode in ("load_library", "both"):
        handle = registry.load_library(path)
        assert handle is not None, "load_library failed"
    key = ("BiLevelRoutingAttention", "1", "edge_biformer")
    matches = [c for c in registry.all_creators if (c.name, c.plugin_version, c.plugin_namespace) == key]
    print("CREATORS", len(matches))
    """
)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["ctypes", "load_library", "both"])
def test_registration_paths_register_once(trt, loaded_plugin, mode):
    proc = subprocess.run(
        [sys.executable, "-c", _REGISTRATION_SCRIPT, mode],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "CREATORS 1" in proc.stdout, proc.stdout + proc.stderr


def test_tolerances_follow_the_contract():
    """The engine tests use the contract's tolerances; keep them in sync with the README."""
    readme = (REPO / "plugins" / "bra" / "README.md").read_text()
    assert "max abs error <= 1e-4" in readme and "<= 2e-3 relative to `max|o|`" in readme
