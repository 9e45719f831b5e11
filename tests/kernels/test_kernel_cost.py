"""The static cost model (``edge_biformer.kernels.cost``) and its report, ``scripts/kernel_cost.py``.

The model pieces run without Triton; the report compiles the BiFormer-T/S stage variants for sm_90
(no GPU needed) and keeps the small-region design honest: no spills, no run-time integer division
and the instruction budget that makes stage 3 issue-cheap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_biformer.kernels import cost
from edge_biformer.kernels.cost import Insn, Sass

REPO = Path(__file__).resolve().parents[2]


def _sass(ops: list[tuple[str, int | None, bool]]) -> Sass:
    """Instructions at 16-byte steps: (opcode, branch target index or None, predicated)."""
    return Sass(
        [Insn(16 * i, pred, op, None if t is None else 16 * t) for i, (op, t, pred) in enumerate(ops)]
    )


def test_walk_counts_loops_and_takes_zero_trip_guards() -> None:
    code = _sass(
        [
            ("S2R", None, False),  # 0
            ("BRA", 6, True),  # 1: zero-trip guard over the loop
            ("HMMA.16816.F32", None, False),  # 2: loop body
            ("LDG.E.128", None, False),  # 3
            ("MUFU.EX2", None, False),  # 4
            ("BRA", 2, True),  # 5: back edge
            ("STG.E", None, False),  # 6
            ("EXIT", None, False),  # 7
            ("BRA", 8, False),  # 8: the trap loop after EXIT (never reached)
        ]
    )
    assert code.static_count == 8 and code.loops() == [(2, 5)]
    three = cost.walk(code, [3])
    assert three["total"] == 4 + 3 * 4 and three["tensor"] == 3 and three["ldg"] == 3 and three["stg"] == 1
    assert cost.walk(code, [0])["total"] == 4  # guard taken: S2R, BRA, STG, EXIT
    assert cost.walk(code, [1])["total"] == 8


def test_walk_nested_loops_by_depth() -> None:
    code = _sass(
        [
            ("IMAD", None, False),  # 0: outer body start
            ("FADD", None, False),  # 1: inner body
            ("BRA", 1, True),  # 2: inner back edge
            ("BRA", 0, True),  # 3: outer back edge
            ("EXIT", None, False),  # 4
        ]
    )
    assert code.loop_depths() == {3: 0, 2: 1}
    assert cost.walk(code, [2, 3])["total"] == 2 * (1 + 3 * 2 + 1) + 1


def test_occupancy_and_roofline() -> None:
    h200 = cost.GPUS["H200"]
    assert cost.occupancy(h200, 168, 13312, 2) == 6  # 3 warps per scheduler
    assert cost.occupancy(h200, 255, 1024, 1) == 8
    assert cost.occupancy(cost.GPUS["Orin"], 32, 1024, 1) == 16  # the CTA limit of sm_87
    r = cost.roofline(h200, 4.3e12, programs=132, warps=1, insns_per_warp=1.98e9 * 4)
    assert r.memory_s == pytest.approx(1.0) and r.issue_s == pytest.approx(1.0)


def test_aten_bytes_counts_moving_ops_not_views() -> None:
    import torch

    def fn(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 1).contiguous().expand(2, -1, -1).sum(0)

    traced = cost.aten_bytes(fn, torch.empty(1, 8, 4, device="meta"))
    names = [op for op, _, _ in traced.ops]
    assert "permute" not in names and "expand" not in names
    clone = next(o for o in traced.ops if o[0] == "clone")
    assert clone[1:] == (128, 128)  # read 32 floats, write 32 floats
    assert traced.total == sum(r + w for _, r, w in traced.ops)


def test_kernel_cost_report_for_biformer_t(tmp_path: Path) -> None:
    pytest.importorskip("triton", reason="the report compiles the kernel with Triton")
    out = tmp_path / "cost.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(REPO / "scripts" / "kernel_cost.py"), "--arch", "90", "--tasks", "cls224",
           "--models", "T/S", "--only-used", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "**Predicted, not measured**" in proc.stdout
    data = json.loads(out.read_text())
    assert not any(v["spills"] for v in data["variants"])
    per_image = {}
    for row in data["shapes"]:
        a = row["arch"]["90"]
        assert a["int_div"] == 0  # every quotient is a multiply-high
        per_image[row["stage"]] = row["programs_per_image"] * a["insns_per_program"]
        assert row["arch"]["90"]["predicted"]["64"]["x_eager"] > 5
    # Warp instructions per image: the one-head-per-program design issued about 519K, 800K and 1.6M.
    assert per_image[1] < 400_000 and per_image[2] < 300_000 and per_image[3] < 300_000
