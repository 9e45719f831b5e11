"""C code generation for the AOT-compiled routed-attention kernels (used by :mod:`.aot`).

The generated sources implement ``plugins/bra/bra_launch.h`` with the CUDA driver API only. They
compile cleanly as C11 (``gcc -std=c11 -Wall -Wextra -Werror``) and as C++11 (``g++ -x c++``), and
are byte-identical for identical inputs (no timestamps, no paths, sorted tables).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_biformer.kernels.config import (
    ALIGN_BYTES,
    ALIGN_ELEMS,
    ALIGNED_DTYPES,
    HEAD_DIM_BUCKETS,
    MAX_GRID,
    REGION_CLASSES,
    Variant,
)

if TYPE_CHECKING:
    from edge_biformer.kernels.aot import Image

_DTYPE_ENUM = {"fp32": "EB_BRA_FLOAT32", "fp16": "EB_BRA_FLOAT16"}
_BYTES_PER_LINE = 32


def _c_bytes(data: bytes) -> str:
    lines = []
    for i in range(0, len(data), _BYTES_PER_LINE):
        lines.append(",".join(str(b) for b in data[i : i + _BYTES_PER_LINE]) + ",")
    return "\n".join(lines)


def _image_set_name(arch: int, is_ptx: bool) -> str:
    return f"ptx{arch}" if is_ptx else f"sm{arch}"


def _images_source(
    comment: str, arch: int, is_ptx: bool, variants: Sequence[Variant], images: dict[str, Image]
) -> str:
    tag = _image_set_name(arch, is_ptx)
    kind = "PTX (JIT-compiled by the driver)" if is_ptx else "cubins"
    out = [
        f"/* {comment} */",
        f"/* sm_{arch} {kind} of the routed-attention kernel, one per variant. */",
        '#include "bra_images.h"',
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
    arch_specific = int(images[variants[0].name].target.endswith("a"))
    out.append(
        f"const eb_bra_image_set_t eb_bra_image_set_{tag} = "
        f"{{{arch}, {arch_specific}, {int(is_ptx)}, eb_bra_{tag}_images, eb_bra_{tag}_shared}};"
    )
    out.append("")
    return "\n".join(out)


_HEADER = """\
/* {comment} */
/*
 * Internal tables of the generated launcher of the routed-attention kernels, and a few extras
 * beyond plugins/bra/bra_launch.h (which this file includes).
 */
#ifndef EDGE_BIFORMER_BRA_IMAGES_H
#define EDGE_BIFORMER_BRA_IMAGES_H

#include "bra_launch.h"

#ifdef __cplusplus
extern "C" {{
#endif

#define EB_BRA_NUM_VARIANTS {n_variants}
#define EB_BRA_NUM_KERNEL_ARGS {n_args}
#define EB_BRA_NUM_HIDDEN_ARGS {n_hidden}
#define EB_BRA_KERNEL_NAME "{kernel_name}"

#if defined(__cplusplus)
#define EB_BRA_ALIGNAS(n) alignas(n)
#else
#define EB_BRA_ALIGNAS(n) _Alignas(n)
#endif

/* The images of all variants for one target: cubins for sm_<arch>, or PTX for JIT. */
typedef struct eb_bra_image_set {{
    int arch;          /* major*10 + minor */
    int arch_specific; /* 1 for sm_90a-style targets: usable on exactly that arch only */
    int is_ptx;        /* 1: NUL-terminated PTX text, 0: cubin */
    const unsigned char* const* images; /* [EB_BRA_NUM_VARIANTS] */
    const unsigned int* shared_bytes;   /* [EB_BRA_NUM_VARIANTS] dynamic shared memory per launch */
}} eb_bra_image_set_t;

{extern_sets}

/* The arch of the image set a module loaded (-1 for NULL); *is_ptx (if not NULL) is set to 1
 * when the module was JIT-compiled from PTX. */
int eb_bra_module_arch(eb_bra_module_t module, int* is_ptx);

/* The variant (index into the manifest's "variants") that eb_bra_launch would use for params with
 * the given alignment (1: head dims and channel counts multiples of {align_elems} elements and
 * {align_bytes}-byte aligned pointers), or -1 if the params are invalid or unsupported. */
int eb_bra_select_variant(const eb_bra_params_t* params, int aligned);

/* The name of a variant ("fp16_a16_d32_m64_n64_w4"), or NULL for an invalid index. */
const char* eb_bra_variant_name(int variant);

#ifdef __cplusplus
}}
#endif

#endif /* EDGE_BIFORMER_BRA_IMAGES_H */
"""

_LAUNCH = """\
/* {comment} */
/*
 * Implementation of plugins/bra/bra_launch.h for the AOT-compiled routed-attention kernels:
 * image selection at module load, variant selection and cuLaunchKernel at launch. CUDA driver API
 * only; eb_bra_launch allocates nothing, never synchronises and needs no workspace.
 */
#include "bra_images.h"

#include <stdint.h>
#include <stdlib.h>

#if defined(__cplusplus)
#define EB_BRA_THREAD_LOCAL thread_local
#else
#define EB_BRA_THREAD_LOCAL _Thread_local
#endif

#define EB_BRA_MAX_GRID {max_grid}LL
#define EB_BRA_ALIGN_ELEMS {align_elems}
#define EB_BRA_ALIGN_BYTES {align_bytes}u
#define EB_BRA_LOG2E 1.44269504088896340736f

typedef struct eb_bra_variant {{
    int dtype;   /* eb_bra_dtype_t */
    int aligned; /* 1: compiled for 16-element strides/head dims and 16-byte pointers */
    int block_d;
    int region;  /* region class: index into eb_bra_region_bound */
    int block_m;
    int block_n;
    int num_warps;
    const char* name;
}} eb_bra_variant_t;

static const eb_bra_variant_t eb_bra_variants[EB_BRA_NUM_VARIANTS] = {{
{variant_rows}
}};

static const eb_bra_image_set_t* const eb_bra_image_sets[] = {{
{image_set_rows}
}};
#define EB_BRA_NUM_IMAGE_SETS ((int)(sizeof(eb_bra_image_sets) / sizeof(eb_bra_image_sets[0])))

/* Tile policy (edge_biformer/kernels/config.py): head-dim buckets and region classes (the first
 * class whose bound on the query tokens per region holds; 0: no bound). */
static const int eb_bra_head_buckets[] = {{{head_buckets}}};
#define EB_BRA_NUM_HEAD_BUCKETS ((int)(sizeof(eb_bra_head_buckets) / sizeof(eb_bra_head_buckets[0])))
static const int64_t eb_bra_region_bound[] = {{{region_bounds}}};
#define EB_BRA_NUM_REGION_CLASSES ((int)(sizeof(eb_bra_region_bound) / sizeof(eb_bra_region_bound[0])))
static const int eb_bra_dtype_has_aligned[2] = {{{dtype_has_aligned}}}; /* by eb_bra_dtype_t */

struct eb_bra_module {{
    const eb_bra_image_set_t* set;
    CUmodule modules[EB_BRA_NUM_VARIANTS];
    CUfunction functions[EB_BRA_NUM_VARIANTS];
}};

static EB_BRA_THREAD_LOCAL CUresult eb_bra_error = CUDA_SUCCESS;

static eb_bra_status_t eb_bra_cuda_failed(CUresult result) {{
    eb_bra_error = result;
    return EB_BRA_ERR_CUDA;
}}

CUresult eb_bra_last_cuda_error(void) {{
    return eb_bra_error;
}}

const char* eb_bra_status_string(eb_bra_status_t status) {{
    switch (status) {{
    case EB_BRA_SUCCESS:
        return "success";
    case EB_BRA_ERR_INVALID_ARGUMENT:
        return "invalid argument: the shapes or attributes break the BiLevelRoutingAttention contract";
    case EB_BRA_ERR_NO_KERNEL_FOR_ARCH:
        return "no kernel image (cubin or PTX) was built for this GPU architecture";
    case EB_BRA_ERR_UNSUPPORTED:
        return "unsupported: valid for the op but outside the compiled kernel variants";
    case EB_BRA_ERR_CUDA:
        return "a CUDA driver call failed (see eb_bra_last_cuda_error)";
    }}
    return "unknown eb_bra status";
}}

const char* eb_bra_variant_name(int variant) {{
    if (variant < 0 || variant >= EB_BRA_NUM_VARIANTS) {{
        return NULL;
    }}
    return eb_bra_variants[variant].name;
}}

typedef struct eb_bra_plan {{
    int variant;
    unsigned int grid;
    int32_t hq, wq, hk, wk; /* region sizes in tokens */
    int32_t d_qk, d_v, n_mtiles;
}} eb_bra_plan_t;

static int eb_bra_head_bucket(int32_t d) {{
    for (int i = 0; i < EB_BRA_NUM_HEAD_BUCKETS; ++i) {{
        if (d <= eb_bra_head_buckets[i]) {{
            return eb_bra_head_buckets[i];
        }}
    }}
    return 0;
}}

static int eb_bra_region_class(int64_t tokens) {{
    for (int i = 0; i < EB_BRA_NUM_REGION_CLASSES; ++i) {{
        if (eb_bra_region_bound[i] == 0 || tokens <= eb_bra_region_bound[i]) {{
            return i;
        }}
    }}
    return EB_BRA_NUM_REGION_CLASSES - 1;
}}

/* The built variant with the smallest head-dim bucket that holds d (a partial AOT build may lack
 * the bucket of d itself; a larger one masks the extra channels). */
static int eb_bra_find_variant(int dtype, int aligned, int32_t d, int region) {{
    int best = -1;
    for (int i = 0; i < EB_BRA_NUM_VARIANTS; ++i) {{
        const eb_bra_variant_t* v = &eb_bra_variants[i];
        if (v->dtype == dtype && v->aligned == aligned && v->region == region && v->block_d >= d &&
            (best < 0 || v->block_d < eb_bra_variants[best].block_d)) {{
            best = i;
        }}
    }}
    return best;
}}

/* One dense NHWC map: its image must be addressable with 32-bit offsets (and strides). */
static int eb_bra_fits_int32(int32_t h, int32_t w, int32_t c) {{
    const int64_t hw = (int64_t)h * (int64_t)w;
    return hw <= INT32_MAX && hw * (int64_t)c <= INT32_MAX;
}}

/* Validate params (contract, then compiled variants) and compute the launch plan. `aligned` says
 * whether the pointers are EB_BRA_ALIGN_BYTES-aligned; the channel alignment is checked here. */
static eb_bra_status_t eb_bra_make_plan(const eb_bra_params_t* p, int aligned, eb_bra_plan_t* plan) {{
    if (p == NULL) {{
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }}
    const int32_t s = p->n_win;
    if (s < 1 || p->num_heads < 1 || p->batch < 0) {{
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }}
    if (p->dtype != EB_BRA_FLOAT32 && p->dtype != EB_BRA_FLOAT16) {{
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }}
    if (p->hq < s || p->hq % s != 0 || p->wq < s || p->wq % s != 0 || p->hk < s || p->hk % s != 0 ||
        p->wk < s || p->wk % s != 0) {{
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }}
    if (p->c_qk < 1 || p->c_qk % p->num_heads != 0 || p->c_v < 1 || p->c_v % p->num_heads != 0) {{
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }}
    if (p->topk < 1 || (int64_t)p->topk > (int64_t)s * (int64_t)s) {{
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }}
    const int32_t d_qk = p->c_qk / p->num_heads;
    const int32_t d_v = p->c_v / p->num_heads;
    const int32_t d_max = d_qk > d_v ? d_qk : d_v;
    if (eb_bra_head_bucket(d_max) == 0) {{
        return EB_BRA_ERR_UNSUPPORTED;
    }}
    if (!eb_bra_fits_int32(p->hq, p->wq, p->c_qk) || !eb_bra_fits_int32(p->hk, p->wk, p->c_qk) ||
        !eb_bra_fits_int32(p->hk, p->wk, p->c_v) || !eb_bra_fits_int32(p->hq, p->wq, p->c_v)) {{
        return EB_BRA_ERR_UNSUPPORTED;
    }}
    const int32_t hq = p->hq / s, wq = p->wq / s, hk = p->hk / s, wk = p->wk / s;
    const int64_t tq = (int64_t)hq * (int64_t)wq;
    aligned = aligned && eb_bra_dtype_has_aligned[p->dtype] && d_qk % EB_BRA_ALIGN_ELEMS == 0 &&
              d_v % EB_BRA_ALIGN_ELEMS == 0 && p->c_qk % EB_BRA_ALIGN_ELEMS == 0 &&
              p->c_v % EB_BRA_ALIGN_ELEMS == 0;
    const int variant = eb_bra_find_variant((int)p->dtype, aligned ? 1 : 0, d_max, eb_bra_region_class(tq));
    if (variant < 0) {{
        return EB_BRA_ERR_UNSUPPORTED;
    }}
    const int block_m = eb_bra_variants[variant].block_m;
    const int64_t n_mtiles = (tq + block_m - 1) / block_m;
    /* s*s*n_mtiles <= Hq*Wq < 2**31 and num_heads < 2**31: no int64 overflow below. */
    const int64_t per_image = (int64_t)s * (int64_t)s * n_mtiles * (int64_t)p->num_heads;
    int64_t grid = 0;
    if (p->batch > 0) {{
        if (per_image > EB_BRA_MAX_GRID || per_image * (int64_t)p->batch > EB_BRA_MAX_GRID) {{
            return EB_BRA_ERR_UNSUPPORTED;
        }}
        grid = per_image * (int64_t)p->batch;
    }}
    if (plan != NULL) {{
        plan->variant = variant;
        plan->grid = (unsigned int)grid;
        plan->hq = hq;
        plan->wq = wq;
        plan->hk = hk;
        plan->wk = wk;
        plan->d_qk = d_qk;
        plan->d_v = d_v;
        plan->n_mtiles = (int32_t)n_mtiles;
    }}
    return EB_BRA_SUCCESS;
}}

int eb_bra_select_variant(const eb_bra_params_t* params, int aligned) {{
    eb_bra_plan_t plan;
    if (eb_bra_make_plan(params, aligned, &plan) != EB_BRA_SUCCESS) {{
        return -1;
    }}
    return plan.variant;
}}

/* Image sets usable on compute capability `sm`, best first: a cubin for exactly this arch; a cubin
 * of the same major and an older minor with a portable target (sm_80 runs on 8.6, 8.7, 8.9); PTX
 * the driver can JIT (portable targets up to this arch, arch-specific ones only on their arch). */
static int eb_bra_candidates(int sm, int* order) {{
    int n = 0;
    for (int i = 0; i < EB_BRA_NUM_IMAGE_SETS; ++i) {{
        const eb_bra_image_set_t* set = eb_bra_image_sets[i];
        if (!set->is_ptx && set->arch == sm) {{
            order[n++] = i;
        }}
    }}
    for (int i = EB_BRA_NUM_IMAGE_SETS - 1; i >= 0; --i) {{
        const eb_bra_image_set_t* set = eb_bra_image_sets[i];
        if (!set->is_ptx && !set->arch_specific && set->arch / 10 == sm / 10 && set->arch < sm) {{
            order[n++] = i;
        }}
    }}
    for (int i = EB_BRA_NUM_IMAGE_SETS - 1; i >= 0; --i) {{
        const eb_bra_image_set_t* set = eb_bra_image_sets[i];
        if (set->is_ptx && (set->arch_specific ? set->arch == sm : set->arch <= sm)) {{
            order[n++] = i;
        }}
    }}
    return n;
}}

eb_bra_status_t eb_bra_check(const eb_bra_params_t* params, int sm) {{
    const eb_bra_status_t status = eb_bra_make_plan(params, 0, NULL);
    if (status != EB_BRA_SUCCESS) {{
        return status;
    }}
    if (sm > 0) {{
        int order[EB_BRA_NUM_IMAGE_SETS];
        if (eb_bra_candidates(sm, order) == 0) {{
            return EB_BRA_ERR_NO_KERNEL_FOR_ARCH;
        }}
    }}
    return EB_BRA_SUCCESS;
}}

static void eb_bra_release(struct eb_bra_module* module) {{
    for (int i = 0; i < EB_BRA_NUM_VARIANTS; ++i) {{
        if (module->modules[i] != NULL) {{
            (void)cuModuleUnload(module->modules[i]);
        }}
        module->modules[i] = NULL;
        module->functions[i] = NULL;
    }}
    module->set = NULL;
}}

static CUresult eb_bra_load_set(struct eb_bra_module* module, const eb_bra_image_set_t* set,
                                int shared_optin) {{
    for (int i = 0; i < EB_BRA_NUM_VARIANTS; ++i) {{
        CUresult result = cuModuleLoadData(&module->modules[i], set->images[i]);
        if (result != CUDA_SUCCESS) {{
            module->modules[i] = NULL;
            return result;
        }}
        result = cuModuleGetFunction(&module->functions[i], module->modules[i], EB_BRA_KERNEL_NAME);
        if (result != CUDA_SUCCESS) {{
            return result;
        }}
        const unsigned int shared = set->shared_bytes[i];
        if (shared > 49152u) {{
            if (shared_optin < 0 || shared > (unsigned int)shared_optin) {{
                /* More shared memory than this GPU offers per block: the variant stays unusable
                 * (eb_bra_launch answers EB_BRA_ERR_UNSUPPORTED for it). */
                (void)cuModuleUnload(module->modules[i]);
                module->modules[i] = NULL;
                module->functions[i] = NULL;
                continue;
            }}
            result = cuFuncSetAttribute(module->functions[i], CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                        (int)shared);
            if (result != CUDA_SUCCESS) {{
                return result;
            }}
        }}
    }}
    module->set = set;
    return CUDA_SUCCESS;
}}

eb_bra_status_t eb_bra_module_load(eb_bra_module_t* module) {{
    if (module == NULL) {{
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }}
    *module = NULL;
    CUdevice device;
    CUresult result = cuCtxGetDevice(&device);
    if (result != CUDA_SUCCESS) {{
        return eb_bra_cuda_failed(result);
    }}
    int major = 0, minor = 0, shared_optin = 0;
    result = cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
    if (result == CUDA_SUCCESS) {{
        result = cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
    }}
    if (result == CUDA_SUCCESS) {{
        result = cuDeviceGetAttribute(&shared_optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                                      device);
    }}
    if (result != CUDA_SUCCESS) {{
        return eb_bra_cuda_failed(result);
    }}
    int order[EB_BRA_NUM_IMAGE_SETS];
    const int n = eb_bra_candidates(major * 10 + minor, order);
    if (n == 0) {{
        return EB_BRA_ERR_NO_KERNEL_FOR_ARCH;
    }}
    struct eb_bra_module* loaded = (struct eb_bra_module*)calloc(1, sizeof(struct eb_bra_module));
    if (loaded == NULL) {{
        return eb_bra_cuda_failed(CUDA_ERROR_OUT_OF_MEMORY);
    }}
    for (int c = 0; c < n; ++c) {{
        result = eb_bra_load_set(loaded, eb_bra_image_sets[order[c]], shared_optin);
        if (result == CUDA_SUCCESS) {{
            *module = loaded;
            return EB_BRA_SUCCESS;
        }}
        eb_bra_release(loaded);
    }}
    free(loaded);
    return eb_bra_cuda_failed(result);
}}

void eb_bra_module_unload(eb_bra_module_t module) {{
    if (module == NULL) {{
        return;
    }}
    eb_bra_release(module);
    free(module);
}}

int eb_bra_module_arch(eb_bra_module_t module, int* is_ptx) {{
    if (module == NULL || module->set == NULL) {{
        return -1;
    }}
    if (is_ptx != NULL) {{
        *is_ptx = module->set->is_ptx;
    }}
    return module->set->arch;
}}

eb_bra_status_t eb_bra_launch(eb_bra_module_t module, CUstream stream, const eb_bra_params_t* params,
                              CUdeviceptr q, CUdeviceptr k, CUdeviceptr v, CUdeviceptr r_idx,
                              CUdeviceptr o) {{
    if (module == NULL || module->set == NULL) {{
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }}
    const int aligned = q % EB_BRA_ALIGN_BYTES == 0 && k % EB_BRA_ALIGN_BYTES == 0 &&
                        v % EB_BRA_ALIGN_BYTES == 0 && o % EB_BRA_ALIGN_BYTES == 0;
    eb_bra_plan_t plan;
    const eb_bra_status_t status = eb_bra_make_plan(params, aligned, &plan);
    if (status != EB_BRA_SUCCESS) {{
        return status;
    }}
    if (plan.grid == 0) {{
        return EB_BRA_SUCCESS;
    }}
    if (q == 0 || k == 0 || v == 0 || r_idx == 0 || o == 0) {{
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }}
    CUfunction function = module->functions[plan.variant];
    if (function == NULL) {{
        return EB_BRA_ERR_UNSUPPORTED;
    }}
    /* Dense NHWC strides in elements: (image, row, token). They fit int32 (checked in the plan). */
    int32_t stride_qn = params->hq * params->wq * params->c_qk, stride_qh = params->wq * params->c_qk;
    int32_t stride_qw = params->c_qk;
    int32_t stride_kn = params->hk * params->wk * params->c_qk, stride_kh = params->wk * params->c_qk;
    int32_t stride_kw = params->c_qk;
    int32_t stride_vn = params->hk * params->wk * params->c_v, stride_vh = params->wk * params->c_v;
    int32_t stride_vw = params->c_v;
    int32_t stride_on = params->hq * params->wq * params->c_v, stride_oh = params->wq * params->c_v;
    int32_t stride_ow = params->c_v;
    int32_t n_win = params->n_win, hq = plan.hq, wq = plan.wq, hk = plan.hk, wk = plan.wk;
    int32_t d_qk = plan.d_qk, d_v = plan.d_v, num_heads = params->num_heads, topk = params->topk;
    int32_t n_mtiles = plan.n_mtiles;
    float qk_scale = params->scale * EB_BRA_LOG2E;
{hidden_decl}    void* args[EB_BRA_NUM_KERNEL_ARGS + EB_BRA_NUM_HIDDEN_ARGS] = {{
        &q, &k, &v, &r_idx, &o,
        &stride_qn, &stride_qh, &stride_qw, &stride_kn, &stride_kh, &stride_kw,
        &stride_vn, &stride_vh, &stride_vw, &stride_on, &stride_oh, &stride_ow,
        &n_win, &hq, &wq, &hk, &wk, &d_qk, &d_v, &num_heads, &topk, &n_mtiles, &qk_scale{hidden_args}}};
    const unsigned int threads = 32u * (unsigned int)eb_bra_variants[plan.variant].num_warps;
    const CUresult result = cuLaunchKernel(function, plan.grid, 1, 1, threads, 1, 1,
                                           module->set->shared_bytes[plan.variant], stream, args, NULL);
    if (result != CUDA_SUCCESS) {{
        return eb_bra_cuda_failed(result);
    }}
    return EB_BRA_SUCCESS;
}}
"""


def _launch_source(
    comment: str,
    variants: Sequence[Variant],
    set_names: Sequence[str],
    n_hidden: int,
) -> str:
    rows = [
        f"    {{{_DTYPE_ENUM[v.dtype]}, {int(v.aligned)}, {v.block_d}, {v.region_index}, {v.block_m}, "
        f'{v.block_n}, {v.num_warps}, "{v.name}"}},'
        for v in variants
    ]
    if n_hidden:
        hidden_decl = f"    CUdeviceptr hidden[{n_hidden}] = {{{', '.join('0' for _ in range(n_hidden))}}};\n"
        hidden_args = "".join(f", &hidden[{i}]" for i in range(n_hidden))
    else:
        hidden_decl, hidden_args = "", ""
    return _LAUNCH.format(
        comment=comment,
        max_grid=MAX_GRID,
        align_elems=ALIGN_ELEMS,
        align_bytes=ALIGN_BYTES,
        variant_rows="\n".join(rows),
        image_set_rows="\n".join(f"    &eb_bra_image_set_{n}," for n in set_names),
        head_buckets=", ".join(str(b) for b in HEAD_DIM_BUCKETS),
        region_bounds=", ".join(str(b or 0) for _, b in REGION_CLASSES),
        dtype_has_aligned=", ".join(str(int(d in ALIGNED_DTYPES)) for d in ("fp32", "fp16")),
        hidden_decl=hidden_decl,
        hidden_args=hidden_args,
    )


def generate(
    *,
    variants: Sequence[Variant],
    images: Sequence[Image],
    archs: Sequence[int],
    ptx_archs: Sequence[int],
    n_hidden: int,
    header_comment: str,
) -> dict[str, str]:
    """All generated C sources by file name (see ``aot.generated_sources`` for the ``.c`` list)."""
    from edge_biformer.kernels.bra_triton import KERNEL_NAME, RUNTIME_PARAMS

    by_arch: dict[int, dict[str, Image]] = {}
    for img in images:
        by_arch.setdefault(img.arch, {})[img.variant] = img
    set_names = [_image_set_name(a, False) for a in sorted(archs)]
    set_names += [_image_set_name(a, True) for a in sorted(ptx_archs)]
    sources: dict[str, str] = {}
    sources["bra_images.h"] = _HEADER.format(
        comment=header_comment,
        n_variants=len(variants),
        n_args=len(RUNTIME_PARAMS),
        n_hidden=n_hidden,
        kernel_name=KERNEL_NAME,
        extern_sets="\n".join(f"extern const eb_bra_image_set_t eb_bra_image_set_{n};" for n in set_names),
        align_elems=ALIGN_ELEMS,
        align_bytes=ALIGN_BYTES,
    )
    sources["bra_launch.c"] = _launch_source(header_comment, variants, set_names, n_hidden)
    for arch in sorted(archs):
        sources[f"bra_images_sm{arch}.c"] = _images_source(
            header_comment, arch, False, variants, by_arch[arch]
        )
    for arch in sorted(ptx_archs):
        sources[f"bra_images_ptx{arch}.c"] = _images_source(
            header_comment, arch, True, variants, by_arch[arch]
        )
    return sources
