/*
 * The launcher of the AOT-compiled routed-attention kernels: implements plugins/bra/bra_launch.h (and
 * the extras of bra_kernel_tables.h) with the CUDA driver API only. Image selection at module load,
 * variant selection and cuLaunchKernel at launch; eb_bra_launch allocates nothing, never synchronises
 * and needs no workspace.
 *
 * Hand-written; it reads the tables the AOT step generates (bra_kernels.h, bra_kernels.c and one
 * bra_images_*.c per image set, see bra_kernel_tables.h). The tile policy it applies is the one of
 * edge_biformer/kernels/config.py, whose tables the generator writes; tests/kernels checks that this
 * file picks the variant, grid and kernel arguments the Python launch plan picks.
 */
#include "bra_kernel_tables.h"

#include <stdint.h>
#include <stdlib.h>

#if defined(__cplusplus)
#define EB_BRA_THREAD_LOCAL thread_local
#else
#define EB_BRA_THREAD_LOCAL _Thread_local
#endif

#define EB_BRA_LOG2E 1.44269504088896340736f

/* The kernel's run-time arguments (edge_biformer/kernels/bra_triton.py, RUNTIME_PARAMS), in the order
 * eb_bra_launch passes them: 5 pointers, 12 strides, 11 shape ints, the scale and a multiplier and a
 * shift for each of the EB_BRA_NUM_DIVISORS run-time divisors. */
#define EB_BRA_NUM_DIVISORS 7
EB_BRA_STATIC_ASSERT(EB_BRA_NUM_KERNEL_ARGS == 29 + 2 * EB_BRA_NUM_DIVISORS,
                     "the kernel's run-time arguments changed: update eb_bra_launch");

struct eb_bra_module {
    const eb_bra_image_set_t* set;
    CUmodule modules[EB_BRA_NUM_VARIANTS];
    CUfunction functions[EB_BRA_NUM_VARIANTS];
};

static EB_BRA_THREAD_LOCAL CUresult eb_bra_error = CUDA_SUCCESS;

static eb_bra_status_t eb_bra_cuda_failed(CUresult result) {
    eb_bra_error = result;
    return EB_BRA_ERR_CUDA;
}

CUresult eb_bra_last_cuda_error(void) {
    return eb_bra_error;
}

const char* eb_bra_status_string(eb_bra_status_t status) {
    switch (status) {
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
    }
    return "unknown eb_bra status";
}

const char* eb_bra_variant_name(int variant) {
    if (variant < 0 || variant >= EB_BRA_NUM_VARIANTS) {
        return NULL;
    }
    return eb_bra_variants[variant].name;
}

typedef struct eb_bra_plan {
    int variant;
    unsigned int grid;
    int32_t hq, wq, hk, wk; /* region sizes in tokens */
    int32_t d_qk, d_v, n_mtiles, n_groups;
} eb_bra_plan_t;

/* Multiplier and shift of a division by d (1 <= d < 2**31) for dividends 0 <= n < 2**31: the kernel
 * computes n / d as (umulhi(n, m) + n) >> s (edge_biformer.kernels.launch.magic, the same numbers). */
static void eb_bra_magic(int64_t d, uint32_t* m, uint32_t* s) {
    uint32_t shift = 0;
    while (((int64_t)1 << shift) < d) {
        ++shift;
    }
    *s = shift;
    *m = (uint32_t)((((uint64_t)1 << (32u + shift)) / (uint64_t)d) + 1u - ((uint64_t)1 << 32));
}

static int eb_bra_head_bucket(int32_t d) {
    for (int i = 0; i < EB_BRA_NUM_HEAD_BUCKETS; ++i) {
        if (d <= eb_bra_head_buckets[i]) {
            return eb_bra_head_buckets[i];
        }
    }
    return 0;
}

static int eb_bra_region_class(int64_t tokens) {
    for (int i = 0; i < EB_BRA_NUM_REGION_CLASSES; ++i) {
        if (eb_bra_region_bound[i] == 0 || tokens <= eb_bra_region_bound[i]) {
            return i;
        }
    }
    return EB_BRA_NUM_REGION_CLASSES - 1;
}

/* The variant of the policy row with the smallest head-dim bucket that holds d (a partial AOT build
 * may lack the bucket of d itself; a larger one masks the extra channels), or -1. `exact` (the
 * aligned variants, compiled for head dims equal to their bucket) admits only the bucket d itself. */
static int eb_bra_find_variant(int dtype, int aligned, int32_t d, int region, int exact) {
    int best = -1;
    for (int i = 0; i < EB_BRA_NUM_POLICY; ++i) {
        const eb_bra_policy_t* p = &eb_bra_policy[i];
        if (p->dtype == dtype && p->aligned == aligned && p->region == region &&
            (exact ? p->block_d == d : p->block_d >= d) &&
            (best < 0 || p->block_d < eb_bra_policy[best].block_d)) {
            best = i;
        }
    }
    return best < 0 ? -1 : eb_bra_policy[best].variant;
}

/* One dense NHWC map: its image must be addressable with 32-bit offsets (and strides). */
static int eb_bra_fits_int32(int32_t h, int32_t w, int32_t c) {
    const int64_t hw = (int64_t)h * (int64_t)w;
    return hw <= INT32_MAX && hw * (int64_t)c <= INT32_MAX;
}

/* Validate params (contract, then compiled variants) and compute the launch plan. `aligned` says
 * whether the pointers are EB_BRA_ALIGN_BYTES-aligned; the channel alignment is checked here. */
static eb_bra_status_t eb_bra_make_plan(const eb_bra_params_t* p, int aligned, eb_bra_plan_t* plan) {
    if (p == NULL) {
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }
    const int32_t s = p->n_win;
    if (s < 1 || p->num_heads < 1 || p->batch < 0) {
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }
    if (p->dtype != EB_BRA_FLOAT32 && p->dtype != EB_BRA_FLOAT16) {
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }
    if (p->hq < s || p->hq % s != 0 || p->wq < s || p->wq % s != 0 || p->hk < s || p->hk % s != 0 ||
        p->wk < s || p->wk % s != 0) {
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }
    if (p->c_qk < 1 || p->c_qk % p->num_heads != 0 || p->c_v < 1 || p->c_v % p->num_heads != 0) {
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }
    if (p->topk < 1 || (int64_t)p->topk > (int64_t)s * (int64_t)s) {
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }
    const int32_t d_qk = p->c_qk / p->num_heads;
    const int32_t d_v = p->c_v / p->num_heads;
    const int32_t d_max = d_qk > d_v ? d_qk : d_v;
    if (eb_bra_head_bucket(d_max) == 0) {
        return EB_BRA_ERR_UNSUPPORTED;
    }
    if (!eb_bra_fits_int32(p->hq, p->wq, p->c_qk) || !eb_bra_fits_int32(p->hk, p->wk, p->c_qk) ||
        !eb_bra_fits_int32(p->hk, p->wk, p->c_v) || !eb_bra_fits_int32(p->hq, p->wq, p->c_v)) {
        return EB_BRA_ERR_UNSUPPORTED;
    }
    const int32_t hq = p->hq / s, wq = p->wq / s, hk = p->hk / s, wk = p->wk / s;
    const int64_t tq = (int64_t)hq * (int64_t)wq;
    if ((int64_t)p->topk * (int64_t)hk * (int64_t)wk > EB_BRA_MAX_KEYS) {
        return EB_BRA_ERR_UNSUPPORTED;
    }
    /* Aligned variants: 16-byte pointers (the caller's `aligned`), head dims equal to their bucket
     * (multiples of EB_BRA_ALIGN_ELEMS, hence so are the channel counts and the dense strides). */
    const int bucket = eb_bra_head_bucket(d_max);
    const int region = eb_bra_region_class(tq);
    int variant = -1;
    if (aligned && eb_bra_dtype_has_aligned[p->dtype] && d_qk == bucket && d_v == bucket &&
        bucket % EB_BRA_ALIGN_ELEMS == 0) {
        variant = eb_bra_find_variant((int)p->dtype, 1, d_max, region, 1);
    }
    if (variant < 0) {
        variant = eb_bra_find_variant((int)p->dtype, 0, d_max, region, 0);
    }
    if (variant < 0) {
        return EB_BRA_ERR_UNSUPPORTED;
    }
    const eb_bra_variant_t* v = &eb_bra_variants[variant];
    const int64_t rows = v->block_m / v->heads_per_tile; /* query tokens of one head per tile */
    const int64_t n_mtiles = (tq + rows - 1) / rows;
    const int64_t n_groups = ((int64_t)p->num_heads + v->heads_per_tile - 1) / v->heads_per_tile;
    /* s*s*n_mtiles <= Hq*Wq < 2**31 and n_groups < 2**31: no int64 overflow below. */
    const int64_t per_image = (int64_t)s * (int64_t)s * n_mtiles * n_groups;
    int64_t grid = 0;
    if (p->batch > 0) {
        if (per_image > EB_BRA_MAX_GRID || per_image * (int64_t)p->batch > EB_BRA_MAX_GRID) {
            return EB_BRA_ERR_UNSUPPORTED;
        }
        grid = per_image * (int64_t)p->batch;
    }
    if (plan != NULL) {
        plan->variant = variant;
        plan->grid = (unsigned int)grid;
        plan->hq = hq;
        plan->wq = wq;
        plan->hk = hk;
        plan->wk = wk;
        plan->d_qk = d_qk;
        plan->d_v = d_v;
        plan->n_mtiles = (int32_t)n_mtiles;
        plan->n_groups = (int32_t)n_groups;
    }
    return EB_BRA_SUCCESS;
}

int eb_bra_select_variant(const eb_bra_params_t* params, int aligned) {
    eb_bra_plan_t plan;
    if (eb_bra_make_plan(params, aligned, &plan) != EB_BRA_SUCCESS) {
        return -1;
    }
    return plan.variant;
}

/* Image sets usable on compute capability `sm`, best first: a cubin for exactly this arch; a cubin
 * of the same major and an older minor with a portable target (sm_80 runs on 8.6, 8.7, 8.9); PTX
 * the driver can JIT (portable targets up to this arch, arch-specific ones only on their arch). */
static int eb_bra_candidates(int sm, int* order) {
    int n = 0;
    for (int i = 0; i < EB_BRA_NUM_IMAGE_SETS; ++i) {
        const eb_bra_image_set_t* set = eb_bra_image_sets[i];
        if (!set->is_ptx && set->arch == sm) {
            order[n++] = i;
        }
    }
    for (int i = EB_BRA_NUM_IMAGE_SETS - 1; i >= 0; --i) {
        const eb_bra_image_set_t* set = eb_bra_image_sets[i];
        if (!set->is_ptx && !set->arch_specific && set->arch / 10 == sm / 10 && set->arch < sm) {
            order[n++] = i;
        }
    }
    for (int i = EB_BRA_NUM_IMAGE_SETS - 1; i >= 0; --i) {
        const eb_bra_image_set_t* set = eb_bra_image_sets[i];
        if (set->is_ptx && (set->arch_specific ? set->arch == sm : set->arch <= sm)) {
            order[n++] = i;
        }
    }
    return n;
}

eb_bra_status_t eb_bra_check(const eb_bra_params_t* params, int sm) {
    const eb_bra_status_t status = eb_bra_make_plan(params, 0, NULL);
    if (status != EB_BRA_SUCCESS) {
        return status;
    }
    if (sm > 0) {
        int order[EB_BRA_NUM_IMAGE_SETS];
        if (eb_bra_candidates(sm, order) == 0) {
            return EB_BRA_ERR_NO_KERNEL_FOR_ARCH;
        }
    }
    return EB_BRA_SUCCESS;
}

static void eb_bra_release(struct eb_bra_module* module) {
    for (int i = 0; i < EB_BRA_NUM_VARIANTS; ++i) {
        if (module->modules[i] != NULL) {
            (void)cuModuleUnload(module->modules[i]);
        }
        module->modules[i] = NULL;
        module->functions[i] = NULL;
    }
    module->set = NULL;
}

static CUresult eb_bra_load_set(struct eb_bra_module* module, const eb_bra_image_set_t* set,
                                int shared_optin) {
    for (int i = 0; i < EB_BRA_NUM_VARIANTS; ++i) {
        CUresult result = cuModuleLoadData(&module->modules[i], set->images[i]);
        if (result != CUDA_SUCCESS) {
            module->modules[i] = NULL;
            return result;
        }
        result = cuModuleGetFunction(&module->functions[i], module->modules[i], EB_BRA_KERNEL_NAME);
        if (result != CUDA_SUCCESS) {
            return result;
        }
        const unsigned int shared = set->shared_bytes[i];
        if (shared > 49152u) {
            if (shared_optin < 0 || shared > (unsigned int)shared_optin) {
                /* More shared memory than this GPU offers per block: the variant stays unusable
                 * (eb_bra_launch answers EB_BRA_ERR_UNSUPPORTED for it). */
                (void)cuModuleUnload(module->modules[i]);
                module->modules[i] = NULL;
                module->functions[i] = NULL;
                continue;
            }
            result = cuFuncSetAttribute(module->functions[i], CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                        (int)shared);
            if (result != CUDA_SUCCESS) {
                return result;
            }
        }
    }
    module->set = set;
    return CUDA_SUCCESS;
}

eb_bra_status_t eb_bra_module_load(eb_bra_module_t* module) {
    if (module == NULL) {
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }
    *module = NULL;
    CUdevice device;
    CUresult result = cuCtxGetDevice(&device);
    if (result != CUDA_SUCCESS) {
        return eb_bra_cuda_failed(result);
    }
    int major = 0, minor = 0, shared_optin = 0;
    result = cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
    if (result == CUDA_SUCCESS) {
        result = cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
    }
    if (result == CUDA_SUCCESS) {
        result = cuDeviceGetAttribute(&shared_optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                                      device);
    }
    if (result != CUDA_SUCCESS) {
        return eb_bra_cuda_failed(result);
    }
    int order[EB_BRA_NUM_IMAGE_SETS];
    const int n = eb_bra_candidates(major * 10 + minor, order);
    if (n == 0) {
        return EB_BRA_ERR_NO_KERNEL_FOR_ARCH;
    }
    struct eb_bra_module* loaded = (struct eb_bra_module*)calloc(1, sizeof(struct eb_bra_module));
    if (loaded == NULL) {
        return eb_bra_cuda_failed(CUDA_ERROR_OUT_OF_MEMORY);
    }
    for (int c = 0; c < n; ++c) {
        result = eb_bra_load_set(loaded, eb_bra_image_sets[order[c]], shared_optin);
        if (result == CUDA_SUCCESS) {
            *module = loaded;
            return EB_BRA_SUCCESS;
        }
        eb_bra_release(loaded);
    }
    free(loaded);
    return eb_bra_cuda_failed(result);
}

void eb_bra_module_unload(eb_bra_module_t module) {
    if (module == NULL) {
        return;
    }
    eb_bra_release(module);
    free(module);
}

int eb_bra_module_arch(eb_bra_module_t module, int* is_ptx) {
    if (module == NULL || module->set == NULL) {
        return -1;
    }
    if (is_ptx != NULL) {
        *is_ptx = module->set->is_ptx;
    }
    return module->set->arch;
}

eb_bra_status_t eb_bra_launch(eb_bra_module_t module, CUstream stream, const eb_bra_params_t* params,
                              CUdeviceptr q, CUdeviceptr k, CUdeviceptr v, CUdeviceptr r_idx,
                              CUdeviceptr o) {
    if (module == NULL || module->set == NULL) {
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }
    const int aligned = q % EB_BRA_ALIGN_BYTES == 0 && k % EB_BRA_ALIGN_BYTES == 0 &&
                        v % EB_BRA_ALIGN_BYTES == 0 && o % EB_BRA_ALIGN_BYTES == 0;
    eb_bra_plan_t plan;
    const eb_bra_status_t status = eb_bra_make_plan(params, aligned, &plan);
    if (status != EB_BRA_SUCCESS) {
        return status;
    }
    if (plan.grid == 0) {
        return EB_BRA_SUCCESS;
    }
    if (q == 0 || k == 0 || v == 0 || r_idx == 0 || o == 0) {
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }
    CUfunction function = module->functions[plan.variant];
    if (function == NULL) {
        return EB_BRA_ERR_UNSUPPORTED;
    }
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
    int32_t n_mtiles = plan.n_mtiles, n_groups = plan.n_groups;
    float qk_scale = params->scale * EB_BRA_LOG2E;
    /* The divisors in the order of bra_triton.DIVISORS: head groups, query tiles, regions per image,
     * n_win, query region width, key tokens per region, key region width. */
    const int64_t divisors[EB_BRA_NUM_DIVISORS] = {n_groups, n_mtiles, (int64_t)n_win * n_win, n_win, wq,
                                                   (int64_t)hk * wk, wk};
    uint32_t magic[2 * EB_BRA_NUM_DIVISORS];
    for (int i = 0; i < EB_BRA_NUM_DIVISORS; ++i) {
        eb_bra_magic(divisors[i], &magic[2 * i], &magic[2 * i + 1]);
    }
    void* args[EB_BRA_NUM_KERNEL_ARGS + EB_BRA_NUM_HIDDEN_ARGS] = {
        &q, &k, &v, &r_idx, &o,
        &stride_qn, &stride_qh, &stride_qw, &stride_kn, &stride_kh, &stride_kw,
        &stride_vn, &stride_vh, &stride_vw, &stride_on, &stride_oh, &stride_ow,
        &n_win, &hq, &wq, &hk, &wk, &d_qk, &d_v, &num_heads, &topk, &n_mtiles, &n_groups, &qk_scale};
    for (int i = 0; i < 2 * EB_BRA_NUM_DIVISORS; ++i) {
        args[29 + i] = &magic[i];
    }
#if EB_BRA_NUM_HIDDEN_ARGS > 0
    /* Triton's hidden pointer arguments (global/profile scratch): null, the variants need no scratch. */
    CUdeviceptr hidden[EB_BRA_NUM_HIDDEN_ARGS] = {0};
    for (int i = 0; i < EB_BRA_NUM_HIDDEN_ARGS; ++i) {
        args[EB_BRA_NUM_KERNEL_ARGS + i] = &hidden[i];
    }
#endif
    const unsigned int threads = 32u * (unsigned int)eb_bra_variants[plan.variant].num_warps;
    const CUresult result = cuLaunchKernel(function, plan.grid, 1, 1, threads, 1, 1,
                                           module->set->shared_bytes[plan.variant], stream, args, NULL);
    if (result != CUDA_SUCCESS) {
        return eb_bra_cuda_failed(result);
    }
    return EB_BRA_SUCCESS;
}
