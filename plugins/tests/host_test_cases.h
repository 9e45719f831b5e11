/*
 * The parts of bra_plugin_host_test that live in bra_plugin_host_test_runtime.cpp, and what both files use.
 */
#ifndef EDGE_BIFORMER_HOST_TEST_CASES_H
#define EDGE_BIFORMER_HOST_TEST_CASES_H

namespace edge_biformer
{
namespace plugin_test
{

//! The device of the mock driver's context, as major*10 + minor.
void setSm(int sm);

//! The run-time lifecycle, kernel modules across CUDA contexts, logging and registration.
void runRuntimeTests();

} // namespace plugin_test
} // namespace edge_biformer

#endif // EDGE_BIFORMER_HOST_TEST_CASES_H
