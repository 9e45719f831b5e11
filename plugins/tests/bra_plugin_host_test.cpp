/*
 * Host-side unit test of the BiLevelRoutingAttention plugin logic, compiled against the real TensorRT
 * headers (8.5/8.6: the IPluginV2DynamicExt; 10.x/11.x: the IPluginV3) and run without TensorRT's libraries
 * or a GPU: the kernels and the CUDA driver are test doubles (fake_bra_launch.c, mock_cuda_driver.c);
 * TensorRT's IExprBuilder / IDimensionExpr / IErrorRecorder are played by the stand-ins of
 * plugin_test_helpers.h, and plugin_under_test.h puts either plugin interface behind one test interface.
 * This file: identity, fields, serialization, types, formats and shapes; bra_plugin_host_test_runtime.cpp:
 * the run-time lifecycle, kernel modules across CUDA contexts, logging and registration.
 *
 *   bra_plugin_host_test NAME VERSION NAMESPACE [FIELD:TYPE ...]
 *
 * The arguments are what the op contract JSON declares: the identity, and the plugin fields with
 * their PluginFieldType (e.g. n_win:kINT32), in order. Exit status 0 when every check passes. Built by
 * plugins/tests/CMakeLists.txt with -DEB_BUILD_HOST_TESTS=ON (and -DEB_SANITIZE=ON for
 * AddressSanitizer/UBSan/LeakSanitizer), run by tests/plugins/test_plugin_build.py.
 */
#include "bra_contract.h"
#include "bra_plugin_core.h"
#include "bra_validation.h"
#include "host_test_cases.h"
#include "mock_cuda_driver.h"
#include "plugin_fields.h"
#include "plugin_logging.h"
#include "plugin_test_helpers.h"
#include "plugin_under_test.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

namespace
{

using namespace edge_biformer::plugin;
using namespace edge_biformer::plugin_test;
using nvinfer1::DynamicPluginTensorDesc;

void testIdentity(char const* name, char const* version, char const* ns,
    std::vector<std::pair<std::string, std::string>> const& fields)
{
#if EB_TRT_HAS_PLUGIN_V3
    auto& creator = braCreator();
    CHECK(std::strcmp(creator.getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
#else
    auto& creator = braCreatorV2();
#endif
    CHECK(std::strcmp(creator.getPluginName(), name) == 0);
    CHECK(std::strcmp(creator.getPluginVersion(), version) == 0);
    CHECK(std::strcmp(creator.getPluginNamespace(), ns) == 0);
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
    auto plugin = TestPlugin::create(f.fc);
    CHECK(plugin != nullptr);
    if (!plugin)
    {
        return;
    }
    CHECK(plugin->name() == name && plugin->version() == version && plugin->pluginNamespace() == ns);
#if EB_TRT_HAS_PLUGIN_V3
    CHECK(std::strcmp(plugin->raw()->getInterfaceInfo().kind, "PLUGIN") == 0);
    auto* core = plugin->raw()->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE);
    CHECK(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0);
    CHECK(std::strcmp(plugin->build()->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
    CHECK(std::strcmp(plugin->runtime()->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
    CHECK(plugin->raw()->getCapabilityInterface(static_cast<nvinfer1::PluginCapabilityType>(7)) == nullptr);
#else
    // IPluginV2DynamicExt: initialize() succeeds for a plugin without build errors; clones keep the namespace.
    CHECK(plugin->raw()->initialize() == 0);
    plugin->raw()->setPluginNamespace("another");
    CHECK(plugin->pluginNamespace() == "another" && plugin->clone()->pluginNamespace() == "another");
#endif
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
    CHECK(TestPlugin::create(f.fc) != nullptr);

    // Hand-built fields with other integer/float widths are accepted.
    double scale64 = 0.25;
    Fields g;
#if EB_TRT_HAS_64BIT_TYPES
    int64_t nWin64 = 8;
    g.list[0] = PluginField{EB_BRA_ATTR_N_WIN, &nWin64, PluginFieldType::kINT64, 1};
#else
    int16_t nWin16 = 8;
    g.list[0] = PluginField{EB_BRA_ATTR_N_WIN, &nWin16, PluginFieldType::kINT16, 1};
#endif
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
        CHECK(TestPlugin::create(f.fc) == nullptr);
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
        CHECK(TestPlugin::create(f.fc) == nullptr);
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
    auto plugin = TestPlugin::create(f.fc);
    CHECK(plugin != nullptr);
    auto restored = plugin->serializeAndRestore();
    CHECK(restored != nullptr);
    if (restored)
    {
        BraAttributes const& a = restored->attributes();
        CHECK(a.nWin == 7 && a.numHeads == 2 && a.topk == 4);
        CHECK(std::memcmp(&a.scale, &f.scale, sizeof(float)) == 0); // bit-exact
    }
#if EB_TRT_HAS_PLUGIN_V3
    // A second call returns consistent storage.
    PluginFieldCollection const* serial = plugin->runtime()->getFieldsToSerialize();
    CHECK(plugin->runtime()->getFieldsToSerialize() == serial && serial->nbFields == 4);
#else
    // The bytes: a format word and the four fields; anything else is refused with the fix.
    CHECK(plugin->raw()->getSerializationSize() == 4 + 4 * 4);
    std::vector<unsigned char> bytes(plugin->raw()->getSerializationSize());
    plugin->raw()->serialize(bytes.data());
    CHECK(TestPlugin::deserialize(bytes) != nullptr);
    std::vector<unsigned char> shorter(bytes.begin(), bytes.end() - 1);
    CHECK(TestPlugin::deserialize(shorter) == nullptr);
    CHECK(contains(gLogger.last, "rebuild the engine with this library"));
    std::vector<unsigned char> otherFormat = bytes;
    otherFormat[0] ^= 0xFFU;
    CHECK(TestPlugin::deserialize(otherFormat) == nullptr);
    CHECK(contains(gLogger.last, "cannot deserialize layer 'bra_0'"));
    std::vector<unsigned char> badTopk = bytes;
    int32_t const topk = 99;
    std::memcpy(badTopk.data() + 4 + 2 * 4, &topk, sizeof(topk));
    CHECK(TestPlugin::deserialize(badTopk) == nullptr && contains(gLogger.last, "topk = 99 must lie in"));
#endif

    auto copy = plugin->clone();
    CHECK(copy != nullptr && copy->raw() != plugin->raw());
    CHECK(copy->attributes().topk == 4);
    CHECK(!copy->hasKernelModule());
    plugin.reset(); // the clone is independent of the original
    CHECK(copy->metadata() == "n_win=7, num_heads=2, topk=4, scale=0.0883883461");
    CHECK(copy->nbOutputs() == 1);
    CHECK(copy->workspace() == 0);
#if EB_TRT_HAS_PLUGIN_V3
    CHECK(copy->build()->getTimingCacheID() != nullptr);
#endif
}

void testFormatsAndTypes()
{
    Fields f;
    auto plugin = TestPlugin::create(f.fc);
    PluginTensorDesc io[5]{};
    auto set = [&](int i, DataType t, TensorFormat fmt = TensorFormat::kLINEAR) {
        io[i].type = t;
        io[i].format = fmt;
    };
    for (DataType t : {DataType::kFLOAT, DataType::kHALF})
    {
        set(0, t);
        CHECK(plugin->supportsFormat(0, io));
        set(1, t);
        set(2, t);
        CHECK(plugin->supportsFormat(1, io) && plugin->supportsFormat(2, io));
        set(3, DataType::kINT32);
        CHECK(plugin->supportsFormat(3, io));
        set(4, t);
        CHECK(plugin->supportsFormat(4, io));
        set(4, t == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT);
        CHECK(!plugin->supportsFormat(4, io)); // output type = input type
    }
    set(0, DataType::kINT8);
    CHECK(!plugin->supportsFormat(0, io));
#if EB_TRT_HAS_64BIT_TYPES
    set(0, DataType::kBF16);
    CHECK(!plugin->supportsFormat(0, io));
#endif
    set(0, DataType::kHALF, TensorFormat::kHWC8);
    CHECK(!plugin->supportsFormat(0, io));
    set(0, DataType::kHALF);
    set(3, DataType::kFLOAT);
    CHECK(!plugin->supportsFormat(3, io));
    set(1, DataType::kFLOAT);
    CHECK(!plugin->supportsFormat(1, io));
    CHECK(!plugin->supportsFormat(5, io));
    CHECK(!plugin->supportsFormat(0, io, 3, 1));

    DataType out{DataType::kFLOAT};
    DataType const half4[] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kINT32};
    CHECK(plugin->outputType(half4, 4, out) == 0 && out == DataType::kHALF);
    DataType const float4[] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32};
    CHECK(plugin->outputType(float4, 4, out) == 0 && out == DataType::kFLOAT);
    DataType const mixed[] = {DataType::kHALF, DataType::kFLOAT, DataType::kHALF, DataType::kINT32};
    CHECK(plugin->outputType(mixed, 4, out) != 0);
    CHECK(contains(gLogger.last, "q, k and v must all be float32 or all be float16; got q float16, k float32"));
    DataType const floatIdx[] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kFLOAT};
    CHECK(plugin->outputType(floatIdx, 4, out) != 0);
    CHECK(contains(gLogger.last, "r_idx must be int32"));
}

void testOutputShapes()
{
    Fields f; // n_win 7, heads 2, topk 4
    auto plugin = TestPlugin::create(f.fc);
    ExprBuilder eb;
    DimsExprs out{};
    {
        // dynamic N, H, W; Hq != Hk; Cqk != Cv
        ShapeExprs s({{-1, -1, -1, 64}, {-1, -1, -1, 64}, {-1, -1, -1, 32}, {-1, 49, 4}});
        CHECK(plugin->outputShape(s.inputs, out, eb) == 0);
        CHECK(out.nbDims == 4 && out.d[0] == s.inputs[0].d[0] && out.d[1] == s.inputs[0].d[1]
            && out.d[2] == s.inputs[0].d[2] && out.d[3] == s.inputs[2].d[3]);
    }
    {
        ShapeExprs s({{2, 14, 21, 64}, {2, 28, 28, 64}, {2, 28, 28, 32}, {2, 49, 4}});
        CHECK(plugin->outputShape(s.inputs, out, eb) == 0);
        CHECK(out.d[1]->getConstantValue() == 14 && out.d[2]->getConstantValue() == 21
            && out.d[3]->getConstantValue() == 32);
    }
    auto rejects = [&](std::vector<std::vector<int64_t>> const& shapes, std::string const& message) {
        ShapeExprs s(shapes);
        gLogger.last.clear();
        int32_t const rc = plugin->outputShape(s.inputs, out, eb);
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
    CHECK(rejects({{1, 14, 14, 64}, {1, 14, 14, 64}, {1, 14, 14, 32}, {1, 49}}, "q, k, v must be 4-D NHWC"));
}

void testConfigurePlugin()
{
    Fields f;
    auto plugin = TestPlugin::create(f.fc);
    DynamicPluginTensorDesc io[5]{};
    mock_cuda_set_no_context(0);
    setSm(87);
    setProfile(io, {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{4, 56, 56, 64}, {4, 56, 56, 64}, {4, 56, 56, 32}, {4, 49, 4}},
        {{8, 112, 112, 64}, {8, 112, 112, 64}, {8, 112, 112, 32}, {8, 49, 4}}, DataType::kHALF);
    CHECK(plugin->configure(io) == 0);

    setProfile(io, {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{4, 56, 56, 64}, {4, 56, 56, 64}, {4, 56, 56, 32}, {4, 49, 4}},
        {{8, 100, 112, 64}, {8, 112, 112, 64}, {8, 112, 112, 32}, {8, 49, 4}}, DataType::kHALF);
    CHECK(plugin->configure(io) != 0);
    CHECK(contains(gLogger.last, "profile kMAX shapes: the heights and widths of q and k/v must be multiples of n_win"));

    // Head dim 256 (512 channels / 2 heads) is outside the compiled variants: fails at build time.
    setProfile(io, {{1, 7, 7, 512}, {1, 7, 7, 512}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 512}, {1, 7, 7, 512}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 512}, {1, 7, 7, 512}, {1, 7, 7, 32}, {1, 49, 4}}, DataType::kFLOAT);
    CHECK(plugin->configure(io) != 0);
    CHECK(contains(gLogger.last, "head dims d_qk=256, d_v=16 (float32) exceed the largest compiled kernel variant"));

    // A GPU without kernels fails at build time too.
    setSm(70);
    setProfile(io, {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}}, DataType::kHALF);
    CHECK(plugin->configure(io) != 0);
    CHECK(contains(gLogger.last, "no kernel image for this GPU (sm_70)"));
    CHECK(contains(gLogger.last, "--cuda-architectures 70"));
    setSm(87);

    // Mixed types are refused.
    setProfile(io, {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}},
        {{1, 7, 7, 64}, {1, 7, 7, 64}, {1, 7, 7, 32}, {1, 49, 4}}, DataType::kHALF);
    io[2].desc.type = DataType::kFLOAT;
    CHECK(plugin->configure(io) != 0);
}

} // namespace

namespace edge_biformer
{
namespace plugin_test
{

void setSm(int sm)
{
    mock_cuda_set_device(sm / 10, sm % 10, 166912);
}

} // namespace plugin_test
} // namespace edge_biformer

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
    runRuntimeTests();
    return report("bra_plugin_host_test");
}
