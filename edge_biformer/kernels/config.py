"""Kernel variants and the tile policy of the routed-attention kernel.

One table decides which compiled variant of :func:`edge_biformer.kernels.bra_triton.bra_fwd_kernel`
serves a call. The JIT path (CUDA tensors), the interpreter path (CPU tensors), the ahead-of-time
compiler and the generated C launcher (``eb_bra_launch``) all use it, so a shape gets the same tiles
everywhere; ``tests/kernels/test_aot_launcher.py`` checks that the generated C picks the same variant as
:func:`select_variant` for a grid of shapes.

A call is classified by

- dtype (``fp16`` / ``fp32``);
- alignment: ``aligned`` variants are compiled with 16-element divisibility hints on the strides and
  head dims and 16-byte alignment of the pointers (vectorised 16-byte loads); they serve fp16 calls
  that satisfy that (every BiFormer block). Anything else runs the ``generic`` variant of the same
  class. fp32 is generic only (it is the accuracy path, not the speed path);
- head-dim bucket ``BLOCK_D``: the smallest of 16/32/64/128 that holds ``max(d_qk, d_v)``; head dims
  above 128 are outside the compiled variants (a clear error, never a slow fallback);
- region class: ``small`` for query regions of at most 16 tokens (BiFormer stages 1 and 2 at 224:
  16 and 4 tokens), ``large`` otherwise (stage 0 at 224: 64 tokens; bigger regions are tiled).

and :data:`TILES` gives the tiles of each class: ``BLOCK_M`` query tokens per program (16, the
smallest tensor-core M, for small regions; 64, or 32 for fp32 with ``BLOCK_D = 128``, for large
ones), ``BLOCK_N`` routed key tokens per step and ``num_warps``. The entries were chosen from
ptxas's register report so that no variant spills on sm_87, and so that shared memory stays below
48 KB (no opt-in) everywhere except the fp16 ``BLOCK_D = 128`` large-region tile on sm_90+
(wgmma/tcgen05 staging, up to 52 KB, opted in by the launcher). ``docs/kernel.md`` explains them;
``scripts/bench_kernel.py --tune`` re-measures alternatives on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

#: dtypes of the op, as Triton spells them.
DTYPES: tuple[str, ...] = ("fp16", "fp32")
#: dtypes that have ``aligned`` variants.
ALIGNED_DTYPES: tuple[str, ...] = ("fp16",)
#: Head-dim buckets (``BLOCK_DQK = BLOCK_DV``).
HEAD_DIM_BUCKETS: tuple[int, ...] = (16, 32, 64, 128)
#: Largest supported head dim (``d_qk`` and ``d_v``).
MAX_HEAD_DIM = HEAD_DIM_BUCKETS[-1]
#: Region classes: ``(name, max query tokens per region or None)``, the first that holds applies.
REGION_CLASSES: tuple[tuple[str, int | None], ...] = (("small", 16), ("large", None))
#: Divisibility (in elements) that the ``aligned`` variants assume for strides and head dims.
ALIGN_ELEMS = 16
#: Byte alignment that the ``aligned`` variants assume for the tensor pointers.
ALIGN_BYTES = 16
#: Largest in-image element offset and stride: offsets inside one image are int32 in the kernel.
MAX_IMAGE_OFFSET = 2**31 - 1
#: Largest 1-D grid (CUDA's gridDim.x limit).
MAX_GRID = 2**31 - 1
#: Pipelining depth of the routed key loop.
NUM_STAGES = 2

#: ``(dtype, aligned, BLOCK_D, region class) -> (BLOCK_M, BLOCK_N, num_warps)``.
TILES: dict[tuple[str, bool, int, str], tuple[int, int, int]] = {
    # fp16, 16-element aligned: the speed path (BiFormer: d = 32).
    ("fp16", True, 16, "small"): (16, 64, 4),
    ("fp16", True, 32, "small"): (16, 64, 4),
    ("fp16", True, 64, "small"): (16, 64, 4),
    ("fp16", True, 128, "small"): (16, 32, 4),
    ("fp16", True, 16, "large"): (64, 64, 4),
    ("fp16", True, 32, "large"): (64, 64, 4),
    ("fp16", True, 64, "large"): (64, 32, 4),
    ("fp16", True, 128, "large"): (64, 32, 8),
    # fp16, any alignment: scalar loads need more registers for addresses, hence smaller N / more warps.
    ("fp16", False, 16, "small"): (16, 64, 4),
    ("fp16", False, 32, "small"): (16, 64, 4),
    ("fp16", False, 64, "small"): (16, 32, 4),
    ("fp16", False, 128, "small"): (16, 32, 8),
    ("fp16", False, 16, "large"): (64, 64, 8),
    ("fp16", False, 32, "large"): (64, 32, 4),
    ("fp16", False, 64, "large"): (64, 32, 8),
    ("fp16", False, 128, "large"): (64, 32, 8),
    # fp32: products on the FMA units (input_precision="ieee"), register-hungry.
    ("fp32", False, 16, "small"): (16, 32, 4),
    ("fp32", False, 32, "small"): (16, 32, 4),
    ("fp32", False, 64, "small"): (16, 16, 4),
    ("fp32", False, 128, "small"): (16, 16, 4),
    ("fp32", False, 16, "large"): (64, 32, 8),
    ("fp32", False, 32, "large"): (64, 32, 8),
    ("fp32", False, 64, "large"): (64, 32, 8),
    ("fp32", False, 128, "large"): (32, 16, 8),
}


@dataclass(frozen=True, order=True)
class Variant:
    """One compiled form of the kernel: dtype, alignment assumption, class and tile sizes."""

    dtype: str
    aligned: bool
    block_d: int
    region: str
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int = NUM_STAGES

    @property
    def name(self) -> str:
        """Stable identifier, e.g. ``fp16_a16_d32_m64_n64_w4`` (used for files and C symbols)."""
        align = "a16" if self.aligned else "gen"
        return f"{self.dtype}_{align}_d{self.block_d}_m{self.block_m}_n{self.block_n}_w{self.num_warps}"

    @property
    def region_index(self) -> int:
        """Index of the region class in :data:`REGION_CLASSES`."""
        return [name for name, _ in REGION_CLASSES].index(self.region)

    @property
    def constexprs(self) -> dict[str, int]:
        """The ``tl.constexpr`` arguments of the kernel for this variant."""
        return {
            "BLOCK_M": self.block_m,
            "BLOCK_N": self.block_n,
            "BLOCK_DQK": self.block_d,
            "BLOCK_DV": self.block_d,
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
    block_m, block_n, num_warps = TILES[(dtype, aligned, block_d, region)]
    return Variant(dtype, aligned, block_d, region, block_m, block_n, num_warps)


def all_variants(
    dtypes: tuple[str, ...] | list[str] = DTYPES,
    head_dims: tuple[int, ...] | list[int] = HEAD_DIM_BUCKETS,
) -> list[Variant]:
    """Every variant the policy can select for these dtypes and head-dim buckets, sorted."""
    out: list[Variant] = []
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {DTYPES}")
        for block_d in head_dims:
            if block_d not in HEAD_DIM_BUCKETS:
                raise ValueError(f"unknown head-dim bucket {block_d}; expected one of {HEAD_DIM_BUCKETS}")
            for aligned in (False, True) if dtype in ALIGNED_DTYPES else (False,):
                for region, _ in REGION_CLASSES:
                    out.append(_variant(dtype, aligned, block_d, region))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise AssertionError("two tile-table entries share a variant name")
    return sorted(out)


def select_variant(dtype: str, tq: int, d_qk: int, d_v: int, aligned: bool) -> Variant | None:
    """The variant for one call, or ``None`` when the head dims are outside the compiled variants.

    ``tq`` is the number of tokens of one query region (``hq * wq``); ``aligned`` says whether the
    head dims and every image/row/token stride are multiples of :data:`ALIGN_ELEMS` and the
    pointers :data:`ALIGN_BYTES`-aligned (see :func:`is_aligned`).
    """
    block_d = head_dim_bucket(d_qk, d_v)
    if block_d is None:
        return None
    return _variant(dtype, aligned and dtype in ALIGNED_DTYPES, block_d, region_class(tq))


def is_aligned(d_qk: int, d_v: int, strides: list[int] | tuple[int, ...], pointers: list[int]) -> bool:
    """Whether a call may use the ``aligned`` variants (see :func:`select_variant`)."""
    return (
        d_qk % ALIGN_ELEMS == 0
        and d_v % ALIGN_ELEMS == 0
        and all(s % ALIGN_ELEMS == 0 for s in strides)
        and all(p % ALIGN_BYTES == 0 for p in pointers)
    )
