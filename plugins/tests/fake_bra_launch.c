/*
 * Test double of the generated kernel library (bra_launch.h) for the host-side unit test: checks the
 * parameters like the real eb_bra_check (contract + head dims <= 128 + sm >= 75), counts modules and
 * records launches; each module remembers the (mock driver's) context it was loaded in, and an unload in
 * another context is counted. Never linked into libedge_biformer_plugins.so.
 */
#include "fake_bra_launch.h"

#include <stddef.h>

eb_bra_status_t eb_fake_load_status = EB_BRA_SUCCESS;
eb_bra_status_t eb_fake_launch_status = EB_BRA_SUCCESS;
int eb_fake_modules_loaded = 0;
int eb_fake_launches = 0;
int eb_fake_wrong_context_unloads = 0;
eb_bra_params_t eb_fake_last_params;
CUstream eb_fake_last_stream = NULL;
CUdeviceptr eb_fake_last_ptrs[5];

/* A module remembers the context it was loaded in (the mock driver's current one). */
struct eb_bra_module
{
    CUcontext ctx;
    int live;
};
#define EB_FAKE_MAX_MODULES 64
static struct eb_bra_module s_modules[EB_FAKE_MAX_MODULES];

eb_bra_status_t eb_bra_check(const eb_bra_params_t* p, int sm)
{
    if (p == NULL || p->n_win < 1 || p->num_heads < 1 || p->topk < 1 || p->topk > p->n_win * p->n_win
        || p->hq % p->n_win != 0 || p->wq % p->n_win != 0 || p->hk % p->n_win != 0 || p->wk % p->n_win != 0
        || p->c_qk % p->num_heads != 0 || p->c_v % p->num_heads != 0)
    {
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }
    if (sm < 75)
    {
        return EB_BRA_ERR_NO_KERNEL_FOR_ARCH;
    }
    if (p->c_qk / p->num_heads > 128 || p->c_v / p->num_heads > 128)
    {
        return EB_BRA_ERR_UNSUPPORTED;
    }
    return EB_BRA_SUCCESS;
}

eb_bra_status_t eb_bra_module_load(eb_bra_module_t* module)
{
    if (eb_fake_load_status != EB_BRA_SUCCESS)
    {
        *module = NULL;
        return eb_fake_load_status;
    }
    for (int i = 0; i < EB_FAKE_MAX_MODULES; ++i)
    {
        if (!s_modules[i].live)
        {
            s_modules[i].live = 1;
            cuCtxGetCurrent(&s_modules[i].ctx);
            ++eb_fake_modules_loaded;
            *module = &s_modules[i];
            return EB_BRA_SUCCESS;
        }
    }
    *module = NULL;
    return EB_BRA_ERR_CUDA;
}

void eb_bra_module_unload(eb_bra_module_t module)
{
    if (module != NULL && module->live)
    {
        CUcontext current = NULL;
        cuCtxGetCurrent(&current);
        if (current != module->ctx)
        {
            ++eb_fake_wrong_context_unloads;
        }
        module->live = 0;
        --eb_fake_modules_loaded;
    }
}

eb_bra_status_t eb_bra_launch(eb_bra_module_t module, CUstream stream, const eb_bra_params_t* params, CUdeviceptr q,
    CUdeviceptr k, CUdeviceptr v, CUdeviceptr r_idx, CUdeviceptr o)
{
    if (module == NULL || params == NULL)
    {
        return EB_BRA_ERR_INVALID_ARGUMENT;
    }
    ++eb_fake_launches;
    eb_fake_last_params = *params;
    eb_fake_last_stream = stream;
    eb_fake_last_ptrs[0] = q;
    eb_fake_last_ptrs[1] = k;
    eb_fake_last_ptrs[2] = v;
    eb_fake_last_ptrs[3] = r_idx;
    eb_fake_last_ptrs[4] = o;
    return eb_fake_launch_status;
}

const char* eb_bra_status_string(eb_bra_status_t status)
{
    switch (status)
    {
    case EB_BRA_SUCCESS: return "success";
    case EB_BRA_ERR_INVALID_ARGUMENT: return "invalid argument";
    case EB_BRA_ERR_NO_KERNEL_FOR_ARCH: return "no kernel for this GPU architecture";
    case EB_BRA_ERR_UNSUPPORTED: return "unsupported by the compiled kernels";
    case EB_BRA_ERR_CUDA: return "CUDA driver error";
    }
    return "unknown";
}

CUresult eb_bra_last_cuda_error(void)
{
    return eb_fake_launch_status == EB_BRA_ERR_CUDA ? CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES : CUDA_SUCCESS;
}
