"""Inputs and a literal evaluation of the BiLevelRoutingAttention op, shared by every test of the op.

:func:`make_inputs` builds q, k, v and r_idx for a case of the contract's table
(:data:`edge_biformer.ops.bra.CONTRACT.cases`: full map sizes) or any dict of the same keys;
:func:`region_case` writes a case in region sizes (tokens per region). :func:`naive_reference`
evaluates the Semantics section of ``plugins/bra/README.md`` token by token in float64 (for small
cases: it checks the package's reference, which every backend is then compared with).
"""

from __future__ import annotations

from typing import Any

import torch

from edge_biformer.ops.bra import CONTRACT

__all__ = ["CASES", "make_inputs", "naive_reference", "reference64", "region_case", "routing"]

#: The contract's example cases, by name.
CASES: dict[str, dict[str, Any]] = {c["name"]: c for c in CONTRACT.cases}


def region_case(
    n: int,
    s: int,
    rq: tuple[int, int],
    rk: tuple[int, int],
    c_qk: int,
    c_v: int,
    heads: int,
    topk: int,
    **extra: Any,
) -> dict[str, Any]:
    """A case from region sizes: ``rq`` / ``rk`` are the tokens per query / key region (rows, cols)."""
    return {
        "n": n,
        "n_win": s,
        "hq": s * rq[0],
        "wq": s * rq[1],
        "hk": s * rk[0],
        "wk": s * rk[1],
        "c_qk": c_qk,
        "c_v": c_v,
        "num_heads": heads,
        "topk": topk,
        "scale": extra.pop("scale", c_qk**-0.5),
        **extra,
    }


def routing(n: int, s: int, topk: int, pattern: str, gen: torch.Generator) -> torch.Tensor:
    """``[n, s*s, topk]`` int32 region indices following ``pattern``.

    ``perm``: distinct indices like TopK; ``perm_repeat``: distinct, except one repeated index in the
    first row (the contract allows repeats); ``random``: with replacement (ties and repeats);
    ``same``: every slot routes to one region; ``reverse``: all regions, in reverse order.
    """
    p2 = s * s
    if pattern in ("perm", "perm_repeat"):
        rows = torch.stack([torch.randperm(p2, generator=gen)[:topk] for _ in range(n * p2)])
        r_idx = rows.reshape(n, p2, topk).int()
        if pattern == "perm_repeat" and topk > 1:
            r_idx[0, 0, 1] = r_idx[0, 0, 0]
        return r_idx
    if pattern == "random":
        return torch.randint(0, p2, (n, p2, topk), generator=gen, dtype=torch.int32)
    if pattern == "same":
        return (
            torch.randint(0, p2, (n, p2, 1), generator=gen, dtype=torch.int32)
            .expand(n, p2, topk)
            .contiguous()
        )
    if pattern == "reverse":
        return torch.arange(p2 - 1, p2 - 1 - topk, -1, dtype=torch.int32).expand(n, p2, topk).contiguous()
    raise ValueError(f"unknown routing pattern {pattern!r}")


def make_inputs(
    case: dict[str, Any], dtype: torch.dtype = torch.float32, seed: int = 0, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded ``q, k, v`` (standard normal, then cast to ``dtype``) and ``r_idx`` for ``case``."""
    gen = torch.Generator().manual_seed(seed)
    n, s = case["n"], case["n_win"]
    q = torch.randn(n, case["hq"], case["wq"], case["c_qk"], generator=gen)
    k = torch.randn(n, case["hk"], case["wk"], case["c_qk"], generator=gen)
    v = torch.randn(n, case["hk"], case["wk"], case["c_v"], generator=gen)
    r_idx = routing(n, s, case["topk"], case.get("pattern", "perm"), gen)
    q, k, v = (t.to(dtype=dtype, device=device) for t in (q, k, v))
    return q, k, v, r_idx.to(device)


def reference64(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor, case: dict[str, Any]
) -> torch.Tensor:
    """The package's reference of the op in float64 (on the CPU): the yardstick of every backend."""
    from edge_biformer.kernels.reference import routed_attention_reference

    return routed_attention_reference(
        q.cpu(), k.cpu(), v.cpu(), r_idx.cpu(), num_heads=case["num_heads"], scale=case["scale"]
    )


def naive_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor, num_heads: int, scale: float
) -> torch.Tensor:
    """plugins/bra/README.md "Semantics", step by step, in float64 with plain loops."""
    q, k, v = q.double(), k.double(), v.double()
    n, hq_full, wq_full, c_qk = q.shape
    _, hk_full, wk_full, _ = k.shape
    c_v = v.shape[-1]
    s = round(r_idx.shape[1] ** 0.5)
    hq, wq, hk, wk = hq_full // s, wq_full // s, hk_full // s, wk_full // s
    dqk, dv = c_qk // num_heads, c_v // num_heads
    out = torch.zeros(n, hq_full, wq_full, c_v, dtype=torch.float64)
    for b in range(n):
        for r in range(s * s):
            j, i = divmod(r, s)
            for m in range(num_heads):
                qm = q[b, j * hq : (j + 1) * hq, i * wq : (i + 1) * wq, m * dqk : (m + 1) * dqk].reshape(
                    -1, dqk
                )
                keys, values = [], []
                for t in range(r_idx.shape[2]):
                    jj, ii = divmod(int(r_idx[b, r, t]), s)
                    rows, cols = slice(jj * hk, (jj + 1) * hk), slice(ii * wk, (ii + 1) * wk)
                    keys.append(k[b, rows, cols, m * dqk : (m + 1) * dqk].reshape(-1, dqk))
                    values.append(v[b, rows, cols, m * dv : (m + 1) * dv].reshape(-1, dv))
                p = torch.softmax(scale * qm @ torch.cat(keys).T, dim=-1)
                o = p @ torch.cat(values)
                out[b, j * hq : (j + 1) * hq, i * wq : (i + 1) * wq, m * dv : (m + 1) * dv] = o.reshape(
                    hq, wq, dv
                )
    return out


def one_node_graph(case: dict[str, Any], dtype: str = "float32", *, plugin_version: str | None = None) -> Any:
    """An ONNX model of one BiLevelRoutingAttention node for ``case`` (dynamic N, H and W)."""
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    attrs = CONTRACT.node_attributes(
        n_win=case["n_win"], num_heads=case["num_heads"], topk=case["topk"], scale=case["scale"]
    )
    if plugin_version is not None:
        attrs["plugin_version"] = plugin_version
    node = helper.make_node(
        CONTRACT.op_type, ["q", "k", "v", "r_idx"], ["o"], name="bra", domain=CONTRACT.domain, **attrs
    )
    c_qk, c_v, s2 = case["c_qk"], case["c_v"], case["n_win"] ** 2
    graph = helper.make_graph(
        [node],
        "bra",
        [
            helper.make_tensor_value_info("q", elem, ["N", "Hq", "Wq", c_qk]),
            helper.make_tensor_value_info("k", elem, ["N", "Hk", "Wk", c_qk]),
            helper.make_tensor_value_info("v", elem, ["N", "Hk", "Wk", c_v]),
            helper.make_tensor_value_info("r_idx", TensorProto.INT32, ["N", s2, case["topk"]]),
        ],
        [helper.make_tensor_value_info("o", elem, ["N", "Hq", "Wq", c_v])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(CONTRACT.domain, CONTRACT.opset_version)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)
