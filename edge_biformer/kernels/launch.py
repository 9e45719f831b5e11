"""Launch arithmetic of the routed-attention kernel, shared by the Python entry point and the tests.

:func:`plan_launch` turns shapes, strides and pointers into the kernel's grid, run-time arguments
and variant. It is pure integer arithmetic (no torch, no triton), and the C launcher
(``eb_bra_launch``) computes the same numbers; ``tests/kernels/test_aot_launcher.py`` compares the
two through a mock CUDA driver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_biformer.kernels.config import MAX_GRID, MAX_HEAD_DIM, MAX_IMAGE_OFFSET, Variant, is_aligned
from edge_biformer.kernels.config import select_variant as _select_variant

#: Most routed keys per query the kernel's 31-bit key counter allows (room for one tile past the end).
MAX_KEYS = 2**31 - 1 - 256
#: log2(e) in float32, as the C launcher multiplies it.
LOG2E_F32 = np.float32(1.4426950408889634)


class ContractError(ValueError):
    """Shapes or attributes that break the op contract (``EB_BRA_ERR_INVALID_ARGUMENT`` in C)."""


class UnsupportedError(ValueError):
    """Contract-valid input outside the compiled variants (``EB_BRA_ERR_UNSUPPORTED`` in C)."""


@dataclass(frozen=True)
class Geometry:
    """Shapes and attributes of one call, as in ``eb_bra_params_t``."""

    batch: int
    hq: int
    wq: int
    hk: int
    wk: int
    c_qk: int
    c_v: int
    n_win: int
    num_heads: int
    topk: int


def check_geometry(g: Geometry) -> None:
    """Raise :class:`ContractError` if ``g`` breaks the op contract (``plugins/bra/README.md``)."""
    s = g.n_win
    if s < 1:
        raise ContractError(f"n_win must be >= 1, got {s}")
    if g.num_heads < 1:
        raise ContractError(f"num_heads must be >= 1, got {g.num_heads}")
    if g.batch < 0:
        raise ContractError(f"batch must be >= 0, got {g.batch}")
    for name, size in (("Hq", g.hq), ("Wq", g.wq), ("Hk", g.hk), ("Wk", g.wk)):
        if size < s or size % s:
            raise ContractError(
                f"{name} = {size} is not a positive multiple of n_win = {s}: every map is cut into "
                f"n_win x n_win regions of whole tokens (pad the map to a multiple of n_win first)"
            )
    for name, c in (("Cqk", g.c_qk), ("Cv", g.c_v)):
        if c < 1 or c % g.num_heads:
            raise ContractError(
                f"{name} = {c} is not a positive multiple of num_heads = {g.num_heads}: channels are "
                f"split head-major into num_heads equal heads"
            )
    if not 1 <= g.topk <= s * s:
        raise ContractError(f"topk = {g.topk} is outside [1, n_win**2] = [1, {s * s}]")


@dataclass(frozen=True)
class LaunchPlan:
    """Everything one kernel launch needs besides the tensors."""

    variant: Variant
    grid: int
    strides: tuple[int, ...]  # q, k, v, o: (image, row, token) strides in elements
    n_win: int
    hq: int  # region height in query tokens (Hq / n_win)
    wq: int
    hk: int
    wk: int
    d_qk: int
    d_v: int
    num_heads: int
    topk: int
    n_mtiles: int  # query tiles per region
    n_groups: int  # head groups (``ceil(num_heads / heads_per_tile)``)
    qk_scale: float  # scale * log2(e), rounded to float32

    @property
    def divisors(self) -> tuple[int, ...]:
        """The kernel's run-time divisors, in the order of ``bra_triton.DIVISORS``."""
        return (
            self.n_groups,
            self.n_mtiles,
            self.n_win * self.n_win,
            self.n_win,
            self.wq,
            self.hk * self.wk,
            self.wk,
        )

    def scalar_args(self) -> tuple[int | float, ...]:
        """The kernel arguments after the five pointers, in ``RUNTIME_PARAMS`` order."""
        return (
            *self.strides,
            self.n_win,
            self.hq,
            self.wq,
            self.hk,
            self.wk,
            self.d_qk,
            self.d_v,
            self.num_heads,
            self.topk,
            self.n_mtiles,
            self.n_groups,
            self.qk_scale,
            *(_int32_bits(x) for d in self.divisors for x in magic(d)),
        )

    def loop_trips(self) -> tuple[int, ...]:
        """Trip counts of the kernel's loops by nesting depth: the routed key loop."""
        return (-(-(self.topk * self.hk * self.wk) // self.variant.block_n),)


def _int32_bits(x: int) -> int:
    """The int32 with the bits of the uint32 ``x`` (how Triton takes a 32-bit unsigned argument)."""
    return x - (1 << 32) if x >= 1 << 31 else x


def magic(d: int) -> tuple[int, int]:
    """Multiplier and shift that divide by ``d`` (``1 <= d < 2**31``) without a division.

    For every ``0 <= n < 2**31``: ``n // d == (umulhi(n, m) + n) >> s`` with ``umulhi`` the high 32
    bits of the 64-bit product (the kernel's ``_udivmod``; ``eb_bra_magic`` in C computes the same).
    ``s = ceil(log2(d))`` and ``m = floor(2**(32 + s) / d) + 1 - 2**32`` (in ``[1, 2**32)``): the
    round-up method, exact because ``m * d - 2**(32 + s) <= d <= 2**s`` and ``n < 2**31`` keeps the
    sum below ``2**32``.
    """
    if not 1 <= d < 2**31:
        raise ValueError(f"divisor {d} outside [1, 2**31)")
    s = (d - 1).bit_length()
    return (1 << (32 + s)) // d + 1 - (1 << 32), s


def dense_strides(h: int, w: int, c: int) -> tuple[int, int, int]:
    """(image, row, token) strides of a dense NHWC tensor."""
    return (h * w * c, w * c, c)


def plan_launch(
    g: Geometry,
    dtype: str,
    scale: float,
    strides: tuple[int, ...] | None = None,
    pointers: tuple[int, ...] = (0, 0, 0, 0),
    variant: Variant | None = None,
) -> LaunchPlan:
    """Grid, arguments and variant for one call.

    ``strides`` are the 12 (image, row, token) element strides of q, k, v and o (dense NHWC if
    ``None``); ``pointers`` the byte addresses of q, k, v and o (only their alignment matters).
    ``variant`` replaces the tile policy's choice (the tile sweep of ``scripts/bench_kernel.py``);
    it must hold the head dims, and be ``aligned`` only for a call that allows it.
    Raises :class:`ContractError` or :class:`UnsupportedError`.
    """
    check_geometry(g)
    s = g.n_win
    d_qk, d_v = g.c_qk // g.num_heads, g.c_v // g.num_heads
    if strides is None:
        strides = (
            *dense_strides(g.hq, g.wq, g.c_qk),
            *dense_strides(g.hk, g.wk, g.c_qk),
            *dense_strides(g.hk, g.wk, g.c_v),
            *dense_strides(g.hq, g.wq, g.c_v),
        )
    if len(strides) != 12:
        raise ValueError(f"expected 12 strides, got {len(strides)}")
    if max(d_qk, d_v) > MAX_HEAD_DIM:
        raise UnsupportedError(
            f"head dims d_qk = {d_qk}, d_v = {d_v}: the kernel is compiled for head dims up to "
            f"{MAX_HEAD_DIM}; use more heads (num_heads) so that C / num_heads <= {MAX_HEAD_DIM}"
        )
    # In-image offsets are int32 in the kernel: the last element of every map must be addressable.
    extents = (
        (strides[1], strides[2], g.hq, g.wq, g.c_qk),
        (strides[4], strides[5], g.hk, g.wk, g.c_qk),
        (strides[7], strides[8], g.hk, g.wk, g.c_v),
        (strides[10], strides[11], g.hq, g.wq, g.c_v),
    )
    for sh, sw, h, w, c in extents:
        if (h - 1) * sh + (w - 1) * sw + c - 1 > MAX_IMAGE_OFFSET:
            raise UnsupportedError(
                f"one image of a {h}x{w}x{c} map spans more than 2**31 elements; the kernel "
                f"addresses inside one image with 32-bit offsets (split the map or the batch)"
            )
    if any(st < 0 or st > MAX_IMAGE_OFFSET for st in strides):
        raise UnsupportedError(f"strides must lie in [0, 2**31), got {strides}")
    hq, wq, hk, wk = g.hq // s, g.wq // s, g.hk // s, g.wk // s
    if g.topk * hk * wk > MAX_KEYS:
        raise UnsupportedError(
            f"{g.topk} routed regions of {hk}x{wk} tokens are {g.topk * hk * wk} keys per query; the kernel "
            f"counts keys in 31 bits (at most {MAX_KEYS})"
        )
    aligned = is_aligned(d_qk, d_v, strides, list(pointers))
    if variant is None:
        variant = _select_variant(dtype, hq * wq, d_qk, d_v, aligned)
        assert variant is not None  # head dims were checked above
    elif variant.dtype != dtype or variant.block_d < max(d_qk, d_v) or (variant.aligned and not aligned):
        raise UnsupportedError(
            f"variant {variant.name} cannot serve this {dtype} call (head dims {d_qk}, {d_v})"
        )
    elif variant.aligned and variant.block_d != d_qk:
        raise UnsupportedError(f"aligned variant {variant.name} needs head dims of {variant.block_d}")
    n_mtiles = -(-(hq * wq) // variant.rows_per_head)
    n_groups = -(-g.num_heads // variant.heads_per_tile)
    grid = g.batch * s * s * n_mtiles * n_groups
    if grid > MAX_GRID:
        raise UnsupportedError(
            f"the launch needs {grid} programs, more than CUDA's 2**31 - 1; split the batch"
        )
    qk_scale = float(np.float32(scale) * LOG2E_F32)
    return LaunchPlan(
        variant=variant,
        grid=grid,
        strides=tuple(int(x) for x in strides),
        n_win=s,
        hq=hq,
        wq=wq,
        hk=hk,
        wk=wk,
        d_qk=d_qk,
        d_v=d_v,
        num_heads=g.num_heads,
        topk=g.topk,
        n_mtiles=n_mtiles,
        n_groups=n_groups,
        qk_scale=qk_scale,
    )
