"""Kernel variants and the tile policy of the routed-attention kernel.

One table decides which compiled variant of :func:`edge_biformer.kernels.bra_triton.bra_fwd_kernel`
serves a call. The JIT path (CUDA tensors), the interpreter path (CPU tensors), the ahead-of-time
compiler and the C launcher (``eb_bra_launch``, which reads the tables the generator writes from
here) all use it, so a shape gets the same tiles everywhere; ``tests/kernels/test_aot_launcher.py``
checks that the C launcher picks the same variant as :func:`select_variant` for a grid of shapes.

A call is classified by

- dtype (``fp16`` / ``fp32``);
- alignment: ``aligned`` variants are compiled with 16-element divisibility hints on the strides and
  head dims, 16-byte alignment of the pointers and head dims equal to the tile (``EVEN_D``: no
  channel masks), which gives unpredicated 16-byte loads; they serve fp16 calls that satisfy that
  (every BiFormer block: head dim 32). Anything else runs the ``generic`` variant of the same class.
  fp32 is generic only (it is the accuracy path, not the speed path);
- head-dim bucket ``BLOCK_D``: the smallest of 16/32/64/128 that holds ``max(d_qk, d_v)``; head dims
  above 128 are outside the compiled variants (a clear error, never a slow fallback);
- region class, by the query tokens of one region (``hq * wq``): ``tiny`` (at most 4: BiFormer
  stage 3 at 224, 2x2 tokens), ``small`` (at most 16: stage 2, 4x4), ``medium`` (at most 32) and
  ``large`` (stage 1, 8x8, and the dense-prediction stages; bigger regions take several tiles).

and :data:`TILES` gives each class its tile: ``BLOCK_M`` query rows per program holding
``heads_per_tile`` heads (a ``tiny`` region's 4 tokens of 4 heads fill the 16 rows of the smallest
tensor-core tile), ``BLOCK_N`` routed key tokens per step, ``num_warps`` (one warp per 16 rows, so
the softmax reductions never cross warps) and ``num_stages`` (1: the key loop of the small classes
runs once). The entries keep every variant free of spills on sm_87 and sm_90 and below 48 KB of
shared memory; ``docs/kernel.md`` explains them, ``python scripts/kernel_cost.py`` reports their
registers and instruction counts, and ``scripts/bench_kernel.py --tune`` re-measures alternatives on
a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

#: dtypes of the op, as Triton spells them.
DTYPES: tuple[str, ...] = ("fp16", "fp32")
#: dtypes that have ``aligned`` variants.
ALIGNED_DTYPES: tuple[str, ...] = ("fp16",)
#: Head-dim buckets (``BLOCK_D``).
HEAD_DIM_BUCKETS: tuple[int, ...] = (16, 32, 64, 128)
#: Largest supported head dim (``d_qk`` and ``d_v``).
MAX_HEAD_DIM = HEAD_DIM_BUCKETS[-1]
#: Region classes: ``(name, max query tokens per region or None)``, the first that holds applies.
REGION_CLASSES: tuple[tuple[str, int | None], ...] = (
    ("tiny", 4),
    ("small", 16),
    ("medium", 32),
    ("large", None),
)
#: Divisibility (in elements) that the ``aligned`` variants assume for strides and head dims.
ALIGN_ELEMS = 16
#: Byte alignment that the ``aligned`` variants assume for the tensor pointers.
ALIGN_BYTES = 16
#: Largest in-image element offset and stride: offsets inside one image are int32 in the kernel.
MAX_IMAGE_OFFSET = 2**31 - 1
#: Largest 1-D grid (CUDA's gridDim.x limit).
MAX_GRID = 2**31 - 1

#: ``(dtype, aligned, BLOCK_D, region class) -> (BLOCK_M, BLOCK_N, heads_per_tile, num_warps)``; every
#: variant runs its key loop with ``num_stages = 1``. Chosen from ptxas's reports on sm_90 and sm_87
#: (``scripts/kernel_cost.py`` prints them): no spills, at most 168 registers where a tile allows it
#: (3 warps per scheduler), then the fewest SASS instructions per head for the class's typical
#: shape; where no tile of a class compiles without spills (generic fp16 and fp32 at head dim 128)
#: the class takes the ``small`` tile (more query tiles per region).
TILES: dict[tuple[str, bool, int, str], tuple[int, int, int, int]] = {
    # fp16, aligned (head dims equal to the bucket, 16-byte vectors): the speed path (BiFormer: d = 32).
    ("fp16", True, 16, "tiny"): (16, 32, 4, 1),
    ("fp16", True, 16, "small"): (16, 64, 1, 1),
    ("fp16", True, 16, "medium"): (32, 64, 1, 2),
    ("fp16", True, 16, "large"): (64, 64, 1, 4),
    ("fp16", True, 32, "tiny"): (16, 64, 4, 2),
    ("fp16", True, 32, "small"): (16, 64, 1, 1),
    ("fp16", True, 32, "medium"): (32, 64, 1, 2),
    ("fp16", True, 32, "large"): (64, 64, 1, 4),
    ("fp16", True, 64, "tiny"): (16, 64, 2, 2),
    ("fp16", True, 64, "small"): (16, 32, 1, 1),
    ("fp16", True, 64, "medium"): (32, 64, 1, 2),
    ("fp16", True, 64, "large"): (64, 32, 1, 4),
    ("fp16", True, 128, "tiny"): (16, 32, 1, 2),
    ("fp16", True, 128, "small"): (16, 32, 1, 2),
    ("fp16", True, 128, "medium"): (32, 32, 1, 4),
    ("fp16", True, 128, "large"): (64, 32, 1, 4),
    # fp16, any alignment: scalar loads hold more registers, hence smaller BLOCK_N or more warps.
    ("fp16", False, 16, "tiny"): (16, 32, 4, 2),
    ("fp16", False, 16, "small"): (16, 32, 1, 1),
    ("fp16", False, 16, "medium"): (32, 32, 1, 2),
    ("fp16", False, 16, "large"): (64, 32, 1, 4),
    ("fp16", False, 32, "tiny"): (16, 16, 4, 2),
    ("fp16", False, 32, "small"): (16, 32, 1, 1),
    ("fp16", False, 32, "medium"): (32, 16, 1, 2),
    ("fp16", False, 32, "large"): (64, 16, 1, 4),
    ("fp16", False, 64, "tiny"): (16, 32, 2, 4),
    ("fp16", False, 64, "small"): (16, 16, 1, 1),
    ("fp16", False, 64, "medium"): (32, 16, 1, 4),
    ("fp16", False, 64, "large"): (64, 16, 1, 4),
    ("fp16", False, 128, "tiny"): (16, 16, 1, 2),
    ("fp16", False, 128, "small"): (16, 16, 1, 2),
    ("fp16", False, 128, "medium"): (16, 16, 1, 2),
    ("fp16", False, 128, "large"): (16, 16, 1, 2),
    # fp32: products on the FMA units (input_precision="ieee"), register-hungry.
    ("fp32", False, 16, "tiny"): (16, 16, 4, 4),
    ("fp32", False, 16, "small"): (16, 16, 1, 1),
    ("fp32", False, 16, "medium"): (32, 16, 1, 2),
    ("fp32", False, 16, "large"): (64, 16, 1, 4),
    ("fp32", False, 32, "tiny"): (16, 16, 2, 2),
    ("fp32", False, 32, "small"): (16, 16, 1, 1),
    ("fp32", False, 32, "medium"): (32, 32, 1, 2),
    ("fp32", False, 32, "large"): (64, 32, 1, 4),
    ("fp32", False, 64, "tiny"): (16, 16, 1, 2),
    ("fp32", False, 64, "small"): (16, 16, 1, 2),
    ("fp32", False, 64, "medium"): (32, 16, 1, 4),
    ("fp32", False, 64, "large"): (64, 16, 1, 8),
    ("fp32", False, 128, "tiny"): (16, 16, 1, 4),
    ("fp32", False, 128, "small"): (16, 16, 1, 4),
    ("fp32", False, 128, "medium"): (16, 16, 1, 4),
    ("fp32", False, 128, "large"): (16, 16, 1, 4),
}


@dataclass(frozen=True, order=True)
class Variant:
    """One compiled form of the kernel: dtype, alignment assumption and tile (it may serve several
    region classes: see :func:`policy`)."""

    dtype: str
    aligned: bool
    block_d: int
    block_m: int
    block_n: int
    heads_per_tile: int
    num_warps: int
    num_stages: int = 1

    @property
    def name(self) -> str:
        """Stable identifier, e.g. ``fp16_a16_d32_m16_n64_h4_w2`` (used for files and C symbols)."""
        align = "a16" if self.aligned else "gen"
        stages = f"_s{self.num_stages}" if self.num_stages != 1 else ""
        return (
            f"{self.dtype}_{align}_d{self.block_d}_m{self.block_m}_n{self.block_n}"
            f"_h{self.heads_per_tile}_w{self.num_warps}{stages}"
        )

    @property
    def rows_per_head(self) -> int:
        """Query tokens of one head in a tile (``BLOCK_M // heads_per_tile``)."""
        return self.block_m // self.heads_per_tile

    @property
    def constexprs(self) -> dict[str, int | bool]:
        """The ``tl.constexpr`` arguments of the kernel for this variant."""
        return {
            "BLOCK_M": self.block_m,
            "BLOCK_N": self.block_n,
            "BLOCK_D": self.block_d,
            "HEADS_PER_TILE": self.heads_per_tile,
            "EVEN_D": self.aligned,
        }


def head_dim_bucket(d_qk: int, d_v: int) -> int | None:
    """``BLOCK_D`` for the head dims, or ``None`` if one is above :data:`MAX_HEAD_DIM`."""
    d = max(d_qk, d_v)
    for bucket in HEAD_DIM_BUCKETS:
        if d <= bucket:
            return bucket
    return None


def region_class(tokens_per_query_region: int) -> str:
    """The region class of a query region of that many tokens."""
    for name, bound in REGION_CLASSES:
        if bound is None or tokens_per_query_region <= bound:
            return name
    raise AssertionError("REGION_CLASSES must end with an unbounded class")


def _variant(dtype: str, aligned: bool, block_d: int, region: str) -> Variant:
    return Variant(dtype, aligned, block_d, *TILES[(dtype, aligned, block_d, region)])


def policy(
    dtypes: tuple[str, ...] | list[str] = DTYPES,
    head_dims: tuple[int, ...] | list[int] = HEAD_DIM_BUCKETS,
) -> dict[tuple[str, bool, int, str], Variant]:
    """``(dtype, aligned, BLOCK_D, region class) -> Variant`` for these dtypes and head-dim buckets."""
    out: dict[tuple[str, bool, int, str], Variant] = {}
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {DTYPES}")
        for block_d in head_dims:
            if block_d not in HEAD_DIM_BUCKETS:
                raise ValueError(f"unknown head-dim bucket {block_d}; expected one of {HEAD_DIM_BUCKETS}")
            for aligned in (False, True) if dtype in ALIGNED_DTYPES else (False,):
                for region, _ in REGION_CLASSES:
                    out[(dtype, aligned, block_d, region)] = _variant(dtype, aligned, block_d, region)
    return out


def all_variants(
    dtypes: tuple[str, ...] | list[str] = DTYPES,
    head_dims: tuple[int, ...] | list[int] = HEAD_DIM_BUCKETS,
) -> list[Variant]:
    """Every distinct variant the policy can select for these dtypes and head-dim buckets, sorted."""
    out = sorted(set(policy(dtypes, head_dims).values()))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise AssertionError("two different tiles share a variant name")
    return out


def select_variant(dtype: str, tq: int, d_qk: int, d_v: int, aligned: bool) -> Variant | None:
    """The variant for one call, or ``None`` when the head dims are outside the compiled variants.

    ``tq`` is the number of tokens of one query region (``hq * wq``); ``aligned`` says whether the
    head dims equal their bucket, every image/row/token stride is a multiple of :data:`ALIGN_ELEMS`
    and the pointers are :data:`ALIGN_BYTES`-aligned (see :func:`is_aligned`).
    """
    block_d = head_dim_bucket(d_qk, d_v)
    if block_d is None:
        return None
    return _variant(dtype, aligned and dtype in ALIGNED_DTYPES, block_d, region_class(tq))


def is_aligned(d_qk: int, d_v: int, strides: list[int] | tuple[int, ...], pointers: list[int]) -> bool:
    """Whether a call may use the ``aligned`` variants (see :func:`select_variant`): both head dims
    equal to their bucket (so a multiple of :data:`ALIGN_ELEMS`), aligned strides and pointers."""
    return (
        d_qk == d_v == head_dim_bucket(d_qk, d_v)
        and all(s % ALIGN_ELEMS == 0 for s in strides)
        and all(p % ALIGN_BYTES == 0 for p in pointers)
    )
