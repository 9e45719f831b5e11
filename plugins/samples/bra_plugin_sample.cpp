/*
 * bra_plugin_sample: load libedge_biformer_plugins.so the way a C++ application does, check that
 * TensorRT sees the BiLevelRoutingAttention creator and, with --run, build a one-node engine, run it
 * and compare the output with a float64 evaluation of the op (plugins/bra/README.md, Semantics).
 *
 *   bra_plugin_sample --library build/plugins/libedge_biformer_plugins.so [--mode dlopen|loadLibrary]
 *                     [--run] [--fp16] [--batch 2] [--q 14x14] [--kv 28x28] [--channels 64,32]
 *                     [--n-win 7] [--heads 2] [--topk 4] [--verbose]
 *
 * Exit status: 0 on success, 1 on a failed check, 2 on bad usage.
 */
#include "bra_contract.h" // the op's identity and plugin fields, generated from its contract JSON

#include <NvInfer.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace
{

constexpr char const* kNAME = EB_BRA_PLUGIN_NAME;
constexpr char const* kVERSION = EB_BRA_PLUGIN_VERSION;
constexpr char const* kNAMESPACE = EB_BRA_PLUGIN_NAMESPACE;

class Logger : public nvinfer1::ILogger
{
public:
    explicit Logger(bool verbose)
        : mVerbose(verbose)
    {
    }
    void log(Severity severity, char const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING || mVerbose)
        {
            std::cerr << "[TRT] " << msg << "\n";
        }
    }

private:
    bool mVerbose;
};

struct Options
{
    std::string library;
    std::string mode{"dlopen"};
    bool run{false};
    bool fp16{false};
    bool verbose{false};
    int32_t batch{2};
    int32_t hq{14};
    int32_t wq{14};
    int32_t hk{28};
    int32_t wk{28};
    int32_t cqk{64};
    int32_t cv{32};
    int32_t nWin{7};
    int32_t heads{2};
    int32_t topk{4};
};

bool parsePair(std::string const& text, char sep, int32_t& a, int32_t& b)
{
    std::istringstream is(text);
    char c{};
    return static_cast<bool>(is >> a >> c >> b) && c == sep && is.eof();
}

bool parseArgs(int argc, char** argv, Options& o)
{
    for (int i = 1; i < argc; ++i)
    {
        std::string const arg{argv[i]};
        auto next = [&](std::string& value) {
            if (i + 1 >= argc)
            {
                return false;
            }
            value = argv[++i];
            return true;
        };
        std::string value;
        if (arg == "--library" && next(value))
        {
            o.library = value;
        }
        else if (arg == "--mode" && next(value) && (value == "dlopen" || value == "loadLibrary"))
        {
            o.mode = value;
        }
        else if (arg == "--run")
        {
            o.run = true;
        }
        else if (arg == "--fp16")
        {
            o.fp16 = true;
        }
        else if (arg == "--verbose")
        {
            o.verbose = true;
        }
        else if (arg == "--batch" && next(value))
        {
            o.batch = std::atoi(value.c_str());
        }
        else if (arg == "--q" && next(value) && parsePair(value, 'x', o.hq, o.wq))
        {
        }
        else if (arg == "--kv" && next(value) && parsePair(value, 'x', o.hk, o.wk))
        {
        }
        else if (arg == "--channels" && next(value) && parsePair(value, ',', o.cqk, o.cv))
        {
        }
        else if (arg == "--n-win" && next(value))
        {
            o.nWin = std::atoi(value.c_str());
        }
        else if (arg == "--heads" && next(value))
        {
            o.heads = std::atoi(value.c_str());
        }
        else if (arg == "--topk" && next(value))
        {
            o.topk = std::atoi(value.c_str());
        }
        else
        {
            std::cerr << "bra_plugin_sample: bad argument '" << arg << "'\n";
            return false;
        }
    }
    if (o.library.empty())
    {
        std::cerr << "bra_plugin_sample: --library PATH is required\n";
        return false;
    }
    return true;
}

// IEEE binary16 <-> binary32 on the host (round to nearest even), enough for test data.
uint16_t floatToHalf(float f)
{
    uint32_t x{};
    std::memcpy(&x, &f, sizeof(x));
    uint32_t const sign = (x >> 16) & 0x8000U;
    int32_t const exponent = static_cast<int32_t>((x >> 23) & 0xFFU) - 127 + 15;
    uint32_t mantissa = x & 0x7FFFFFU;
    if (exponent <= 0)
    {
        if (exponent < -10)
        {
            return static_cast<uint16_t>(sign);
        }
        mantissa |= 0x800000U;
        uint32_t const shift = static_cast<uint32_t>(14 - exponent);
        uint32_t half = mantissa >> shift;
        uint32_t const rest = mantissa & ((1U << shift) - 1U);
        uint32_t const midpoint = 1U << (shift - 1U);
        if (rest > midpoint || (rest == midpoint && (half & 1U)))
        {
            ++half;
        }
        return static_cast<uint16_t>(sign | half);
    }
    if (exponent >= 31)
    {
        return static_cast<uint16_t>(sign | 0x7C00U);
    }
    uint32_t half = sign | (static_cast<uint32_t>(exponent) << 10) | (mantissa >> 13);
    uint32_t const rest = mantissa & 0x1FFFU;
    if (rest > 0x1000U || (rest == 0x1000U && (half & 1U)))
    {
        ++half;
    }
    return static_cast<uint16_t>(half);
}

float halfToFloat(uint16_t h)
{
    uint32_t const sign = (static_cast<uint32_t>(h) & 0x8000U) << 16;
    uint32_t exponent = (h >> 10) & 0x1FU;
    uint32_t mantissa = h & 0x3FFU;
    uint32_t x{};
    if (exponent == 0)
    {
        if (mantissa == 0)
        {
            x = sign;
        }
        else
        {
            exponent = 127 - 15 + 1;
            while ((mantissa & 0x400U) == 0)
            {
                mantissa <<= 1;
                --exponent;
            }
            x = sign | (exponent << 23) | ((mantissa & 0x3FFU) << 13);
        }
    }
    else if (exponent == 31)
    {
        x = sign | 0x7F800000U | (mantissa << 13);
    }
    else
    {
        x = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    float f{};
    std::memcpy(&f, &x, sizeof(f));
    return f;
}

//! float64 evaluation of the op (the contract's Semantics section).
std::vector<double> reference(Options const& o, std::vector<float> const& q, std::vector<float> const& k,
    std::vector<float> const& v, std::vector<int32_t> const& rIdx, float scale)
{
    auto const z = [](int32_t x) { return static_cast<size_t>(x); };
    size_t const s = z(o.nWin);
    size_t const batch = z(o.batch);
    size_t const heads = z(o.heads);
    size_t const topk = z(o.topk);
    size_t const hq = z(o.hq);
    size_t const wq = z(o.wq);
    size_t const hk = z(o.hk);
    size_t const wk = z(o.wk);
    size_t const cqk = z(o.cqk);
    size_t const cv = z(o.cv);
    size_t const rhq = hq / s;
    size_t const rwq = wq / s;
    size_t const rhk = hk / s;
    size_t const rwk = wk / s;
    size_t const dqk = cqk / heads;
    size_t const dv = cv / heads;
    std::vector<double> out(batch * hq * wq * cv, 0.0);
    std::vector<double> weights;
    std::vector<size_t> kvTokens;
    for (size_t n = 0; n < batch; ++n)
    {
        for (size_t r = 0; r < s * s; ++r)
        {
            for (size_t m = 0; m < heads; ++m)
            {
                for (size_t qi = 0; qi < rhq * rwq; ++qi)
                {
                    size_t const qy = (r / s) * rhq + qi / rwq;
                    size_t const qx = (r % s) * rwq + qi % rwq;
                    size_t const qBase = ((n * hq + qy) * wq + qx) * cqk + m * dqk;
                    weights.clear();
                    kvTokens.clear();
                    for (size_t t = 0; t < topk; ++t)
                    {
                        size_t const kr = z(rIdx[(n * s * s + r) * topk + t]);
                        for (size_t ki = 0; ki < rhk * rwk; ++ki)
                        {
                            size_t const ky = (kr / s) * rhk + ki / rwk;
                            size_t const kx = (kr % s) * rwk + ki % rwk;
                            size_t const token = (n * hk + ky) * wk + kx;
                            double dot = 0.0;
                            for (size_t c = 0; c < dqk; ++c)
                            {
                                dot += static_cast<double>(q[qBase + c]) * static_cast<double>(k[token * cqk + m * dqk + c]);
                            }
                            weights.push_back(dot * static_cast<double>(scale));
                            kvTokens.push_back(token);
                        }
                    }
                    double const mx = *std::max_element(weights.begin(), weights.end());
                    double sum = 0.0;
                    for (double& w : weights)
                    {
                        w = std::exp(w - mx);
                        sum += w;
                    }
                    size_t const oBase = ((n * hq + qy) * wq + qx) * cv + m * dv;
                    for (size_t j = 0; j < weights.size(); ++j)
                    {
                        for (size_t c = 0; c < dv; ++c)
                        {
                            out[oBase + c] += weights[j] / sum * static_cast<double>(v[kvTokens[j] * cv + m * dv + c]);
                        }
                    }
                }
            }
        }
    }
    return out;
}

#define CUDA_CHECK(call)                                                                                               \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const err_ = (call);                                                                               \
        if (err_ != cudaSuccess)                                                                                       \
        {                                                                                                              \
            std::cerr << "bra_plugin_sample: " #call " failed: " << cudaGetErrorString(err_) << "\n";                  \
            return false;                                                                                              \
        }                                                                                                              \
    } while (false)

struct DeviceBuffer
{
    void* ptr{nullptr};
    ~DeviceBuffer()
    {
        if (ptr != nullptr)
        {
            static_cast<void>(cudaFree(ptr));
        }
    }
};

bool runEngine(Options const& o, nvinfer1::IPluginCreatorV3One& creator, Logger& logger)
{
    using namespace nvinfer1;
    float const scale = 1.0F / std::sqrt(static_cast<float>(o.cqk));
    PluginField const fields[] = {PluginField{EB_BRA_ATTR_N_WIN, &o.nWin, PluginFieldType::EB_BRA_ATTR_N_WIN_TYPE, 1},
        PluginField{EB_BRA_ATTR_NUM_HEADS, &o.heads, PluginFieldType::EB_BRA_ATTR_NUM_HEADS_TYPE, 1},
        PluginField{EB_BRA_ATTR_TOPK, &o.topk, PluginFieldType::EB_BRA_ATTR_TOPK_TYPE, 1},
        PluginField{EB_BRA_ATTR_SCALE, &scale, PluginFieldType::EB_BRA_ATTR_SCALE_TYPE, 1}};
    static_assert(EB_BRA_NB_PLUGIN_FIELDS == 4, "the contract's plugin fields changed: update the sample");
    PluginFieldCollection const fc{EB_BRA_NB_PLUGIN_FIELDS, fields};
    std::unique_ptr<IPluginV3> plugin{creator.createPlugin("bra", &fc, TensorRTPhase::kBUILD)};
    if (!plugin)
    {
        std::cerr << "bra_plugin_sample: createPlugin failed (see the log above)\n";
        return false;
    }
    std::unique_ptr<IBuilder> builder{createInferBuilder(logger)};
#if NV_TENSORRT_MAJOR >= 11
    NetworkDefinitionCreationFlags const flags = 0; // TensorRT 11 networks are always strongly typed
#else
    auto const flags = 1U << static_cast<uint32_t>(NetworkDefinitionCreationFlag::kSTRONGLY_TYPED);
#endif
    std::unique_ptr<INetworkDefinition> network{builder->createNetworkV2(flags)};
    DataType const type = o.fp16 ? DataType::kHALF : DataType::kFLOAT;
    ITensor* inputs[] = {network->addInput("q", type, Dims4{-1, -1, -1, o.cqk}),
        network->addInput("k", type, Dims4{-1, -1, -1, o.cqk}), network->addInput("v", type, Dims4{-1, -1, -1, o.cv}),
        network->addInput("r_idx", DataType::kINT32, Dims3{-1, o.nWin * o.nWin, o.topk})};
    IPluginV3Layer* layer = network->addPluginV3(inputs, 4, nullptr, 0, *plugin);
    if (layer == nullptr)
    {
        return false;
    }
    layer->getOutput(0)->setName("o");
    network->markOutput(*layer->getOutput(0));
    std::unique_ptr<IBuilderConfig> config{builder->createBuilderConfig()};
    IOptimizationProfile* profile = builder->createOptimizationProfile();
    Dims4 const qDims{o.batch, o.hq, o.wq, o.cqk};
    Dims4 const kDims{o.batch, o.hk, o.wk, o.cqk};
    Dims4 const vDims{o.batch, o.hk, o.wk, o.cv};
    Dims3 const rDims{o.batch, o.nWin * o.nWin, o.topk};
    for (auto sel : {OptProfileSelector::kMIN, OptProfileSelector::kOPT, OptProfileSelector::kMAX})
    {
        profile->setDimensions("q", sel, qDims);
        profile->setDimensions("k", sel, kDims);
        profile->setDimensions("v", sel, vDims);
        profile->setDimensions("r_idx", sel, rDims);
    }
    config->addOptimizationProfile(profile);
    std::unique_ptr<IHostMemory> plan{builder->buildSerializedNetwork(*network, *config)};
    if (!plan)
    {
        std::cerr << "bra_plugin_sample: the engine build failed (see the log above)\n";
        return false;
    }
    std::unique_ptr<IRuntime> runtime{createInferRuntime(logger)};
    std::unique_ptr<ICudaEngine> engine{runtime->deserializeCudaEngine(plan->data(), plan->size())};
    if (!engine)
    {
        return false;
    }
    std::unique_ptr<IExecutionContext> context{engine->createExecutionContext()};
    if (!context)
    {
        return false;
    }
    context->setInputShape("q", qDims);
    context->setInputShape("k", kDims);
    context->setInputShape("v", vDims);
    context->setInputShape("r_idx", rDims);

    std::mt19937 rng(1234);
    std::normal_distribution<float> normal(0.0F, 1.0F);
    std::uniform_int_distribution<int32_t> region(0, o.nWin * o.nWin - 1);
    auto count = [](Dims const& d) {
        size_t n = 1;
        for (int32_t i = 0; i < d.nbDims; ++i)
        {
            n *= static_cast<size_t>(d.d[i]);
        }
        return n;
    };
    auto randomTensor = [&](Dims const& d, bool roundToHalf) {
        std::vector<float> x(count(d));
        for (float& e : x)
        {
            e = normal(rng);
            if (roundToHalf)
            {
                e = halfToFloat(floatToHalf(e));
            }
        }
        return x;
    };
    std::vector<float> const q = randomTensor(qDims, o.fp16);
    std::vector<float> const k = randomTensor(kDims, o.fp16);
    std::vector<float> const v = randomTensor(vDims, o.fp16);
    std::vector<int32_t> rIdx(count(rDims));
    for (int32_t& e : rIdx)
    {
        e = region(rng);
    }
    size_t const elementSize = o.fp16 ? 2 : 4;
    Dims4 const oDims{o.batch, o.hq, o.wq, o.cv};
    DeviceBuffer dq;
    DeviceBuffer dk;
    DeviceBuffer dv;
    DeviceBuffer dr;
    DeviceBuffer dout;
    CUDA_CHECK(cudaMalloc(&dq.ptr, q.size() * elementSize));
    CUDA_CHECK(cudaMalloc(&dk.ptr, k.size() * elementSize));
    CUDA_CHECK(cudaMalloc(&dv.ptr, v.size() * elementSize));
    CUDA_CHECK(cudaMalloc(&dr.ptr, rIdx.size() * sizeof(int32_t)));
    CUDA_CHECK(cudaMalloc(&dout.ptr, count(oDims) * elementSize));
    auto upload = [&](void* dst, std::vector<float> const& src) {
        if (o.fp16)
        {
            std::vector<uint16_t> h(src.size());
            std::transform(src.begin(), src.end(), h.begin(), floatToHalf);
            return cudaMemcpy(dst, h.data(), h.size() * 2, cudaMemcpyHostToDevice);
        }
        return cudaMemcpy(dst, src.data(), src.size() * 4, cudaMemcpyHostToDevice);
    };
    CUDA_CHECK(upload(dq.ptr, q));
    CUDA_CHECK(upload(dk.ptr, k));
    CUDA_CHECK(upload(dv.ptr, v));
    CUDA_CHECK(cudaMemcpy(dr.ptr, rIdx.data(), rIdx.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    context->setTensorAddress("q", dq.ptr);
    context->setTensorAddress("k", dk.ptr);
    context->setTensorAddress("v", dv.ptr);
    context->setTensorAddress("r_idx", dr.ptr);
    context->setTensorAddress("o", dout.ptr);
    cudaStream_t stream{};
    CUDA_CHECK(cudaStreamCreate(&stream));
    bool const enqueued = context->enqueueV3(stream);
    cudaError_t const syncErr = cudaStreamSynchronize(stream);
    static_cast<void>(cudaStreamDestroy(stream));
    if (!enqueued || syncErr != cudaSuccess)
    {
        std::cerr << "bra_plugin_sample: inference failed: " << cudaGetErrorString(syncErr) << "\n";
        return false;
    }
    std::vector<float> out(count(oDims));
    if (o.fp16)
    {
        std::vector<uint16_t> h(out.size());
        CUDA_CHECK(cudaMemcpy(h.data(), dout.ptr, h.size() * 2, cudaMemcpyDeviceToHost));
        std::transform(h.begin(), h.end(), out.begin(), halfToFloat);
    }
    else
    {
        CUDA_CHECK(cudaMemcpy(out.data(), dout.ptr, out.size() * 4, cudaMemcpyDeviceToHost));
    }
    std::vector<double> const ref = reference(o, q, k, v, rIdx, scale);
    double maxErr = 0.0;
    double maxRef = 0.0;
    for (size_t i = 0; i < ref.size(); ++i)
    {
        maxErr = std::max(maxErr, std::abs(static_cast<double>(out[i]) - ref[i]));
        maxRef = std::max(maxRef, std::abs(ref[i]));
    }
    // Contract tolerances: 1e-4 absolute (float32), 2e-3 relative to max|o| (float16).
    double const tolerance = o.fp16 ? 2e-3 * maxRef : 1e-4;
    std::cout << "bra_plugin_sample: " << (o.fp16 ? "float16" : "float32") << " max|o - ref| = " << maxErr
              << " (tolerance " << tolerance << ", max|ref| = " << maxRef << ")\n";
    return maxErr <= tolerance;
}

} // namespace

int main(int argc, char** argv)
{
    Options options;
    if (!parseArgs(argc, argv, options))
    {
        return 2;
    }
    Logger logger(options.verbose);
    // Creating the builder first makes libnvinfer's logger the process logger the plugin logs to.
    std::unique_ptr<nvinfer1::IBuilder> keepAlive{nvinfer1::createInferBuilder(logger)};
    nvinfer1::IPluginRegistry* registry = getPluginRegistry();
    void* handle = nullptr;
    if (options.mode == "dlopen")
    {
        // Load-time registration (what trtexec --staticPlugins and DeepStream's custom-lib-path do).
        handle = dlopen(options.library.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (handle == nullptr)
        {
            std::cerr << "bra_plugin_sample: dlopen failed: " << dlerror() << "\n";
            return 1;
        }
        using StatusFn = char const* (*) ();
        if (auto status = reinterpret_cast<StatusFn>(dlsym(handle, "edge_biformer_plugin_status")))
        {
            std::cout << "bra_plugin_sample: " << status() << "\n";
        }
    }
    else
    {
        // Registration through getCreators() (what trtexec --dynamicPlugins does).
        handle = registry->loadLibrary(options.library.c_str());
        if (handle == nullptr)
        {
            std::cerr << "bra_plugin_sample: IPluginRegistry::loadLibrary failed (see the log above)\n";
            return 1;
        }
    }
    nvinfer1::IPluginCreatorInterface* found = registry->getCreator(kNAME, kVERSION, kNAMESPACE);
    // TensorRT tells creator versions apart by their interface kind (as the ONNX parser does).
    auto* creator = found != nullptr && std::strcmp(found->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0
        ? static_cast<nvinfer1::IPluginCreatorV3One*>(found)
        : nullptr;
    if (creator == nullptr)
    {
        std::cerr << "bra_plugin_sample: the registry has no " << kNAMESPACE << "::" << kNAME << " version "
                  << kVERSION << " creator after " << options.mode << "\n";
        return 1;
    }
    std::cout << "bra_plugin_sample: " << options.mode << ": found " << creator->getPluginNamespace()
              << "::" << creator->getPluginName() << " version " << creator->getPluginVersion() << "\n";
    if (options.run && !runEngine(options, *creator, logger))
    {
        return 1;
    }
    return 0;
}
