"""Tile policy and launch arithmetic of the routed-attention kernel (pure Python, no Triton)."""

from __future__ import annotations

import itertools

import pytest

from edge_biformer.kernels.config import (
    HEAD_DIM_BUCKETS,
    MAX_GRID,
    TILES,
    all_variants,
    head_dim_bucket,
    region_class,
    select_variant,
)
from edge_biformer.kernels.launch import ContractError, Geometry, UnsupportedError, plan_launch


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def test_variant_table_is_complete_and_valid() -> None:
    variants = all_variants()
    assert len(variants) == len(TILES) == 24
    assert len({v.name for v in variants}) == len(variants)
    for v in variants:
        # tl.dot needs every dim >= 16; tl.arange needs powers of two.
        assert v.block_m >= 16 and v.block_n >= 16 and v.block_d >= 16
        assert all(_pow2(x) for x in (v.block_m, v.block_n, v.block_d, v.num_warps))
        assert v.dtype in ("fp16", "fp32") and not (v.dtype == "fp32" and v.aligned)


def test_every_contract_valid_head_dim_and_region_has_a_variant() -> None:
    for d_qk, d_v, tq, dtype, aligned in itertools.product(
        range(1, 129, 7), (1, 16, 96, 128), (1, 4, 16, 17, 64, 256, 400), ("fp16", "fp32"), (False, True)
    ):
        v = select_variant(dtype, tq, d_qk, d_v, aligned)
        assert v is not None
        assert v.block_d >= max(d_qk, d_v) and v.block_d == head_dim_bucket(d_qk, d_v)
        assert v.region == region_class(tq)
        assert v.aligned == (aligned and dtype == "fp16")
    assert select_variant("fp16", 4, 129, 32, True) is None
    assert head_dim_bucket(32, 32) == 32 and HEAD_DIM_BUCKETS[-1] == 128


@pytest.mark.parametrize(
    ("size", "c", "heads", "topk", "variant", "grid"),
    [
        (56, 64, 2, 1, "fp16_a16_d32_m64_n64_w4", 64 * 49 * 1 * 2),  # stage 0: 8x8 tokens per region
        (28, 128, 4, 4, "fp16_a16_d32_m16_n64_w4", 64 * 49 * 1 * 4),  # stage 1: 4x4
        (14, 256, 8, 16, "fp16_a16_d32_m16_n64_w4", 64 * 49 * 1 * 8),  # stage 2: 2x2
    ],
)
def test_biformer_tiny_stage_plans(size: int, c: int, heads: int, topk: int, variant: str, grid: int) -> None:
    g = Geometry(64, size, size, size, size, c, c, 7, heads, topk)
    plan = plan_launch(g, "fp16", c**-0.5, pointers=(256, 512, 768, 1024))
    assert plan.variant.name == variant and plan.grid == grid
    assert plan.d_qk == plan.d_v == 32
    assert plan.strides == (size * size * c, size * c, c) * 4


def test_plan_misaligned_pointer_or_channels_use_generic_variant() -> None:
    g = Geometry(1, 14, 14, 14, 14, 256, 256, 7, 8, 16)
    assert not plan_launch(g, "fp16", 0.1, pointers=(256, 512, 770, 1024)).variant.aligned
    g2 = Geometry(1, 14, 14, 14, 14, 24 * 8, 24 * 8, 7, 8, 16)  # head dim 24
    assert not plan_launch(g2, "fp16", 0.1, pointers=(0, 0, 0, 0)).variant.aligned


def test_plan_qk_scale_is_float32_times_log2e() -> None:
    import numpy as np

    plan = plan_launch(Geometry(1, 7, 7, 7, 7, 32, 32, 7, 1, 1), "fp32", 32**-0.5)
    assert plan.qk_scale == float(np.float32(32**-0.5) * np.float32(1.4426950408889634))


@pytest.mark.parametrize(
    "geometry",
    [
        Geometry(1, 7, 7, 7, 7, 32, 32, 0, 1, 1),  # n_win 0
        Geometry(1, 8, 7, 7, 7, 32, 32, 7, 1, 1),  # Hq not a multiple
        Geometry(1, 7, 7, 0, 7, 32, 32, 7, 1, 1),  # empty key map
        Geometry(1, 7, 7, 7, 7, 32, 30, 7, 4, 1),  # Cv % heads
        Geometry(1, 7, 7, 7, 7, 32, 32, 7, 1, 50),  # topk > S*S
        Geometry(1, 7, 7, 7, 7, 32, 32, 7, 0, 1),  # no heads
        Geometry(-1, 7, 7, 7, 7, 32, 32, 7, 1, 1),  # negative batch
    ],
)
def test_plan_contract_errors(geometry: Geometry) -> None:
    with pytest.raises(ContractError):
        plan_launch(geometry, "fp16", 1.0)


def test_plan_unsupported() -> None:
    with pytest.raises(UnsupportedError, match="head dims up to 128"):
        plan_launch(Geometry(1, 7, 7, 7, 7, 256, 256, 7, 1, 1), "fp16", 1.0)
    with pytest.raises(UnsupportedError, match="32-bit offsets"):
        plan_launch(Geometry(1, 7 * 2048, 7 * 2048, 7, 7, 128, 128, 7, 1, 1), "fp16", 1.0)
    with pytest.raises(UnsupportedError, match="2\\*\\*31 - 1"):
        plan_launch(Geometry(MAX_GRID // 49 + 1, 7, 7, 7, 7, 32, 32, 7, 1, 1), "fp16", 1.0)
