/*
 * Integration test of the plugin with the real kernel launcher (plugins/bra/kernels/bra_launch.c with
 * the tables and images of the AOT step), on the mock CUDA driver (mock_cuda_driver.c). No GPU: the
 * mock records what would be launched. Checks, for the plugin of the build (IPluginV3, or the
 * IPluginV2DynamicExt of TensorRT 8 headers), that attaching to an execution context loads the images for
 * the device, that an inference hands the right tensors and stream to one cuLaunchKernel, that modules
 * are unloaded with the plugin (in their own CUDA context), that images a driver cannot use fail the load
 * with the fix, and that kernel-level refusals (unsupported head dims, no image for the GPU, launch
 * errors) surface as plugin errors with their fix.
 *
 *   bra_plugin_integration_test PARAM_LAYOUT   ('p'/'i'/'f' per kernel parameter, from manifest.json)
 */
#include "mock_cuda_driver.h"
#include "plugin_logging.h"
#include "plugin_test_helpers.h"
#include "plugin_under_test.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>

using namespace edge_biformer::plugin;
using namespace edge_biformer::plugin_test;

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::cerr << "usage: bra_plugin_integration_test PARAM_LAYOUT\n";
        return 2;
    }
    std::string const layout{argv[1]};
    setProcessLoggerGetter(&testGetLogger);
    mock_cuda_reset();
    CHECK(mock_cuda_set_param_layout(layout.c_str()) == 0);
    mock_cuda_set_device(8, 7, 166912); // Jetson Orin

    // BiFormer-S stage 1 at 224: 28x28 map, n_win 7, 4 heads of 32, topk 4.
    Fields fields;
    fields.nWin = 7;
    fields.heads = 4;
    fields.topk = 4;
    fields.scale = 1.0F / std::sqrt(128.0F);
    TestPlugin::Ptr plugin = TestPlugin::create(fields.fc, true, "bra");
    CHECK(plugin != nullptr);
    if (!plugin)
    {
        return 1;
    }

    // Build time: the real eb_bra_check refuses head dims outside the compiled variants (256 here).
    {
        nvinfer1::DynamicPluginTensorDesc io[5]{};
        PluginTensorDesc const shapes[5] = {desc({1, 7, 7, 1024}, DataType::kFLOAT), desc({1, 7, 7, 1024}, DataType::kFLOAT),
            desc({1, 7, 7, 1024}, DataType::kFLOAT), desc({1, 49, 4}, DataType::kINT32),
            desc({1, 7, 7, 1024}, DataType::kFLOAT)};
        for (int i = 0; i < 5; ++i)
        {
            io[i].desc = shapes[i];
            io[i].min = io[i].max = shapes[i].dims;
#if EB_TRT_HAS_PLUGIN_V3
            io[i].opt = shapes[i].dims;
#endif
        }
        CHECK(plugin->configure(io) != 0);
        CHECK(gLogger.last.find("head dims d_qk=256, d_v=256 (float32) exceed the largest compiled kernel variant")
            != std::string::npos);
    }

    std::uintptr_t const ptr[5] = {0x7f0000010000, 0x7f0000020000, 0x7f0000030000, 0x7f0000040000, 0x7f0000050000};
    void const* inputs[4] = {reinterpret_cast<void const*>(ptr[0]), reinterpret_cast<void const*>(ptr[1]),
        reinterpret_cast<void const*>(ptr[2]), reinterpret_cast<void const*>(ptr[3])};
    void* outputs[1] = {reinterpret_cast<void*>(ptr[4])};
    auto const stream = reinterpret_cast<cudaStream_t>(std::uintptr_t{0x5000});
    // One small inference (fp16, 14x14 maps, 4 heads of 32).
    PluginTensorDesc const in14[4] = {desc({1, 14, 14, 128}, DataType::kHALF),
        desc({1, 14, 14, 128}, DataType::kHALF), desc({1, 14, 14, 128}, DataType::kHALF),
        desc({1, 49, 4}, DataType::kINT32)};
    PluginTensorDesc const out14[1] = {desc({1, 14, 14, 128}, DataType::kHALF)};
    // Whether attaching fails (the IPluginV3), or the first inference after it (the IPluginV2DynamicExt,
    // whose attachToContext cannot fail).
    auto attachOrFirstRunFails = [&] {
        TestPlugin::Ptr attached = plugin->attach(nullptr);
        return kPLUGIN_V3 ? attached == nullptr : attached->run(in14, out14, inputs, outputs, stream) != 0;
    };
    {
        TestPlugin::Ptr attached = plugin->attach(nullptr);
        CHECK(attached != nullptr);
        CHECK(mock_cuda_live_modules() > 0);
        for (DataType type : {DataType::kHALF, DataType::kFLOAT})
        {
            PluginTensorDesc const in[4] = {desc({2, 28, 28, 128}, type), desc({2, 28, 28, 128}, type),
                desc({2, 28, 28, 128}, type), desc({2, 49, 4}, DataType::kINT32)};
            PluginTensorDesc const out[1] = {desc({2, 28, 28, 128}, type)};
            int const before = mock_cuda_launch_count();
            CHECK(attached->run(in, out, inputs, outputs, stream) == 0);
            CHECK(mock_cuda_launch_count() == before + 1);
            mock_cuda_launch_t launch{};
            CHECK(mock_cuda_last_launch(&launch) == 0);
            CHECK(launch.stream == static_cast<uint64_t>(reinterpret_cast<std::uintptr_t>(stream)));
            CHECK(launch.grid[0] > 0 && launch.block[0] > 0);
            CHECK(launch.function_name != nullptr && std::strcmp(launch.function_name, "bra_fwd_kernel") == 0);
            for (int i = 0; i < 5; ++i)
            {
                CHECK(launch.params[i] == static_cast<uint64_t>(ptr[i])); // q, k, v, r_idx, o in order
            }
        }

        // A failing launch becomes a plugin error that names the CUDA error.
        mock_cuda_set_launch_failure(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
        CHECK(attached->run(in14, out14, inputs, outputs, stream) != 0);
        CHECK(gLogger.last.find("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES") != std::string::npos);
        mock_cuda_set_launch_failure(CUDA_SUCCESS);
    }
    CHECK(mock_cuda_live_modules() == 0); // every module unloaded with its execution context's plugin
    CHECK(mock_cuda_wrong_context_unloads() == 0);

    // Released on a thread where another CUDA context is current: unloaded in the module's own context.
    {
        TestPlugin::Ptr attached = plugin->attach(nullptr);
        CHECK(attached != nullptr && mock_cuda_live_modules() > 0);
        mock_cuda_select_context(1);
        attached.reset();
        CHECK(mock_cuda_live_modules() == 0 && mock_cuda_wrong_context_unloads() == 0);
        mock_cuda_select_context(0);
    }

    // A driver that can use none of the images (a JetPack 5 driver, CUDA 11.4, and images of a CUDA 12
    // ptxas): the load fails with the driver's version and how to regenerate the kernels.
    mock_cuda_set_load_failures(1, 1);
    mock_cuda_set_driver_version(11040);
    gLogger.last.clear();
    CHECK(attachOrFirstRunFails());
    CHECK(gLogger.last.find("this driver (CUDA 11.4) cannot use the kernel images") != std::string::npos);
    CHECK(gLogger.last.find("TRITON_PTXAS_PATH") != std::string::npos);
    mock_cuda_set_load_failures(0, 0);
    mock_cuda_set_driver_version(13000);
    CHECK(mock_cuda_live_modules() == 0);

    // A GPU the library has no image for: attaching fails with the rebuild command.
    mock_cuda_set_device(7, 0, 98304);
    gLogger.last.clear();
    CHECK(attachOrFirstRunFails());
    CHECK(gLogger.last.find("no kernel image for this GPU (sm_70)") != std::string::npos);
    CHECK(mock_cuda_live_modules() == 0);

    return report("bra_plugin_integration_test");
}
