/*
 * Host-side unit test of the BiLevelRoutingAttention plugin logic, compiled against the real TensorRT
 * headers and run without TensorRT's libraries or a GPU: the kernels and the CUDA driver are test
 * doubles (fake_bra_launch.c, mock_cuda_driver.c); TensorRT's IExprBuilder / IDimensionExpr /
 * IPluginResourceContext / IErrorRecorder are played by the stand-ins of plugin_test_helpers.h.
 *
 *   bra_plugin_host_test NAME VERSION NAMESPACE [FIELD:TYPE ...]
 *
 * The arguments are what the op contract JSON declares: the identity, and the plugin fields with
 * their PluginFieldType (e.g. n_win:kINT32), in order. Exit status 0 when every check passes. Built by
 * plugins/tests/CMakeLists.txt with -DEB_BUILD_HOST_TESTS=ON (and -DEB_SANITIZE=ON for
 * AddressSanitizer/UBSan/LeakSanitizer), run by tests/plugins/test_plugin_build.py.
 */
#include "bra_contract.h"
#include "bra_plugin.h"
#include "bra_plugin_creator.h"
#include "bra_validation.h"
#include "fake_bra_launch.h"
#include "mock_cuda_driver.h"
#include "plugin_fields.h"
#include "plugin_logging.h"
#include "plugin_test_helpers.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" char const* edge_biformer_plugin_status();

namespace
{

using namespace edge_biformer::plugin;
using namespace edge_biformer::plugin_test;
using nvinfer1::DynamicPluginTensorDesc;

//! The device of the mock driver's context, as major*10 + minor.
void setSm(int sm)
{
    mock_cuda_set_device(sm / 10, sm % 10, 166912);
}

void testIdentity(char const* name, char const* version, char const* ns,
    std::vector<std::pair<std::string, std::string>> const& fields)
{
    auto& creator = braCreator();
    CHECK(std::strcmp(creator.getPluginName(), name) == 0);
    CHECK(std::strcmp(creator.getPluginVersion(), version) == 0);
    CHECK(std::strcmp(creator.getPluginNamespace(), ns) == 0);
    CHECK(std::strcmp(creator.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    // The creator lists exactly the contract's plugin fields, in its order and with its types.
    PluginFieldCollection const* names = creator.getFieldNames();
    CHECK(names != nullptr && !fields.empty() && names->nbFields == static_cast<int32_t>(fields.size()));
    if (names != nullptr && names->nbFields == static_cast<int32_t>(fields.size()))
    {
        for (size_t i = 0; i < fields.size(); ++i)
        {
            CHECK(names->fields[i].name == fields[i].first);
            CHECK(fieldTypeName(names->fields[i].type) == fields[i].second);
            CHECK(names->fields[i].data == nullptr && names->fields[i].length == 1);
        }
    }
    Fields f;
    auto plugin = createPlugin(f.fc);
    CHECK(plugin != nullptr);
    auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
    CHECK(std::strcmp(core->getPluginName(), name) == 0);
    CHECK(std::strcmp(core->getPluginVersion(), version) == 0);
    CHECK(std::strcmp(core->getPluginNamespace(), ns) == 0);
    CHECK(std::strcmp(plugin->getInterfaceInfo().kind, "PLUGIN") == 0);
    CHECK(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0);
    CHECK(std::strcmp(build(plugin.get())->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
    CHECK(std::strcmp(runtime(plugin.get())->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
}

void testFieldsFromOnnxParser()
{
    // The ONNX parser's fields: INT attributes as kINT32, FLOAT as kFLOAT32, STRING as kCHAR of the
    // string's length without a terminating NUL.
    Fields f;
    std::string const versionText{EB_BRA_ATTR_PLUGIN_VERSION_VALUE};
    std::string const nsText{EB_BRA_ATTR_PLUGIN_NAMESPACE_VALUE};
    std::vector<char> const version(versionText.begin(), versionText.end()); // no NUL
    std::vector<char> const ns(nsText.begin(), nsText.end());
    f.list.emplace_back(
        EB_BRA_ATTR_PLUGIN_VERSION, version.data(), PluginFieldType::kCHAR, static_cast<int32_t>(version.size()));
    f.list.emplace_back(
        EB_BRA_ATTR_PLUGIN_NAMESPACE, ns.data(), PluginFieldType::kCHAR, static_cast<int32_t>(ns.size()));
    f.sync();
    BraAttributes a;
    CHECK(parseAttributes(&f.fc, a).empty());
    CHECK(a.nWin == 7 && a.numHeads == 2 && a.topk == 4 && a.scale == 0.125F);
    auto plugin = createPlugin(f.fc);
    CHECK(plugin != nullptr);

    // Hand-built fields with other integer/float widths are accepted.
    int64_t nWin64 = 8;
    double scale64 = 0.25;
    Fields g;
    g.list[0] = PluginField{EB_BRA_ATTR_N_WIN, &nWin64, PluginFieldType::kINT64, 1};
    g.list[3] = PluginField{EB_BRA_ATTR_SCALE, &scale64, PluginFieldType::kFLOAT64, 1};
    g.sync();
    CHECK(parseAttributes(&g.fc, a).empty());
    CHECK(a.nWin == 8 && a.scale == 0.25F);
}

void testBadFields()
{
    BraAttributes a;
    {
        Fields f;
        f.list.erase(f.list.begin() + 2); // no topk
        f.sync();
        std::string const err = parseAttributes(&f.fc, a);
        CHECK(contains(err, "missing plugin field(s) topk"));
        gLogger.count = 0;
        CHECK(createPlugin(f.fc) == nullptr);
        CHECK(gLogger.count == 1 && contains(gLogger.last, "cannot create layer 'bra_0' (build phase)"));
    }
    {
        Fields f;
        int32_t extra = 1;
        f.list.emplace_back(EB_BRA_ATTR_N_WIN "s", &extra, PluginFieldType::kINT32, 1);
        f.sync();
        CHECK(contains(parseAttributes(&f.fc, a), "unknown plugin field 'n_wins'"));
    }
    {
        Fields f;
        float wrong = 7.0F;
        f.list[0] = PluginField{EB_BRA_ATTR_N_WIN, &wrong, PluginFieldType::kFLOAT32, 1};
        f.sync();
        CHECK(contains(parseAttributes(&f.fc, a), "'n_win' must be an integer (kINT32), got kFLOAT32"));
    }
    {
        Fields f;
        int32_t two[] = {1, 2};
        f.list[1] = PluginField{EB_BRA_ATTR_NUM_HEADS, two, PluginFieldType::kINT32, 2};
        f.sync();
        CHECK(contains(parseAttributes(&f.fc, a), "'num_heads' must hold exactly one value (got length 2)"));
    }
    {
        Fields f;
        f.list.push_back(f.list[0]);
        f.sync();
        CHECK(contains(parseAttributes(&f.fc, a), "'n_win' is given twice"));
    }
    {
        Fields f;
        char const v2[] = "2";
        f.list.emplace_back(EB_BRA_ATTR_PLUGIN_VERSION, v2, PluginFieldType::kCHAR, 2);
        f.sync();
        CHECK(contains(parseAttributes(&f.fc, a), "'plugin_version' is '2'"));
    }
    CHECK(contains(parseAttributes(nullptr, a), "no plugin fields"));
    {
        Fields f;
        f.topk = 50; // > 7*7
        CHECK(parseAttributes(&f.fc, a).empty());
        CHECK(contains(validateAttributes(a), "topk = 50 must lie in [1, n_win*n_win = 49]"));
        CHECK(createPlugin(f.fc) == nullptr);
    }
    {
        Fields f;
        f.scale = std::nanf("");
        CHECK(parseAttributes(&f.fc, a).empty());
        CHECK(contains(validateAttributes(a), "scale must be a finite number"));
    }
    {
        Fields f;
        f.nWin = 0;
        CHECK(parseAttributes(&f.fc, a).empty());
        CHECK(contains(validateAttributes(a), "n_win = 0 is out of range"));
        f.nWin = 7;
        f.heads = 0;
        CHECK(parseAttributes(&f.fc, a).empty());
        CHECK(contains(validateAttributes(a), "num_heads = 0 must be >= 1"));
    }
}

void testSerializationRoundTripAndClone()
{
    Fields f;
    f.scale = 0.0883883476F; // 128 ** -0.5
    auto plugin = createPlugin(f.fc);
    CHECK(plugin != nullptr);
    PluginFieldCollection const* serial = runtime(plugin.get())->getFieldsToSerialize();
    CHECK(serial != nullptr && serial->nbFields == 4);
    auto restored = createPlugin(*serial, nvinfer1::TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    if (restored)
    {
        BraAttributes const& a = asBra(restored.get())->attributes();
        CHECK(a.nWin == 7 && a.numHeads == 2 && a.topk == 4);
        CHECK(std::memcmp(&a.scale, &f.scale, sizeof(float)) == 0); // bit-exact
    }
    // A second call returns consistent storage.
    CHECK(runtime(plugin.get())->getFieldsToSerialize() == serial && serial->nbFields == 4);

    std::unique_ptr<nvinfer1::IPluginV3> copy{plugin->clone()};
    CHECK(copy != nullptr && copy.get() != plugin.get());
    CHECK(asBra(copy.get())->attributes().topk == 4);
    CHECK(!asBra(copy.get())->hasKernelModule());
    plugin.reset(); // the clone is independent of the original
    CHECK(std::string{build(copy.get())->getMetadataString()} == "n_win=7, num_heads=2, topk=4, scale=0.0883883461");
    CHECK(build(copy.get())->getNbOutputs() == 1);
    CHECK(build(copy.get())->getWorkspaceSize(nullptr, 4, nullptr, 1) == 0);
    CHECK(build(copy.get())->getTimingCacheID() != nullptr);
    CHECK(copy->getCapabilityInterface(static_cast<nvinfer1::PluginCapabilityType>(7)) == nullptr);
}

void testFormatsAndTypes()
{
    Fields f;
    auto plugin = createPlugin(f.fc);
    auto* b = build(plugin.get());
    DynamicPluginTensorDesc io[5]{};
    auto set = [&](int i, DataType t, TensorFormat fmt = TensorFormat::kLINEAR) {
        io[i].desc.type = t;
        io[i].desc.format = fmt;
    };
    for (DataType t : {DataType::kFLOAT, DataType::kHALF})
    {
        set(0, t);
        CHECK(b->supportsFormatCombination(0, io, 4, 1));
        set(1, t);
        set(2, t);
        CHECK(b->supportsFormatCombination(1, io, 4, 1) && b->supportsFormatCombination(2, io, 4, 1));
        set(3, DataType::kINT32);
        CHECK(b->supportsFormatCombination(3, io, 4, 1));
        set(4, t);
        CHECK(b->supportsFormatCombination(4, io, 4, 1));
        set(4, t == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT);
        CHECK(!b->supportsFormatCombination(4, io, 4, 1)); // output type = input type
    }
    set(0, DataType::kINT8);
    CHECK(!b->supportsFormatCombination(0, io, 4, 1));
    set(0, DataType::kBF16);
    CHECK(!b->supportsFormatCombination(0, io, 4, 1));
    set(0, DataType::kHALF, TensorFormat::kHWC8);
    CHECK(!b->supportsFormatCombination(0, io, 4, 1));
    set(0, DataType::kHALF);
    set(3, DataType::kINT64);
    CHECK(!b->supportsFormatCombination(3, io, 4, 1));
    set(1, DataType::kFLOAT);
    CHECK(!b->supportsFormatCombination(1, io, 4, 1));
    CHECK(!b->supportsFormatCombination(5, io, 4, 1));
    CHECK(!b->supportsFormatCombination(0, io, 3, 1));

    DataType out{DataType::kFLOAT};
    DataType const half4[] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kINT32};
    CHECK(b->getOutputDataTypes(&out, 1, half4, 4) == 0 && out == DataType::kHALF);
    DataType const float4[] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32};
    CHECK(b->getOutputDataTypes(&out, 1, float4, 4) == 0 && out == DataType::kFLOAT);
    DataType const mixed[] = {DataType::kHALF, DataType::kFLOAT, DataType::kHALF, DataType::kINT32};
    CHECK(b->getOutputDataTypes(&out, 1, mixed, 4) != 0);
    CHECK(contains(gLogger.last, "q, k and v must all be float32 or all be float16; got q float16, k float32"));
    DataType const int64Idx[] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kINT64};
    CHECK(b->getOutputDataTypes(&out, 1, int64Idx, 4) != 0);
    CHECK(contains(gLogger.last, "r_idx must be int32"));
}

void testOutputShapes()
{
    Fields f; // n_win 7, heads 2, topk 4
    auto plugin = createPlugin(f.fc);
    auto* b = build(plugin.get());
    ExprBuilder eb;
    DimsExprs out[1]{};
    {
        // dynamic N, H, W; Hq != Hk; Cqk != Cv
        ShapeExprs s({{-1, -1, -1, 64}, {-1, -1, -1, 64}, {-1, -1, -1, 32}, {-1, 49, 4}});
        CHECK(b->getOutputShapes(s.inputs, 4, nullptr, 0, out, 1, eb) == 0);
        CHECK(out[0].nbDims == 4 && out[0].d[0] == s.inputs[0].d[0] && out[0].d[1] == s.inputs[0].d[1]
            && out[0].d[2] == s.inputs[0].d[2] && out[0].d[3] == s.inputs[2].d[3]);
    }
    {
        ShapeExprs s({{2, 14, 21, 64}, {2, 28, 28, 64}, {2, 28, 28, 32}, {2, 49, 4}});
        CHECK(b->getOutputShapes(s.inputs, 4, nullptr, 0, out, 1, eb) == 0);
        CHECK(out[0].d[1]->getConstantValue() == 14 && out[0].d[2]->getConstantValue() == 21
            && out[0].d[3]->getConstantValue() == 32);
    }
    auto rejects = [&](std::vector<std::vector<int64_t>> const& shapes, std::string const& message) {
        ShapeExprs s(shapes);
        gLogger.last.clear();
        int32_t const rc = b->getOutputShapes(s.inputs, 4, nullptr, 0, out, 1, eb);
        bool const ok = rc != 0 && contains(gLogger.last, message);
        if (!ok)
        {
            std::cerr << "  got: rc=" << rc << " '" << gLogger.last << "'\n";
        }
        return ok;
    };
    CHECK(rejects({{-1, -1, -1, -1}, {-1, -1, -1, 64}, {-1, -1, -1, 32}, {-1, 49, 4}},
        "the channel count (last dim) of q must be known at build time"));
    CHECK(rejects({{1, 15, 14, 64}, {1, 14, 14, 64}, {1, 14, 14, 32}, {1, 49, 4}},
        "the height of q (15) must be a multiple of n_win = 7"));
    CHECK(rejects({{1, 14, 14, 64}, {1, 14, 14, 48}, {1, 14, 14, 32}, {1, 49, 4}},
        "q and k must have the same number of channels; got 64 and 48"));
    CHECK(rejects({{1, 14, 14, 63}, {1, 14, 14, 63}, {1, 14, 14, 32}, {1, 49, 4}},
        "must be positive multiples of num_heads = 2"));
    CHECK(rejects({{1, 14, 14, 64}, {1, 14, 14, 64}, {1, 14, 14, 32}, {1, 49, 3}},
        "r_idx must have shape [N, n_win*n_win = 49, topk = 4]; got [..., 49, 3]"));
    CHECK(rejects({{1, 14, 14, 64}, {1, 14, 14, 64}, {1, 14, 14, 32}, {1, 48, -1}},
        "r_idx must have shape [N, n_win*n_win = 49, topk = 4]; got [..., 48, ?]"));
    CHECK(rejects({{2, 14, 14, 64}, {3, 14, 14, 64}, {3, 14, 14, 32}, {2, 49, 4}}, "the same batch size"));
    CHECK(rejects({{1, 14, 14, 64}, {1, 14, 14, 64}, {1, 21, 14, 32}, {1, 49, 4}},
        "k and v must have the same batch, height and width"));
    {
        ShapeExprs s({{1, 14, 14, 64}, {1, 14, 14, 64}, {1, 14, 14, 32}, {1, 49}});
        CHECK(b->getOutputShapes(s.inputs, 4, nullptr, 0, out, 1, eb) != 0);
        CHECK(contains(gLogger.last, "q, k, v must be 4-D NHWC"));
    }
}

void setProfile(DynamicPluginTensorDesc* io, std::vector<std::vector<int64_t>> const& mn,
    std::vector<std::vector<int64_t>> const& opt, std::vector<std::vector<int64_t>> const& mx, DataType type)
{
    for (int i = 0; i < 5; ++i)
    {
        io[i].desc.type = i == 3 ? DataType::kINT32 : type;
        io[i].desc.format = TensorFormat::kLINEAR;
    }
    for (size_t i = 0; i < mn.size(); ++i)
    {
        io[i].min = dims(mn[i]);
        io[i].opt = dims(opt[i]);
        io[i].max = dims(mx[i]);
        io[i].desc.dims = dims(opt[i]);
    }
}

void testConfigurePlugin()
{
    Fields f;
    auto plugin = createPlugin(f.fc);
    auto* b = build(plugin.get());
    DynamicPluginTensorDesc io[5]{};
    mock_cuda_set_no_context(0);
    setSm(87);
    setProfile(io, {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{4, 56, 56, 64}, {4, 56, 56, 64}, {4, 56, 56, 32}, {4, 49, 4}},
        {{8, 112, 112, 64}, {8, 112, 112, 64}, {8, 112, 112, 32}, {8, 49, 4}}, DataType::kHALF);
    CHECK(b->configurePlugin(io, 4, io + 4, 1) == 0);

    setProfile(io, {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{4, 56, 56, 64}, {4, 56, 56, 64}, {4, 56, 56, 32}, {4, 49, 4}},
        {{8, 100, 112, 64}, {8, 112, 112, 64}, {8, 112, 112, 32}, {8, 49, 4}}, DataType::kHALF);
    CHECK(b->configurePlugin(io, 4, io + 4, 1) != 0);
    CHECK(contains(gLogger.last, "profile kMAX shapes: the heights and widths of q and k/v must be multiples of n_win"));

    // Head dim 256 (512 channels / 2 heads) is outside the compiled variants: fails at build time.
    setProfile(io, {{1, 7, 7, 512}, {1, 7, 7, 512}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 512}, {1, 7, 7, 512}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 512}, {1, 7, 7, 512}, {1, 7, 7, 32}, {1, 49, 4}}, DataType::kFLOAT);
    CHECK(b->configurePlugin(io, 4, io + 4, 1) != 0);
    CHECK(contains(gLogger.last, "head dims d_qk=256, d_v=16 (float32) exceed the largest compiled kernel variant"));

    // A GPU without kernels fails at build time too.
    setSm(70);
    setProfile(io, {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}}, DataType::kHALF);
    CHECK(b->configurePlugin(io, 4, io + 4, 1) != 0);
    CHECK(contains(gLogger.last, "no kernel image for this GPU (sm_70)"));
    CHECK(contains(gLogger.last, "--cuda-architectures 70"));
    setSm(87);

    // Mixed types are refused.
    setProfile(io, {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}}, DataType::kHALF);
    io[2].desc.type = DataType::kFLOAT;
    CHECK(b->configurePlugin(io, 4, io + 4, 1) != 0);
}

void testRuntimeLifecycle()
{
    Fields f;
    f.scale = 0.125F;
    auto built = createPlugin(f.fc);
    PluginFieldCollection const* serial = runtime(built.get())->getFieldsToSerialize();
    auto plugin = createPlugin(*serial, nvinfer1::TensorRTPhase::kRUNTIME);
    CHECK(plugin != nullptr);
    Recorder recorder;
    ResourceContext resources(&recorder);
    mock_cuda_set_no_context(0);
    setSm(90);
    eb_fake_load_status = EB_BRA_SUCCESS;
    int const modulesBefore = eb_fake_modules_loaded;
    {
        std::unique_ptr<nvinfer1::IPluginV3> attached{runtime(plugin.get())->attachToContext(&resources)};
        CHECK(attached != nullptr && attached.get() != plugin.get());
        CHECK(asBra(attached.get())->hasKernelModule());
        CHECK(!asBra(plugin.get())->hasKernelModule()); // the module belongs to the attached clone
        CHECK(eb_fake_modules_loaded == modulesBefore + 1);
        auto* rt = runtime(attached.get());

        // enqueue before onShapeChange is an error, not a launch.
        PluginTensorDesc in[4] = {desc({2, 14, 21, 64}, DataType::kHALF), desc({2, 28, 14, 64}, DataType::kHALF),
            desc({2, 28, 14, 32}, DataType::kHALF), desc({2, 49, 4}, DataType::kINT32)};
        PluginTensorDesc out[1] = {desc({2, 14, 21, 32}, DataType::kHALF)};
        int const launchesBefore = eb_fake_launches;
        std::uintptr_t const fake[5] = {0x1000, 0x2000, 0x3000, 0x4000, 0x5000};
        void const* inputs[4] = {reinterpret_cast<void const*>(fake[0]), reinterpret_cast<void const*>(fake[1]),
            reinterpret_cast<void const*>(fake[2]), reinterpret_cast<void const*>(fake[3])};
        void* outputs[1] = {reinterpret_cast<void*>(fake[4])};
        auto const stream = reinterpret_cast<cudaStream_t>(std::uintptr_t{0xabc0});
        CHECK(rt->enqueue(in, out, inputs, outputs, nullptr, stream) != 0);
        CHECK(eb_fake_launches == launchesBefore);
        CHECK(!recorder.errors.empty() && contains(recorder.errors.back(), "before the plugin was configured"));

        CHECK(rt->onShapeChange(in, 4, out, 1) == 0);
        CHECK(rt->enqueue(in, out, inputs, outputs, nullptr, stream) == 0);
        CHECK(eb_fake_launches == launchesBefore + 1);
        eb_bra_params_t const& p = eb_fake_last_params;
        CHECK(p.batch == 2 && p.hq == 14 && p.wq == 21 && p.hk == 28 && p.wk == 14 && p.c_qk == 64 && p.c_v == 32);
        CHECK(p.n_win == 7 && p.num_heads == 2 && p.topk == 4 && p.scale == 0.125F && p.dtype == EB_BRA_FLOAT16);
        CHECK(eb_fake_last_stream == reinterpret_cast<CUstream>(stream));
        for (int i = 0; i < 5; ++i)
        {
            CHECK(eb_fake_last_ptrs[i] == static_cast<CUdeviceptr>(fake[i]));
        }

        // New shapes: fp32 with another batch; then an invalid shape is refused with the layer named.
        PluginTensorDesc in32[4] = {desc({1, 7, 7, 64}, DataType::kFLOAT), desc({1, 7, 7, 64}, DataType::kFLOAT),
            desc({1, 7, 7, 32}, DataType::kFLOAT), desc({1, 49, 4}, DataType::kINT32)};
        PluginTensorDesc out32[1] = {desc({1, 7, 7, 32}, DataType::kFLOAT)};
        CHECK(rt->onShapeChange(in32, 4, out32, 1) == 0);
        CHECK(rt->enqueue(in32, out32, inputs, outputs, nullptr, stream) == 0);
        CHECK(eb_fake_last_params.dtype == EB_BRA_FLOAT32 && eb_fake_last_params.batch == 1);

        PluginTensorDesc bad[4] = {desc({1, 8, 7, 64}, DataType::kFLOAT), desc({1, 7, 7, 64}, DataType::kFLOAT),
            desc({1, 7, 7, 32}, DataType::kFLOAT), desc({1, 49, 4}, DataType::kINT32)};
        PluginTensorDesc badOut[1] = {desc({1, 8, 7, 32}, DataType::kFLOAT)};
        CHECK(rt->onShapeChange(bad, 4, badOut, 1) != 0);
        CHECK(contains(recorder.errors.back(), "layer 'bra_0': input shapes: the heights and widths of q and k/v must "
                                               "be multiples of n_win = 7 (q [1, 8, 7, 64]"));
        CHECK(rt->enqueue(bad, badOut, inputs, outputs, nullptr, stream) != 0); // stale params are not used

        PluginTensorDesc idx[4] = {desc({1, 7, 7, 64}, DataType::kFLOAT), desc({1, 7, 7, 64}, DataType::kFLOAT),
            desc({1, 7, 7, 32}, DataType::kFLOAT), desc({1, 49, 5}, DataType::kINT32)};
        CHECK(rt->onShapeChange(idx, 4, out32, 1) != 0);
        CHECK(contains(recorder.errors.back(), "r_idx must have shape [N, n_win*n_win = 49, topk = 4]"));

        // Empty batch: no launch, success.
        PluginTensorDesc empty[4] = {desc({0, 7, 7, 64}, DataType::kFLOAT), desc({0, 7, 7, 64}, DataType::kFLOAT),
            desc({0, 7, 7, 32}, DataType::kFLOAT), desc({0, 49, 4}, DataType::kINT32)};
        PluginTensorDesc emptyOut[1] = {desc({0, 7, 7, 32}, DataType::kFLOAT)};
        int const launchesEmpty = eb_fake_launches;
        CHECK(rt->onShapeChange(empty, 4, emptyOut, 1) == 0);
        CHECK(rt->enqueue(empty, emptyOut, inputs, outputs, nullptr, stream) == 0);
        CHECK(eb_fake_launches == launchesEmpty);

        // A failing launch is reported with the CUDA error and a hint when the stream is foreign.
        CHECK(rt->onShapeChange(in32, 4, out32, 1) == 0);
        eb_fake_launch_status = EB_BRA_ERR_CUDA;
        mock_cuda_set_foreign_stream(reinterpret_cast<CUstream>(stream));
        CHECK(rt->enqueue(in32, out32, inputs, outputs, nullptr, stream) != 0);
        CHECK(contains(recorder.errors.back(), "kernel launch failed: CUDA driver error"));
        CHECK(contains(recorder.errors.back(), "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"));
        CHECK(contains(recorder.errors.back(), "the stream belongs to another CUDA context"));
        CHECK(recorder.codes.back() == nvinfer1::ErrorCode::kFAILED_EXECUTION);
        eb_fake_launch_status = EB_BRA_SUCCESS;
        mock_cuda_set_foreign_stream(nullptr);

        // A second execution context in the same CUDA context shares the loaded module.
        std::unique_ptr<nvinfer1::IPluginV3> second{runtime(plugin.get())->attachToContext(&resources)};
        CHECK(second != nullptr && eb_fake_modules_loaded == modulesBefore + 1);
    }
    CHECK(eb_fake_modules_loaded == modulesBefore); // RAII: every module unloaded with its plugin

    // No kernel for this GPU: attachToContext fails with the fix in the message.
    eb_fake_load_status = EB_BRA_ERR_NO_KERNEL_FOR_ARCH;
    setSm(121);
    recorder.clear();
    CHECK(runtime(plugin.get())->attachToContext(&resources) == nullptr);
    CHECK(!recorder.errors.empty() && contains(recorder.errors.back(), "no kernel image for this GPU (sm_121)")
        && contains(recorder.errors.back(), "scripts/build_plugins.sh --cuda-architectures 121"));
    eb_fake_load_status = EB_BRA_SUCCESS;
    setSm(90);

    // No CUDA context current at attach time: the module is loaded at the first onShapeChange.
    mock_cuda_set_no_context(1);
    std::unique_ptr<nvinfer1::IPluginV3> deferred{runtime(plugin.get())->attachToContext(&resources)};
    CHECK(deferred != nullptr && !asBra(deferred.get())->hasKernelModule());
    mock_cuda_set_no_context(0);
    PluginTensorDesc in[4] = {desc({1, 7, 7, 64}, DataType::kHALF), desc({1, 7, 7, 64}, DataType::kHALF),
        desc({1, 7, 7, 32}, DataType::kHALF), desc({1, 49, 4}, DataType::kINT32)};
    PluginTensorDesc out[1] = {desc({1, 7, 7, 32}, DataType::kHALF)};
    CHECK(runtime(deferred.get())->onShapeChange(in, 4, out, 1) == 0);
    CHECK(asBra(deferred.get())->hasKernelModule());
    deferred.reset();
    CHECK(eb_fake_modules_loaded == modulesBefore);
}

void testRegistrationWithoutTensorRT()
{
    // This process has no libnvinfer: nothing is registered at load time and getCreators() hands the
    // creator to whoever calls it (IPluginRegistry::loadLibrary in a real process).
    std::string const status = edge_biformer_plugin_status();
    CHECK(contains(status,
        EB_BRA_PLUGIN_NAME " version " EB_BRA_PLUGIN_VERSION " (namespace " EB_BRA_PLUGIN_NAMESPACE
                           "), built against TensorRT "));
    CHECK(contains(status, "not registered at load time, because no TensorRT runtime is loaded in this process and "
                           "libnvinfer.so."));
    int32_t n = -1;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(n);
    CHECK(n == 1 && creators != nullptr && creators[0] == &braCreator());
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 4)
    {
        std::cerr << "usage: bra_plugin_host_test NAME VERSION NAMESPACE [FIELD:TYPE ...]\n";
        return 2;
    }
    std::vector<std::pair<std::string, std::string>> fields;
    for (int i = 4; i < argc; ++i)
    {
        std::string const arg{argv[i]};
        auto const colon = arg.find(':');
        fields.emplace_back(arg.substr(0, colon), colon == std::string::npos ? "" : arg.substr(colon + 1));
    }
    setProcessLoggerGetter(&testGetLogger);
    testIdentity(argv[1], argv[2], argv[3], fields);
    testFieldsFromOnnxParser();
    testBadFields();
    testSerializationRoundTripAndClone();
    testFormatsAndTypes();
    testOutputShapes();
    testConfigurePlugin();
    testRuntimeLifecycle();
    testRegistrationWithoutTensorRT();
    return report("bra_plugin_host_test");
}
