"""C tables of the AOT-compiled routed-attention kernels (used by :mod:`.aot`).

The launcher itself is hand-written C (``plugins/bra/kernels/bra_launch.c``, implementing
``plugins/bra/bra_launch.h``); this module writes only the data it reads, laid out as
``plugins/bra/kernels/bra_kernel_tables.h`` declares it:

- ``bra_kernels.h``: the sizes of the tables, the kernel's argument counts and name;
- ``bra_kernels.c``: the variant table, the list of image sets and the tile policy of
  :mod:`edge_biformer.kernels.config` (which variant serves each dtype, alignment, head-dim bucket
  and region class; head-dim buckets, region bounds, dtypes with aligned variants);
- ``bra_images_sm<arch>.c`` / ``bra_images_ptx<arch>.c``: one image set each, the cubins (or PTX)
  of every variant as byte arrays.

The sources compile cleanly as C11 (``gcc -std=c11 -Wall -Wextra -Werror``) and as C++11
(``g++ -x c++``), and are byte-identical for identical inputs (no timestamps, no paths, sorted tables).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from edge_biformer.kernels.config import (
    ALIGN_BYTES,
    ALIGN_ELEMS,
    ALIGNED_DTYPES,
    HEAD_DIM_BUCKETS,
    MAX_GRID,
    REGION_CLASSES,
    Variant,
)
from edge_biformer.kernels.image import Image
from edge_biformer.kernels.launch import MAX_KEYS

#: The table layout the generated sources follow: ``EB_BRA_TABLES_FORMAT`` of
#: ``plugins/bra/kernels/bra_kernel_tables.h`` (which refuses to compile with another one).
TABLES_FORMAT = 3
#: Name of the generated header and of the generated table source.
HEADER = "bra_kernels.h"
TABLES_SOURCE = "bra_kernels.c"
#: ``eb_bra_dtype_t`` enumerators, in enum order.
_DTYPE_ENUM = {"fp32": "EB_BRA_FLOAT32", "fp16": "EB_BRA_FLOAT16"}
_BYTES_PER_LINE = 32


def image_set_name(arch: int, is_ptx: bool) -> str:
    """Tag of an image set in C symbols and file names: ``sm87`` (cubins) or ``ptx87``."""
    return f"ptx{arch}" if is_ptx else f"sm{arch}"


def images_source_name(arch: int, is_ptx: bool) -> str:
    """File name of one image set's source."""
    return f"bra_images_{image_set_name(arch, is_ptx)}.c"


def _c_bytes(data: bytes) -> str:
    lines = []
    for i in range(0, len(data), _BYTES_PER_LINE):
        lines.append(",".join(str(b) for b in data[i : i + _BYTES_PER_LINE]) + ",")
    return "\n".join(lines)


def _images_source(
    comment: str, arch: int, is_ptx: bool, variants: Sequence[Variant], images: dict[str, Image]
) -> str:
    tag = image_set_name(arch, is_ptx)
    kind = "PTX (JIT-compiled by the driver)" if is_ptx else "cubins"
    out = [
        f"/* {comment} */",
        f"/* sm_{arch} {kind} of the routed-attention kernel, one per variant. */",
        '#include "bra_kernel_tables.h"',
        "",
    ]
    for i, v in enumerate(variants):
        img = images[v.name]
        data = img.ptx.encode() + b"\0" if is_ptx else img.cubin
        digest = hashlib.sha256(img.ptx.encode() if is_ptx else img.cubin).hexdigest()
        out.append(f"/* {i}: {v.name}, target {img.target}, {len(data)} bytes, sha256 {digest} */")
        out.append(f"EB_BRA_ALIGNAS(64) static const unsigned char eb_bra_{tag}_{i}[{len(data)}] = {{")
        out.append(_c_bytes(data))
        out.append("};")
        out.append("")
    out.append(f"static const unsigned char* const eb_bra_{tag}_images[EB_BRA_NUM_VARIANTS] = {{")
    out.extend(f"    eb_bra_{tag}_{i}," for i in range(len(variants)))
    out.append("};")
    shared = ", ".join(f"{images[v.name].shared}u" for v in variants)
    out.append(f"static const unsigned int eb_bra_{tag}_shared[EB_BRA_NUM_VARIANTS] = {{{shared}}};")
    arch_specific = int(images[variants[0].name].arch_specific)
    out.append(f"extern const eb_bra_image_set_t eb_bra_image_set_{tag}; /* listed in {TABLES_SOURCE} */")
    out.append(
        f"const eb_bra_image_set_t eb_bra_image_set_{tag} = "
        f"{{{arch}, {arch_specific}, {int(is_ptx)}, eb_bra_{tag}_images, eb_bra_{tag}_shared}};"
    )
    out.append("")
    return "\n".join(out)


def _header(comment: str, n_variants: int, n_policy: int, n_hidden: int, n_sets: int) -> str:
    from edge_biformer.kernels.bra_triton import KERNEL_NAME, RUNTIME_PARAMS

    defines = {
        "EB_BRA_GENERATED_TABLES_FORMAT": str(TABLES_FORMAT),
        "EB_BRA_NUM_VARIANTS": str(n_variants),
        "EB_BRA_NUM_POLICY": str(n_policy),
        "EB_BRA_NUM_KERNEL_ARGS": str(len(RUNTIME_PARAMS)),
        "EB_BRA_NUM_HIDDEN_ARGS": str(n_hidden),
        "EB_BRA_KERNEL_NAME": f'"{KERNEL_NAME}"',
        "EB_BRA_NUM_IMAGE_SETS": str(n_sets),
        "EB_BRA_NUM_HEAD_BUCKETS": str(len(HEAD_DIM_BUCKETS)),
        "EB_BRA_NUM_REGION_CLASSES": str(len(REGION_CLASSES)),
        "EB_BRA_NUM_DTYPES": str(len(_DTYPE_ENUM)),
        "EB_BRA_MAX_GRID": f"{MAX_GRID}LL",
        "EB_BRA_ALIGN_ELEMS": str(ALIGN_ELEMS),
        "EB_BRA_ALIGN_BYTES": f"{ALIGN_BYTES}u",
        "EB_BRA_MAX_KEYS": f"{MAX_KEYS}LL",
    }
    return "\n".join(
        [
            f"/* {comment} */",
            "/* Sizes and names of the generated kernel tables; included by bra_kernel_tables.h. */",
            "#ifndef EDGE_BIFORMER_BRA_KERNELS_H",
            "#define EDGE_BIFORMER_BRA_KERNELS_H",
            "",
            *(f"#define {name} {value}" for name, value in defines.items()),
            "",
            "#endif /* EDGE_BIFORMER_BRA_KERNELS_H */",
            "",
        ]
    )


def _tables_source(
    comment: str,
    variants: Sequence[Variant],
    policy: dict[tuple[str, bool, int, str], Variant],
    set_names: Sequence[str],
) -> str:
    rows = [
        f"    {{{_DTYPE_ENUM[v.dtype]}, {int(v.aligned)}, {v.block_d}, {v.block_m}, {v.block_n}, "
        f'{v.heads_per_tile}, {v.num_warps}, "{v.name}"}},'
        for v in variants
    ]
    index = {v.name: i for i, v in enumerate(variants)}
    regions = [name for name, _ in REGION_CLASSES]
    policy_rows = [
        f"    {{{_DTYPE_ENUM[dtype]}, {int(aligned)}, {block_d}, {regions.index(region)}, {index[v.name]}}},"
        f" /* {region}: {v.name} */"
        for (dtype, aligned, block_d, region), v in sorted(
            policy.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], regions.index(kv[0][3]))
        )
    ]
    head_buckets = ", ".join(str(b) for b in HEAD_DIM_BUCKETS)
    region_bounds = ", ".join(str(b or 0) for _, b in REGION_CLASSES)
    has_aligned = ", ".join(str(int(d in ALIGNED_DTYPES)) for d in _DTYPE_ENUM)
    return "\n".join(
        [
            f"/* {comment} */",
            "/* Variants, image sets and tile policy (edge_biformer/kernels/config.py) of the",
            " * routed-attention kernels, for the launcher plugins/bra/kernels/bra_launch.c. */",
            '#include "bra_kernel_tables.h"',
            "",
            *(f"extern const eb_bra_image_set_t eb_bra_image_set_{n};" for n in set_names),
            "",
            "const eb_bra_variant_t eb_bra_variants[EB_BRA_NUM_VARIANTS] = {",
            *rows,
            "};",
            "",
            "const eb_bra_policy_t eb_bra_policy[EB_BRA_NUM_POLICY] = {",
            *policy_rows,
            "};",
            "",
            "const eb_bra_image_set_t* const eb_bra_image_sets[EB_BRA_NUM_IMAGE_SETS] = {",
            *(f"    &eb_bra_image_set_{n}," for n in set_names),
            "};",
            "",
            f"const int eb_bra_head_buckets[EB_BRA_NUM_HEAD_BUCKETS] = {{{head_buckets}}};",
            f"const int64_t eb_bra_region_bound[EB_BRA_NUM_REGION_CLASSES] = {{{region_bounds}}};",
            f"const int eb_bra_dtype_has_aligned[EB_BRA_NUM_DTYPES] = {{{has_aligned}}};",
            "",
        ]
    )


def generate(
    *,
    variants: Sequence[Variant],
    policy: dict[tuple[str, bool, int, str], Variant],
    images: Sequence[Image],
    archs: Sequence[int],
    ptx_archs: Sequence[int],
    n_hidden: int,
    header_comment: str,
) -> dict[str, str]:
    """All generated C sources by file name (``aot.generated_sources`` lists the ``.c`` ones).

    ``policy`` maps every (dtype, aligned, head-dim bucket, region class) built to one of ``variants``.
    """
    missing = {v.name for v in policy.values()} - {v.name for v in variants}
    if missing:
        raise ValueError(f"the policy names variants that are not built: {sorted(missing)}")
    by_arch: dict[int, dict[str, Image]] = {}
    for img in images:
        by_arch.setdefault(img.arch, {})[img.variant] = img
    sets = [(a, False) for a in sorted(archs)] + [(a, True) for a in sorted(ptx_archs)]
    set_names = [image_set_name(a, is_ptx) for a, is_ptx in sets]
    sources = {
        HEADER: _header(header_comment, len(variants), len(policy), n_hidden, len(sets)),
        TABLES_SOURCE: _tables_source(header_comment, variants, policy, set_names),
    }
    for arch, is_ptx in sets:
        sources[images_source_name(arch, is_ptx)] = _images_source(
            header_comment, arch, is_ptx, variants, by_arch[arch]
        )
    return sources
