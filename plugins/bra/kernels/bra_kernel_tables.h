/*
 * The tables of the AOT-compiled routed-attention kernels, as the launcher (bra_launch.c) reads them,
 * and a few extras beyond plugins/bra/bra_launch.h (which this file includes) for tests and tools.
 *
 * The AOT step (python -m edge_biformer.kernels.aot, edge_biformer/kernels/cgen.py) writes:
 *   bra_kernels.h           the sizes of the tables, the kernel's argument counts and name;
 *   bra_kernels.c           the variant table, the tile policy (which variant serves which dtype,
 *                           alignment, head-dim bucket and region class: edge_biformer/kernels/config.py)
 *                           and the list of image sets, declared below;
 *   bra_images_sm<arch>.c   one image set: the cubins of every variant for that arch;
 *   bra_images_ptx<arch>.c  one image set: the PTX of every variant, JIT-compiled by the driver.
 * Everything here is C11 and C++11.
 */
#ifndef EDGE_BIFORMER_BRA_KERNEL_TABLES_H
#define EDGE_BIFORMER_BRA_KERNEL_TABLES_H

#include "bra_kernels.h"
#include "bra_launch.h"

#include <stdint.h>

/* The layout of the tables below; the generator writes the one it targets into bra_kernels.h. */
#define EB_BRA_TABLES_FORMAT 3
#if !defined(EB_BRA_GENERATED_TABLES_FORMAT) || EB_BRA_GENERATED_TABLES_FORMAT != EB_BRA_TABLES_FORMAT
#error "bra_kernels.h was generated for another launcher: regenerate it with python -m edge_biformer.kernels.aot"
#endif

#if defined(__cplusplus)
#define EB_BRA_ALIGNAS(n) alignas(n)
#define EB_BRA_STATIC_ASSERT(cond, message) static_assert(cond, message)
#else
#define EB_BRA_ALIGNAS(n) _Alignas(n)
#define EB_BRA_STATIC_ASSERT(cond, message) _Static_assert(cond, message)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The images of all variants for one target: cubins for sm_<arch>, or PTX for JIT. */
typedef struct eb_bra_image_set {
    int arch;          /* major*10 + minor */
    int arch_specific; /* 1 for sm_90a-style targets: usable on exactly that arch only */
    int is_ptx;        /* 1: NUL-terminated PTX text, 0: cubin */
    const unsigned char* const* images; /* [EB_BRA_NUM_VARIANTS] */
    const unsigned int* shared_bytes;   /* [EB_BRA_NUM_VARIANTS] dynamic shared memory per launch */
} eb_bra_image_set_t;

/* One compiled form of the kernel (edge_biformer.kernels.config.Variant). */
typedef struct eb_bra_variant {
    int dtype;          /* eb_bra_dtype_t */
    int aligned;        /* 1: head dims equal to block_d, 16-element strides, 16-byte pointers */
    int block_d;        /* head-dim bucket */
    int block_m;        /* query rows per program */
    int block_n;        /* routed keys per step */
    int heads_per_tile; /* heads sharing the block_m rows (block_m / heads_per_tile tokens each) */
    int num_warps;
    const char* name;
} eb_bra_variant_t;

/* One row of the tile policy: the variant of a (dtype, alignment, head-dim bucket, region class). */
typedef struct eb_bra_policy {
    int dtype;
    int aligned;
    int block_d;
    int region; /* index into eb_bra_region_bound */
    int variant; /* index into eb_bra_variants */
} eb_bra_policy_t;

/* The variants, in the order of the manifest's "variants" and of every image set's images. */
extern const eb_bra_variant_t eb_bra_variants[EB_BRA_NUM_VARIANTS];
/* The tile policy of the variants built (config.policy for the AOT step's dtypes and head dims). */
extern const eb_bra_policy_t eb_bra_policy[EB_BRA_NUM_POLICY];
/* The image sets compiled in: cubins by arch, then PTX by arch. */
extern const eb_bra_image_set_t* const eb_bra_image_sets[EB_BRA_NUM_IMAGE_SETS];
/* Tile policy: head-dim buckets (ascending), and region classes: the first class whose bound on the
 * query tokens per region holds (0: no bound). */
extern const int eb_bra_head_buckets[EB_BRA_NUM_HEAD_BUCKETS];
extern const int64_t eb_bra_region_bound[EB_BRA_NUM_REGION_CLASSES];
/* By eb_bra_dtype_t: whether the dtype has aligned variants. */
extern const int eb_bra_dtype_has_aligned[EB_BRA_NUM_DTYPES];

/* The arch of the image set a module loaded (-1 for NULL); *is_ptx (if not NULL) is set to 1
 * when the module was JIT-compiled from PTX. */
int eb_bra_module_arch(eb_bra_module_t module, int* is_ptx);

/* The variant (index into eb_bra_variants) that eb_bra_launch would use for params with the given
 * pointer alignment (1: EB_BRA_ALIGN_BYTES-aligned pointers; the aligned variants also need both
 * head dims equal to their bucket), or -1 if the params are invalid or unsupported. */
int eb_bra_select_variant(const eb_bra_params_t* params, int aligned);

/* The name of a variant ("fp16_a16_d32_m16_n64_h4_w2"), or NULL for an invalid index. */
const char* eb_bra_variant_name(int variant);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_BIFORMER_BRA_KERNEL_TABLES_H */
