"""Engine-level tests of the BiLevelRoutingAttention plugin: one-node TensorRT networks built with the
plugin, run on the GPU and judged against a float64 evaluation of the op with the contract's
tolerances, for float32/float16 with dynamic N/H/W inside one profile (``Hq != Hk``, ``Cqk != Cv``),
a serialize/deserialize round trip, build-time refusal of bad shapes, the ONNX parser path and
both registration paths. (Every case of the contract's table also runs on TensorRT in
``tests/ops/test_bra_op.py``.)

They need the TensorRT Python package, a CUDA GPU with a CUDA build of PyTorch, and the built library
(``scripts/build_plugins.sh``, or ``EDGE_BIFORMER_PLUGIN_LIB``); each test says which is missing when it
skips.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edge_biformer.ops.bra import CONTRACT
from edge_biformer.testing import assert_close
from tests.bra_cases import make_inputs, one_node_graph, reference64
from tests.plugins.trt_engine import build_one_node, network_flags, require_tensorrt, run_engine

REPO = Path(__file__).resolve().parents[2]


def _case(spec: dict, size: tuple) -> dict:
    n, hq, wq, hk, wk = size
    case = {k: spec[k] for k in ("n_win", "num_heads", "topk", "c_qk", "c_v")}
    return {
        **case,
        "n": n,
        "hq": hq,
        "wq": wq,
        "hk": hk,
        "wk": wk,
        "scale": spec["c_qk"] ** -0.5,
        "pattern": "perm_repeat",
    }


SHAPES = {
    # BiFormer-S stage 2 at 224: 14x14 map, S=7, 2x2 regions, head dim 32.
    "stage2": {
        "n_win": 7,
        "num_heads": 4,
        "topk": 4,
        "c_qk": 128,
        "c_v": 128,
        "sizes": [(1, 14, 14, 14, 14)],
    },
    # Hq != Hk, Wq != Wk, Cqk != Cv (DeBiFormer-style agent queries), head dims 16/8.
    "agents": {"n_win": 7, "num_heads": 2, "topk": 8, "c_qk": 32, "c_v": 16, "sizes": [(2, 7, 14, 28, 21)]},
    # Stage 0 style: 64-token regions, dynamic batch and size inside one profile.
    "dynamic": {
        "n_win": 4,
        "num_heads": 2,
        "topk": 3,
        "c_qk": 64,
        "c_v": 64,
        "sizes": [(1, 16, 16, 16, 16), (3, 32, 32, 32, 32)],
    },
}


def _check(o: torch.Tensor, q, k, v, r_idx, case: dict) -> None:
    assert_close(o, reference64(q, k, v, r_idx, case), CONTRACT.tolerance(o.dtype))


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_engine_matches_reference(name, dtype):
    trt = require_tensorrt()
    from tests.plugins.trt_engine import logger

    spec = SHAPES[name]
    cases = [_case(spec, size) for size in spec["sizes"]]
    plan = build_one_node(trt, logger(), cases[0], dtype, cases)
    assert plan is not None, "engine build failed (see the TensorRT log)"
    runtime = trt.Runtime(logger())  # kept alive as long as its engine
    engine = runtime.deserialize_cuda_engine(plan)
    for i, case in enumerate(cases):
        q, k, v, r_idx = make_inputs(case, dtype, seed=i, device="cuda")
        _check(run_engine(engine, q, k, v, r_idx), q, k, v, r_idx, case)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_serialize_deserialize_round_trip(tmp_path):
    trt = require_tensorrt()
    from tests.plugins.trt_engine import logger

    case = {**_case(SHAPES["agents"], SHAPES["agents"]["sizes"][0]), "scale": 0.1767767}
    plan = build_one_node(trt, logger(), case, torch.float16, [case])
    path = tmp_path / "bra.engine"
    path.write_bytes(bytes(plan))
    runtimes = [trt.Runtime(logger()), trt.Runtime(logger())]
    first = runtimes[0].deserialize_cuda_engine(plan)
    second = runtimes[1].deserialize_cuda_engine(path.read_bytes())
    assert second is not None
    q, k, v, r_idx = make_inputs(case, torch.float16, seed=3, device="cuda")
    a = run_engine(first, q, k, v, r_idx)
    b = run_engine(second, q, k, v, r_idx)
    assert torch.equal(a, b), "a deserialized engine must compute exactly what the original computes"
    _check(b, q, k, v, r_idx, case)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_rejects_shapes_outside_the_contract(capfd):
    trt = require_tensorrt()

    class Capture(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            self.messages.append(msg)

    capture = Capture()
    case = {**_case(SHAPES["stage2"], (1, 15, 14, 14, 14)), "scale": 0.1}  # Hq = 15 is not a multiple of 7
    plan = build_one_node(trt, capture, case, torch.float32, [case])
    assert plan is None
    # The plugin logs through the logger TensorRT gives it, else TensorRT's process logger or stderr.
    out, err = capfd.readouterr()
    logged = "\n".join(capture.messages) + out + err
    assert "must be multiples of n_win = 7" in logged, logged


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_onnx_node_is_parsed_into_the_plugin(tmp_path):
    import onnx

    trt = require_tensorrt()
    from tests.plugins.trt_engine import logger

    case = {**_case(SHAPES["stage2"], SHAPES["stage2"]["sizes"][0]), "scale": 128**-0.5}
    model = one_node_graph(case, "float32")
    onnx.save(model, tmp_path / "bra.onnx")  # kept for inspection when the test fails
    builder = trt.Builder(logger())
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger())
    ok = parser.parse(model.SerializeToString())
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    s2 = case["n_win"] ** 2
    dims = {
        "q": (1, 14, 14, case["c_qk"]),
        "k": (1, 14, 14, case["c_qk"]),
        "v": (1, 14, 14, case["c_v"]),
        "r_idx": (1, s2, case["topk"]),
    }
    for name, d in dims.items():
        profile.set_shape(name, d, d, d)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    runtime = trt.Runtime(logger())
    engine = runtime.deserialize_cuda_engine(plan)
    q, k, v, r_idx = make_inputs(case, torch.float32, seed=5, device="cuda")
    _check(run_engine(engine, q, k, v, r_idx), q, k, v, r_idx, case)


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
    key = (plugins.PLUGIN_NAME, plugins.PLUGIN_VERSION, plugins.PLUGIN_NAMESPACE)
    matches = [c for c in registry.all_creators if (c.name, c.plugin_version, c.plugin_namespace) == key]
    print("CREATORS", len(matches))
    """
)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["ctypes", "load_library", "both"])
def test_registration_paths_register_once(mode):
    require_tensorrt()
    proc = subprocess.run(
        [sys.executable, "-c", _REGISTRATION_SCRIPT, mode],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "CREATORS 1" in proc.stdout, proc.stdout + proc.stderr
