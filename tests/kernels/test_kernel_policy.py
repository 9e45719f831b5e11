"""Tile policy and launch arithmetic of the routed-attention kernel (pure Python, no Triton)."""

from __future__ import annotations

import itertools
import random

import pytest

from edge_biformer.kernels.bra_triton import CONSTEXPR_PARAMS, MAX_HEADS_PER_TILE
from edge_biformer.kernels.config import (
    HEAD_DIM_BUCKETS,
    MAX_GRID,
    REGION_CLASSES,
    TILES,
    all_variants,
    head_dim_bucket,
    policy,
    region_class,
    select_variant,
)
from edge_biformer.kernels.launch import ContractError, Geometry, UnsupportedError, magic, plan_launch
from edge_biformer.kernels.shapes import stage_shapes


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def test_variant_table_is_complete_and_valid() -> None:
    assert len(TILES) == len(policy()) == 3 * len(HEAD_DIM_BUCKETS) * len(REGION_CLASSES)
    variants = all_variants()
    assert len({v.name for v in variants}) == len(variants) == len(set(policy().values()))
    for v in variants:
        # tl.dot needs every dim >= 16; tl.arange needs powers of two.
        assert v.block_m >= 16 and v.block_n >= 16 and v.block_d >= 16
        assert all(_pow2(x) for x in (v.block_m, v.block_n, v.block_d, v.num_warps, v.heads_per_tile))
        assert v.dtype in ("fp16", "fp32") and not (v.dtype == "fp32" and v.aligned)
        assert 1 <= v.heads_per_tile <= MAX_HEADS_PER_TILE and v.heads_per_tile * v.block_d <= 128
        assert v.num_stages == 1 and list(v.constexprs) == list(CONSTEXPR_PARAMS)
    for (dtype, aligned, block_d, region), v in policy().items():
        assert (v.dtype, v.aligned, v.block_d) == (dtype, aligned, block_d)
        bound = dict(REGION_CLASSES)[region]
        if v.heads_per_tile > 1:  # a packed tile holds a whole region of every head it packs
            assert bound is not None and v.rows_per_head >= bound


def test_every_contract_valid_head_dim_and_region_has_a_variant() -> None:
    for d_qk, d_v, tq, dtype, aligned in itertools.product(
        range(1, 129, 7), (1, 16, 96, 128), (1, 4, 16, 17, 64, 256, 400), ("fp16", "fp32"), (False, True)
    ):
        v = select_variant(dtype, tq, d_qk, d_v, aligned)
        assert v is not None
        assert v.block_d >= max(d_qk, d_v) and v.block_d == head_dim_bucket(d_qk, d_v)
        assert v == policy()[(dtype, aligned and dtype == "fp16", v.block_d, region_class(tq))]
        assert v.aligned == (aligned and dtype == "fp16")
    assert select_variant("fp16", 4, 129, 32, True) is None
    assert head_dim_bucket(32, 32) == 32 and HEAD_DIM_BUCKETS[-1] == 128


def _tiny_stage(stage: int) -> Geometry:
    return stage_shapes(["cls224"], ["T/S"])[stage - 1].geometry(64)


@pytest.mark.parametrize(
    ("stage", "variant", "grid"),
    [
        # stage 1: 8x8-token regions, 2 heads: 64 rows of one head, 4 warps (wgmma on sm_90)
        (1, "fp16_a16_d32_m64_n64_h1_w4", 64 * 49 * 1 * 2),
        # stage 2: 4x4 tokens, 4 heads: 16 rows of one head, one warp
        (2, "fp16_a16_d32_m16_n64_h1_w1", 64 * 49 * 1 * 4),
        # stage 3: 2x2 tokens, 8 heads: 4 heads x 4 tokens fill the 16 rows, 2 programs per region
        (3, "fp16_a16_d32_m16_n64_h4_w2", 64 * 49 * 1 * 2),
    ],
)
def test_biformer_tiny_stage_plans(stage: int, variant: str, grid: int) -> None:
    g = _tiny_stage(stage)
    plan = plan_launch(g, "fp16", g.c_qk**-0.5, pointers=(256, 512, 768, 1024))
    assert plan.variant.name == variant and plan.grid == grid
    assert plan.d_qk == plan.d_v == 32 and plan.loop_trips() == (1,)  # 64 keys: the key loop runs once
    assert plan.strides == (g.hq * g.wq * g.c_qk, g.wq * g.c_qk, g.c_qk) * 4
    assert plan.divisors == (plan.n_groups, 1, 49, 7, plan.wq, plan.hk * plan.wk, plan.wk)


def test_plan_misaligned_pointer_head_dim_or_bucket_use_generic_variant() -> None:
    g = Geometry(1, 14, 14, 14, 14, 256, 256, 7, 8, 16)
    assert plan_launch(g, "fp16", 0.1, pointers=(256, 512, 768, 1024)).variant.aligned
    assert not plan_launch(g, "fp16", 0.1, pointers=(256, 512, 770, 1024)).variant.aligned
    g2 = Geometry(1, 14, 14, 14, 14, 24 * 8, 24 * 8, 7, 8, 16)  # head dim 24
    assert not plan_launch(g2, "fp16", 0.1, pointers=(0, 0, 0, 0)).variant.aligned
    g3 = Geometry(1, 14, 14, 14, 14, 48 * 2, 48 * 2, 7, 2, 16)  # 48: a multiple of 16, not a bucket
    assert not plan_launch(g3, "fp16", 0.1, pointers=(0, 0, 0, 0)).variant.aligned


def test_packed_heads_and_tiles() -> None:
    """A tiny region packs up to 4 heads per tile; a partial last group and several query tiles."""
    g = Geometry(1, 14, 14, 14, 14, 6 * 32, 6 * 32, 7, 6, 4)  # 6 heads of 2x2 tokens
    plan = plan_launch(g, "fp16", 0.1)
    assert plan.variant.heads_per_tile == 4 and plan.n_groups == 2 and plan.n_mtiles == 1
    assert plan.grid == 49 * 2
    big = Geometry(2, 208, 336, 208, 336, 64, 64, 16, 2, 1)  # 13x21 tokens: 5 tiles of 64
    plan = plan_launch(big, "fp16", 0.1)
    assert plan.variant.block_m == 64 and plan.n_mtiles == 5 and plan.grid == 2 * 256 * 5 * 2
    assert plan.loop_trips() == (5,)  # 273 keys in chunks of 64


def test_plan_qk_scale_is_float32_times_log2e() -> None:
    import numpy as np

    plan = plan_launch(Geometry(1, 7, 7, 7, 7, 32, 32, 7, 1, 1), "fp32", 32**-0.5)
    assert plan.qk_scale == float(np.float32(32**-0.5) * np.float32(1.4426950408889634))


def _umulhi(a: int, b: int) -> int:
    return (a * b) >> 32


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 7, 14, 49, 64, 255, 256, 273, 65537, 2**30, 2**31 - 1])
def test_magic_division_is_exact(d: int) -> None:
    m, s = magic(d)
    assert 0 <= m < 2**32 and 0 <= s <= 31
    rng = random.Random(d)
    values = [0, 1, d - 1, d, d + 1, 2**31 - 1, 2**31 - 2] + [rng.randrange(2**31) for _ in range(2000)]
    values += [d * rng.randrange(1, max(2, 2**31 // d)) - 1 for _ in range(200)]
    for n in values:
        if 0 <= n < 2**31:
            q = (_umulhi(n, m) + n) >> s
            assert q < 2**32 and q == n // d, (n, d)
    with pytest.raises(ValueError):
        magic(0)


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
    tiny = select_variant("fp16", 4, 32, 32, False)
    with pytest.raises(UnsupportedError, match="cannot serve"):
        plan_launch(Geometry(1, 7, 7, 7, 7, 64, 64, 7, 1, 1), "fp16", 1.0, variant=tiny)  # head dim 64 > 32
