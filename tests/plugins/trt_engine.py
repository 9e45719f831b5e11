"""One-node TensorRT networks of the BiLevelRoutingAttention plugin, for the engine-level tests.

Needs the TensorRT Python package, a CUDA GPU with a CUDA build of PyTorch (device buffers) and the
built plugin library; :func:`require_tensorrt` skips the calling test, saying which is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from edge_biformer.ops.bra import CONTRACT

__all__ = [
    "build_one_node",
    "create_plugin",
    "network_flags",
    "require_tensorrt",
    "run_engine",
    "run_one_node",
]

_STATE: dict[str, Any] = {}


def require_tensorrt() -> Any:
    """``tensorrt`` with the plugin library loaded (the test is skipped where that cannot be)."""
    trt = pytest.importorskip(
        "tensorrt",
        reason="the TensorRT Python package is not installed: engine-level plugin tests need TensorRT",
    )
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch (a CUDA build of torch provides the device buffers)")
    if "plugins" not in _STATE:
        from edge_biformer import plugins

        plugins.load()
        _STATE["plugins"] = plugins
        _STATE["logger"] = trt.Logger(trt.Logger.WARNING)
    return trt


def logger() -> Any:
    """The tests' TensorRT logger (one for the process)."""
    require_tensorrt()
    return _STATE["logger"]


def network_flags(trt: Any) -> int:
    """Strongly typed networks (TensorRT 11 networks always are: the flag is deprecated there)."""
    major = int(trt.__version__.split(".")[0])
    return 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def create_plugin(trt: Any, case: dict[str, Any]) -> Any:
    """The plugin, created through its creator with the contract's fields."""
    creator = _STATE["plugins"].find_creator(trt.get_plugin_registry())
    assert creator is not None
    attrs = CONTRACT.node_attributes(
        n_win=case["n_win"], num_heads=case["num_heads"], topk=case["topk"], scale=case["scale"]
    )
    kinds = {"int": (np.int32, trt.PluginFieldType.INT32), "float": (np.float32, trt.PluginFieldType.FLOAT32)}
    fields = [
        trt.PluginField(f.name, np.array([attrs[f.name]], kinds[f.type][0]), kinds[f.type][1])
        for f in CONTRACT.plugin_fields
    ]
    plugin = creator.create_plugin("bra", trt.PluginFieldCollection(fields), trt.TensorRTPhase.BUILD)
    assert plugin is not None
    return plugin


def build_one_node(trt: Any, log: Any, case: dict[str, Any], dtype: torch.dtype, profiles: list[dict]) -> Any:
    """Serialized one-node network: q, k, v, r_idx -> BiLevelRoutingAttention -> o; dynamic N, H, W."""
    builder = trt.Builder(log)
    network = builder.create_network(network_flags(trt))
    t = trt.float16 if dtype == torch.float16 else trt.float32
    s2, topk = case["n_win"] ** 2, case["topk"]
    q = network.add_input("q", t, (-1, -1, -1, case["c_qk"]))
    k = network.add_input("k", t, (-1, -1, -1, case["c_qk"]))
    v = network.add_input("v", t, (-1, -1, -1, case["c_v"]))
    r = network.add_input("r_idx", trt.int32, (-1, s2, topk))
    layer = network.add_plugin_v3([q, k, v, r], [], create_plugin(trt, case))
    layer.get_output(0).name = "o"
    network.mark_output(layer.get_output(0))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()

    def dims(p: dict) -> dict[str, tuple[int, ...]]:
        return {
            "q": (p["n"], p["hq"], p["wq"], case["c_qk"]),
            "k": (p["n"], p["hk"], p["wk"], case["c_qk"]),
            "v": (p["n"], p["hk"], p["wk"], case["c_v"]),
            "r_idx": (p["n"], s2, topk),
        }

    lo, hi = dims(profiles[0]), dims(profiles[-1])
    opt = dims(profiles[len(profiles) // 2])
    for name in ("q", "k", "v", "r_idx"):
        profile.set_shape(name, lo[name], opt[name], hi[name])
    config.add_optimization_profile(profile)
    return builder.build_serialized_network(network, config)


def run_engine(
    engine: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor
) -> torch.Tensor:
    """Run an engine of :func:`build_one_node` on CUDA tensors; returns ``o`` (on the GPU)."""
    context = engine.create_execution_context()
    assert context is not None
    o = torch.empty(*q.shape[:3], v.shape[3], dtype=q.dtype, device=q.device)
    for name, tensor in (("q", q), ("k", k), ("v", v), ("r_idx", r_idx)):
        assert context.set_input_shape(name, tuple(tensor.shape))
        context.set_tensor_address(name, tensor.data_ptr())
    context.set_tensor_address("o", o.data_ptr())
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # the inputs were written on the current stream
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return o


def run_one_node(
    case: dict[str, Any], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor
) -> torch.Tensor:
    """The op on TensorRT for CPU tensors of ``case`` (a static profile of their shape); returns CPU ``o``."""
    trt = require_tensorrt()
    shape = {"n": q.shape[0], "hq": q.shape[1], "wq": q.shape[2], "hk": k.shape[1], "wk": k.shape[2]}
    plan = build_one_node(trt, logger(), case, q.dtype, [shape])
    assert plan is not None, "engine build failed (see the TensorRT log)"
    runtime = trt.Runtime(logger())
    engine = runtime.deserialize_cuda_engine(plan)
    return run_engine(engine, *(t.cuda() for t in (q, k, v, r_idx))).cpu()
