/*
 * bra_plugin_host_test, run time: the lifecycle TensorRT drives per execution context (attach, shapes,
 * enqueue, errors), clones of configured plugins, kernel modules across CUDA contexts (shared per context,
 * unloaded in their own context, never handed to a new context that reuses a destroyed one's handle), the
 * logger finder, and registration without TensorRT. See bra_plugin_host_test.cpp.
 */
#include "bra_contract.h"
#include "fake_bra_launch.h"
#include "host_test_cases.h"
#include "mock_cuda_driver.h"
#include "plugin_logging.h"
#include "plugin_test_helpers.h"
#include "plugin_under_test.h"

#include <cstdint>
#include <string>

#if EB_TRT_HAS_PLUGIN_V3
extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
#else
extern "C" nvinfer1::IPluginCreator* const* getPluginCreators(int32_t& nbCreators);
#endif
#if EB_TRT_HAS_LOAD_LIBRARY
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
#endif
extern "C" char const* edge_biformer_plugin_status();

namespace
{

using namespace edge_biformer::plugin;
using namespace edge_biformer::plugin_test;

//! Device pointers and a stream for enqueue (never dereferenced: the kernels are test doubles).
struct Buffers
{
    std::uintptr_t const fake[5] = {0x1000, 0x2000, 0x3000, 0x4000, 0x5000};
    void const* inputs[4] = {reinterpret_cast<void const*>(fake[0]), reinterpret_cast<void const*>(fake[1]),
        reinterpret_cast<void const*>(fake[2]), reinterpret_cast<void const*>(fake[3])};
    void* outputs[1] = {reinterpret_cast<void*>(fake[4])};
    cudaStream_t stream = reinterpret_cast<cudaStream_t>(std::uintptr_t{0xabc0});
};

//! One valid set of tensors: q/k/v [n, 7, 7, C], r_idx [n, 49, 4], o.
struct Tensors
{
    PluginTensorDesc in[4];
    PluginTensorDesc out[1];
    Tensors(int64_t n, DataType type)
        : in{desc({n, 7, 7, 64}, type), desc({n, 7, 7, 64}, type), desc({n, 7, 7, 32}, type),
            desc({n, 49, 4}, DataType::kINT32)}
        , out{desc({n, 7, 7, 32}, type)}
    {
    }
};

TestPlugin::Ptr runtimePlugin()
{
    Fields f;
    f.scale = 0.125F;
    auto built = TestPlugin::create(f.fc);
    return built ? built->serializeAndRestore() : nullptr;
}

void testRuntimeLifecycle()
{
    auto plugin = runtimePlugin();
    CHECK(plugin != nullptr);
    Recorder recorder;
    mock_cuda_reset();
    setSm(90);
    eb_fake_load_status = EB_BRA_SUCCESS;
    int const modulesBefore = eb_fake_modules_loaded;
    Buffers b;
    {
        auto attached = plugin->attach(&recorder);
        CHECK(attached != nullptr && attached->raw() != plugin->raw());
        CHECK(attached->hasKernelModule());
        CHECK(!plugin->hasKernelModule()); // the module belongs to the attached clone
        CHECK(eb_fake_modules_loaded == modulesBefore + 1);

        PluginTensorDesc in[4] = {desc({2, 14, 21, 64}, DataType::kHALF), desc({2, 28, 14, 64}, DataType::kHALF),
            desc({2, 28, 14, 32}, DataType::kHALF), desc({2, 49, 4}, DataType::kINT32)};
        PluginTensorDesc out[1] = {desc({2, 14, 21, 32}, DataType::kHALF)};
        int const launchesBefore = eb_fake_launches;
        if (kPLUGIN_V3)
        {
            // enqueue before onShapeChange is an error, not a launch.
            CHECK(attached->enqueue(in, out, b.inputs, b.outputs, b.stream) != 0);
            CHECK(eb_fake_launches == launchesBefore);
            CHECK(!recorder.errors.empty() && contains(recorder.errors.back(), "before the plugin was configured"));
        }
        CHECK(attached->run(in, out, b.inputs, b.outputs, b.stream) == 0);
        CHECK(eb_fake_launches == launchesBefore + 1);
        eb_bra_params_t const& p = eb_fake_last_params;
        CHECK(p.batch == 2 && p.hq == 14 && p.wq == 21 && p.hk == 28 && p.wk == 14 && p.c_qk == 64 && p.c_v == 32);
        CHECK(p.n_win == 7 && p.num_heads == 2 && p.topk == 4 && p.scale == 0.125F && p.dtype == EB_BRA_FLOAT16);
        CHECK(eb_fake_last_stream == reinterpret_cast<CUstream>(b.stream));
        for (int i = 0; i < 5; ++i)
        {
            CHECK(eb_fake_last_ptrs[i] == static_cast<CUdeviceptr>(b.fake[i]));
        }
        CHECK(attached->enqueue(in, out, b.inputs, b.outputs, b.stream) == 0); // same shapes: no new check
        CHECK(eb_fake_launches == launchesBefore + 2);

        // New shapes: fp32 with another batch; then an invalid shape is refused with the layer named.
        Tensors t32(1, DataType::kFLOAT);
        CHECK(attached->run(t32.in, t32.out, b.inputs, b.outputs, b.stream) == 0);
        CHECK(eb_fake_last_params.dtype == EB_BRA_FLOAT32 && eb_fake_last_params.batch == 1);

        Tensors bad(1, DataType::kFLOAT);
        bad.in[0] = desc({1, 8, 7, 64}, DataType::kFLOAT);
        bad.out[0] = desc({1, 8, 7, 32}, DataType::kFLOAT);
        int const launchesBad = eb_fake_launches;
        CHECK(attached->run(bad.in, bad.out, b.inputs, b.outputs, b.stream) != 0);
        CHECK(contains(gLogger.last, "layer 'bra_0': input shapes: the heights and widths of q and k/v must "
                                     "be multiples of n_win = 7 (q [1, 8, 7, 64]"));
        CHECK(!kPLUGIN_V3 || contains(recorder.errors.back(), "layer 'bra_0': input shapes"));
        CHECK(attached->enqueue(bad.in, bad.out, b.inputs, b.outputs, b.stream) != 0); // stale params are not used
        CHECK(eb_fake_launches == launchesBad);

        Tensors idx(1, DataType::kFLOAT);
        idx.in[3] = desc({1, 49, 5}, DataType::kINT32);
        CHECK(attached->run(idx.in, idx.out, b.inputs, b.outputs, b.stream) != 0);
        CHECK(contains(gLogger.last, "r_idx must have shape [N, n_win*n_win = 49, topk = 4]"));

        // Empty batch: no launch, success.
        Tensors empty(0, DataType::kFLOAT);
        int const launchesEmpty = eb_fake_launches;
        CHECK(attached->run(empty.in, empty.out, b.inputs, b.outputs, b.stream) == 0);
        CHECK(eb_fake_launches == launchesEmpty);

        // A failing launch is reported with the CUDA error and a hint when the stream is foreign.
        eb_fake_launch_status = EB_BRA_ERR_CUDA;
        mock_cuda_set_foreign_stream(reinterpret_cast<CUstream>(b.stream));
        CHECK(attached->run(t32.in, t32.out, b.inputs, b.outputs, b.stream) != 0);
        CHECK(contains(gLogger.last, "kernel launch failed: CUDA driver error"));
        CHECK(contains(gLogger.last, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"));
        CHECK(contains(gLogger.last, "the stream belongs to another CUDA context"));
        CHECK(!kPLUGIN_V3 || recorder.codes.back() == nvinfer1::ErrorCode::kFAILED_EXECUTION);
        eb_fake_launch_status = EB_BRA_SUCCESS;
        mock_cuda_set_foreign_stream(nullptr);

        // A second execution context in the same CUDA context shares the loaded module.
        auto second = plugin->attach(&recorder);
        CHECK(second != nullptr && eb_fake_modules_loaded == modulesBefore + 1);
    }
    CHECK(eb_fake_modules_loaded == modulesBefore); // RAII: every module unloaded with its plugin

    // No kernel for this GPU: the attach (V3) or the first inference (V2) fails with the fix in the message.
    eb_fake_load_status = EB_BRA_ERR_NO_KERNEL_FOR_ARCH;
    setSm(121);
    gLogger.last.clear();
    auto failed = plugin->attach(&recorder);
    Tensors half(1, DataType::kHALF);
    CHECK(kPLUGIN_V3 ? failed == nullptr
                     : failed != nullptr && failed->run(half.in, half.out, b.inputs, b.outputs, b.stream) != 0);
    CHECK(contains(gLogger.last, "no kernel image for this GPU (sm_121)")
        && contains(gLogger.last, "scripts/build_plugins.sh --cuda-architectures 121"));
    failed.reset();
    eb_fake_load_status = EB_BRA_SUCCESS;
    setSm(90);

    // No CUDA context current at attach time: the module is loaded by the first inference.
    mock_cuda_set_no_context(1);
    auto deferred = plugin->attach(&recorder);
    CHECK(deferred != nullptr && !deferred->hasKernelModule());
    mock_cuda_set_no_context(0);
    CHECK(deferred->run(half.in, half.out, b.inputs, b.outputs, b.stream) == 0);
    CHECK(deferred->hasKernelModule());
    deferred.reset();
    CHECK(eb_fake_modules_loaded == modulesBefore);
}

void testCloneOfConfiguredPluginRuns()
{
    // A clone copies the configuration (shapes) but not the module: its enqueue loads the module itself.
    mock_cuda_reset();
    auto plugin = runtimePlugin();
    Recorder recorder;
    Buffers b;
    Tensors t(2, DataType::kHALF);
    auto attached = plugin->attach(&recorder);
    CHECK(attached != nullptr && attached->run(t.in, t.out, b.inputs, b.outputs, b.stream) == 0);
    auto copy = attached->clone();
    CHECK(copy != nullptr && !copy->hasKernelModule());
    int const launches = eb_fake_launches;
    int const modules = eb_fake_modules_loaded;
    CHECK(copy->enqueue(t.in, t.out, b.inputs, b.outputs, b.stream) == 0);
    CHECK(copy->hasKernelModule() && eb_fake_launches == launches + 1);
    CHECK(eb_fake_modules_loaded == modules); // the CUDA context's module, shared
}

void testKernelModulesAcrossContexts()
{
    mock_cuda_reset();
    auto plugin = runtimePlugin();
    Recorder recorder;
    int const modulesBefore = eb_fake_modules_loaded;
    int const wrongBefore = eb_fake_wrong_context_unloads;
    auto inFirst = plugin->attach(&recorder);
    mock_cuda_select_context(1);
    auto inSecond = plugin->attach(&recorder);
    CHECK(inFirst && inSecond && eb_fake_modules_loaded == modulesBefore + 2); // one module per context

    // Released on a thread with another context current: unloaded in its own context, which is then left.
    mock_cuda_select_context(0);
    inSecond.reset();
    CHECK(eb_fake_modules_loaded == modulesBefore + 1 && eb_fake_wrong_context_unloads == wrongBefore);
    CUcontext current{nullptr};
    CHECK(cuCtxGetCurrent(&current) == CUDA_SUCCESS && current == mock_cuda_context(0));
    // ... and with no context current at all.
    mock_cuda_set_no_context(1);
    inFirst.reset();
    mock_cuda_set_no_context(0);
    CHECK(eb_fake_modules_loaded == modulesBefore && eb_fake_wrong_context_unloads == wrongBefore);

    // A context destroyed while a plugin still holds its module (breaking TensorRT's order), then a new
    // context with the same handle: the new one gets its own module (context IDs), and the stale module is
    // not unloaded into the new context.
    mock_cuda_select_context(1);
    auto stale = plugin->attach(&recorder);
    mock_cuda_destroy_context(1);
    mock_cuda_recreate_context(1);
    auto fresh = plugin->attach(&recorder);
    CHECK(stale && fresh && eb_fake_modules_loaded == modulesBefore + 2);
    stale.reset();
    CHECK(eb_fake_modules_loaded == modulesBefore + 2); // left behind: its context is gone
    fresh.reset();
    CHECK(eb_fake_modules_loaded == modulesBefore + 1 && eb_fake_wrong_context_unloads == wrongBefore);

    // A driver without context IDs (CUDA 11): modules are found by handle, still one per context.
    mock_cuda_set_context_ids(0);
    auto one = plugin->attach(&recorder);
    auto two = plugin->attach(&recorder);
    CHECK(one && two && eb_fake_modules_loaded == modulesBefore + 2);
    one.reset();
    two.reset();
    CHECK(eb_fake_modules_loaded == modulesBefore + 1);
    mock_cuda_reset();
}

void testLoggerFinderKeepsTheFirst()
{
#if EB_TRT_HAS_LOAD_LIBRARY
    class Finder : public nvinfer1::ILoggerFinder
    {
    public:
        explicit Finder(nvinfer1::ILogger* logger)
            : mLogger(logger)
        {
        }
        nvinfer1::ILogger* findLogger() override
        {
            return mLogger;
        }

    private:
        nvinfer1::ILogger* mLogger;
    };
    CapturingLogger other;
    Finder first(&gLogger);
    Finder second(&other);
    ::setLoggerFinder(&first);
    ::setLoggerFinder(nullptr); // ignored
    ::setLoggerFinder(&second); // ignored: TensorRT's own plugin libraries keep the first non-null finder
    gLogger.count = 0;
    logMessage(Severity::kWARNING, "through the finder");
    CHECK(gLogger.count == 1 && contains(gLogger.last, "through the finder") && other.count == 0);
#endif
}

void testRegistrationWithoutTensorRT()
{
    // This process has no libnvinfer: nothing is registered at load time and the loadLibrary entry point
    // hands the creator to whoever calls it (IPluginRegistry::loadLibrary in a real process).
    std::string const status = edge_biformer_plugin_status();
    CHECK(contains(status,
        EB_BRA_PLUGIN_NAME " version " EB_BRA_PLUGIN_VERSION " (namespace " EB_BRA_PLUGIN_NAMESPACE
                           "), built against TensorRT "));
    CHECK(contains(status, "not registered at load time, because no TensorRT runtime is loaded in this process and "
                           "libnvinfer.so."));
    int32_t n = -1;
#if EB_TRT_HAS_PLUGIN_V3
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(n);
    CHECK(n == 1 && creators != nullptr && creators[0] == &braCreator());
#else
    nvinfer1::IPluginCreator* const* creators = getPluginCreators(n);
    CHECK(n == 1 && creators != nullptr && creators[0] == &braCreatorV2());
#endif
}

} // namespace

namespace edge_biformer
{
namespace plugin_test
{

void runRuntimeTests()
{
    testRuntimeLifecycle();
    testCloneOfConfiguredPluginRuns();
    testKernelModulesAcrossContexts();
    testLoggerFinderKeepsTheFirst();
    testRegistrationWithoutTensorRT();
}

} // namespace plugin_test
} // namespace edge_biformer
