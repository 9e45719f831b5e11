/*
 * The plugin of this build behind one test interface: the IPluginV3 (TensorRT >= 10 headers) or the
 * IPluginV2DynamicExt (TensorRT 8.5/8.6 headers), so that the host and integration tests check both with one
 * set of cases. Where the interfaces differ in what they can report (V2's getOutputDataType/configurePlugin
 * cannot fail, V2 validates run-time shapes in enqueue), the methods return what TensorRT would see
 * (a failed initialize(), an invalid output shape, a failing enqueue). Header-only.
 */
#ifndef EDGE_BIFORMER_PLUGIN_UNDER_TEST_H
#define EDGE_BIFORMER_PLUGIN_UNDER_TEST_H

#include "bra_validation.h"
#include "plugin_test_helpers.h"
#include "tensorrt_compat.h"

#if EB_TRT_HAS_PLUGIN_V3
#include "bra_plugin.h"
#include "bra_plugin_creator.h"
#else
#include "bra_plugin_creator_v2.h"
#include "bra_plugin_v2.h"
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif

#include <NvInferRuntime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace edge_biformer
{
namespace plugin_test
{

//! Whether this build's plugin is the IPluginV3 (else the IPluginV2DynamicExt of TensorRT 8).
constexpr bool kPLUGIN_V3 = EB_TRT_HAS_PLUGIN_V3;

#if EB_TRT_HAS_PLUGIN_V3
class ResourceContext : public nvinfer1::IPluginResourceContext
{
public:
    explicit ResourceContext(nvinfer1::IErrorRecorder* recorder)
        : mRecorder(recorder)
    {
    }
    nvinfer1::IGpuAllocator* getGpuAllocator() const noexcept override
    {
        return nullptr;
    }
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return mRecorder;
    }

private:
    nvinfer1::IErrorRecorder* mRecorder;
};
using RawPlugin = nvinfer1::IPluginV3;
using PluginClass = plugin::BiLevelRoutingAttentionPlugin;
struct DestroyPlugin
{
    void operator()(RawPlugin* p) const
    {
        delete p;
    }
};
#else
using RawPlugin = nvinfer1::IPluginV2DynamicExt;
using PluginClass = plugin::BiLevelRoutingAttentionPluginV2;
struct DestroyPlugin
{
    void operator()(RawPlugin* p) const
    {
        p->destroy();
    }
};
#endif

class TestPlugin
{
public:
    using Ptr = std::unique_ptr<TestPlugin>;

    //! From creation fields: the build phase (V3 also has the runtime phase).
    static Ptr create(PluginFieldCollection const& fc, bool runtimePhase = false, char const* name = "bra_0")
    {
#if EB_TRT_HAS_PLUGIN_V3
        auto phase = runtimePhase ? nvinfer1::TensorRTPhase::kRUNTIME : nvinfer1::TensorRTPhase::kBUILD;
        return wrap(plugin::braCreator().createPlugin(name, &fc, phase));
#else
        (void) runtimePhase;
        return wrap(static_cast<RawPlugin*>(plugin::braCreatorV2().createPlugin(name, &fc)));
#endif
    }

    //! The plugin TensorRT would make from the serialized state (V3: the fields; V2: the bytes).
    Ptr serializeAndRestore(char const* name = "bra_0")
    {
#if EB_TRT_HAS_PLUGIN_V3
        PluginFieldCollection const* serial = runtime()->getFieldsToSerialize();
        return serial == nullptr ? nullptr : create(*serial, true, name);
#else
        std::vector<unsigned char> bytes(mPlugin->getSerializationSize());
        mPlugin->serialize(bytes.data());
        return wrap(
            static_cast<RawPlugin*>(plugin::braCreatorV2().deserializePlugin(name, bytes.data(), bytes.size())));
#endif
    }

    //! Restore from arbitrary bytes (V2 only: V3 has no byte state); null when the creator refuses.
    static Ptr deserialize(std::vector<unsigned char> const& bytes)
    {
#if EB_TRT_HAS_PLUGIN_V3
        (void) bytes;
        return nullptr;
#else
        return wrap(
            static_cast<RawPlugin*>(plugin::braCreatorV2().deserializePlugin("bra_0", bytes.data(), bytes.size())));
#endif
    }

    Ptr clone() const
    {
        return wrap(mPlugin->clone());
    }

    //! What TensorRT does per execution context: V3 attachToContext (null on failure), V2 clone +
    //! attachToContext (which cannot fail: a failed load shows at the first enqueue).
    Ptr attach(nvinfer1::IErrorRecorder* recorder)
    {
#if EB_TRT_HAS_PLUGIN_V3
        ResourceContext resources(recorder);
        return wrap(runtime()->attachToContext(&resources));
#else
        (void) recorder;
        Ptr attached = clone();
        if (attached)
        {
            attached->mPlugin->attachToContext(nullptr, nullptr, nullptr);
        }
        return attached;
#endif
    }

    PluginClass* object() const
    {
#if EB_TRT_HAS_PLUGIN_V3
        auto* core = mPlugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE);
        return static_cast<PluginClass*>(static_cast<nvinfer1::IPluginV3OneCore*>(core));
#else
        return static_cast<PluginClass*>(mPlugin.get());
#endif
    }
    plugin::BraAttributes const& attributes() const
    {
        return object()->attributes();
    }
    bool hasKernelModule() const
    {
        return object()->hasKernelModule();
    }
    RawPlugin* raw() const
    {
        return mPlugin.get();
    }

    std::string name() const
    {
#if EB_TRT_HAS_PLUGIN_V3
        return static_cast<nvinfer1::IPluginV3OneCore*>(
            mPlugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE))->getPluginName();
#else
        return mPlugin->getPluginType();
#endif
    }
    std::string version() const
    {
#if EB_TRT_HAS_PLUGIN_V3
        return object()->getPluginVersion();
#else
        return mPlugin->getPluginVersion();
#endif
    }
    std::string pluginNamespace() const
    {
        return object()->getPluginNamespace();
    }
    std::string metadata() const
    {
#if EB_TRT_HAS_PLUGIN_V3
        return build()->getMetadataString();
#else
        return object()->metadata();
#endif
    }
    int32_t nbOutputs() const
    {
        return object()->getNbOutputs();
    }
    size_t workspace() const
    {
        return object()->getWorkspaceSize(nullptr, 4, nullptr, 1);
    }

    // ---- build phase ----
    bool supportsFormat(int32_t pos, PluginTensorDesc const* io, int32_t nbInputs = 4, int32_t nbOutputs = 1)
    {
#if EB_TRT_HAS_PLUGIN_V3
        nvinfer1::DynamicPluginTensorDesc dyn[6]{};
        for (int i = 0; i < nbInputs + nbOutputs && i < 6; ++i)
        {
            dyn[i].desc = io[i];
        }
        return build()->supportsFormatCombination(pos, dyn, nbInputs, nbOutputs);
#else
        return mPlugin->supportsFormatCombination(pos, io, nbInputs, nbOutputs);
#endif
    }
    //! 0 and `out` on success; non-zero when the plugin refuses (V2: it logged an error).
    int32_t outputType(DataType const* in, int32_t nbInputs, DataType& out)
    {
#if EB_TRT_HAS_PLUGIN_V3
        return build()->getOutputDataTypes(&out, 1, in, nbInputs);
#else
        int const before = gLogger.count;
        out = mPlugin->getOutputDataType(0, in, nbInputs);
        return gLogger.count == before ? 0 : -1;
#endif
    }
    int32_t outputShape(DimsExprs const* in, DimsExprs& out, nvinfer1::IExprBuilder& eb)
    {
#if EB_TRT_HAS_PLUGIN_V3
        return build()->getOutputShapes(in, 4, nullptr, 0, &out, 1, eb);
#else
        out = mPlugin->getOutputDimensions(0, in, 4, eb);
        return out.nbDims == 4 ? 0 : -1;
#endif
    }
    //! configurePlugin with io[0..3] the inputs and io[4] the output (V2: and initialize(), which reports it).
    int32_t configure(nvinfer1::DynamicPluginTensorDesc const* io)
    {
#if EB_TRT_HAS_PLUGIN_V3
        return build()->configurePlugin(io, 4, io + 4, 1);
#else
        Ptr probe = clone(); // a fresh configuration error state, as TensorRT's build clones have
        probe->mPlugin->configurePlugin(io, 4, io + 4, 1);
        return probe->mPlugin->initialize();
#endif
    }

    // ---- run time ----
    //! V3 onShapeChange; V2 has none (its enqueue validates): 0.
    int32_t shapeChange(PluginTensorDesc const* in, PluginTensorDesc const* out)
    {
#if EB_TRT_HAS_PLUGIN_V3
        return runtime()->onShapeChange(in, 4, out, 1);
#else
        (void) in;
        (void) out;
        return 0;
#endif
    }
    int32_t enqueue(PluginTensorDesc const* in, PluginTensorDesc const* out, void const* const* inputs,
        void* const* outputs, cudaStream_t stream)
    {
#if EB_TRT_HAS_PLUGIN_V3
        return runtime()->enqueue(in, out, inputs, outputs, nullptr, stream);
#else
        return mPlugin->enqueue(in, out, inputs, outputs, nullptr, stream);
#endif
    }
    //! onShapeChange then enqueue: one inference with new shapes.
    int32_t run(PluginTensorDesc const* in, PluginTensorDesc const* out, void const* const* inputs,
        void* const* outputs, cudaStream_t stream)
    {
        int32_t const rc = shapeChange(in, out);
        return rc != 0 ? rc : enqueue(in, out, inputs, outputs, stream);
    }

#if EB_TRT_HAS_PLUGIN_V3
    nvinfer1::IPluginV3OneBuild* build() const
    {
        return static_cast<nvinfer1::IPluginV3OneBuild*>(
            mPlugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    }
    nvinfer1::IPluginV3OneRuntime* runtime() const
    {
        return static_cast<nvinfer1::IPluginV3OneRuntime*>(
            mPlugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    }
#endif

private:
    static Ptr wrap(RawPlugin* p)
    {
        if (p == nullptr)
        {
            return nullptr;
        }
        Ptr out{new TestPlugin};
        out->mPlugin.reset(p);
        return out;
    }

    std::unique_ptr<RawPlugin, DestroyPlugin> mPlugin;
};

//! The profile bounds of configurePlugin: kMIN, kOPT (TensorRT >= 10 only) and kMAX of tensors io[0..4].
inline void setProfile(nvinfer1::DynamicPluginTensorDesc* io, std::vector<std::vector<int64_t>> const& mn,
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
#if EB_TRT_HAS_PLUGIN_V3
        io[i].opt = dims(opt[i]);
#endif
        io[i].max = dims(mx[i]);
        io[i].desc.dims = dims(opt[i]);
    }
}

} // namespace plugin_test
} // namespace edge_biformer

#endif // EDGE_BIFORMER_PLUGIN_UNDER_TEST_H
