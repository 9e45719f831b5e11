/*
 * The kernel module of each CUDA context, shared by the BiLevelRoutingAttention plugin instances
 * attached in that context.
 */
#ifndef EDGE_BIFORMER_BRA_KERNEL_MODULE_H
#define EDGE_BIFORMER_BRA_KERNEL_MODULE_H

#include "bra_launch.h"

#include <memory>

namespace edge_biformer
{
namespace plugin
{

//! The kernel module of one CUDA context, shared (reference counted) by every attached plugin
//! instance in that context: an engine has one instance per BRA layer (26 in BiFormer-S), and each
//! loading all kernel variants would multiply the load time and device memory by that count. The
//! last instance released unloads it, with its own context made current around cuModuleUnload (the
//! releasing thread may have another context current, or none).
using BraModulePtr = std::shared_ptr<struct eb_bra_module>;

//! The module of context `ctx` (current on this thread): the one already loaded there if some instance
//! still holds it, else a newly loaded one. Modules are found by the context's ID (cuCtxGetId, CUDA 12
//! drivers: unique for the life of the process), where the driver has none by the context handle,
//! which a new context may reuse once the old one is destroyed (TensorRT's rule, execution contexts
//! before their CUDA context, keeps that safe). On failure returns null and sets `status`.
BraModulePtr acquireKernelModule(CUcontext ctx, eb_bra_status_t* status);

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_BRA_KERNEL_MODULE_H
