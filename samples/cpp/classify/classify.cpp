/*
 * classify: run an edge-biformer TensorRT engine from C++ and print the top-k classes of each input.
 *
 *   classify ENGINE INPUT [--plugin LIB] [--labels FILE] [--top-k K]
 *
 * ENGINE   a plan built by `edge-biformer build` (TensorRT >= 10, the IPluginV3 plugin library).
 * INPUT    an .npy of preprocessed N x 3 x H x W float32 tensors (`edge-biformer predict --save-input`,
 *          bit-identical to the Python runtime's input), or a binary PPM (P6) image, preprocessed here:
 *          shorter side resized to floor(H / 0.875) (bilinear; the Python runtime uses bicubic, so
 *          logits differ slightly), center crop H x W, ImageNet mean/std.
 * --plugin the plugin library, loaded with IPluginRegistry::loadLibrary (default: the
 *          EDGE_BIFORMER_PLUGIN_LIB environment variable, else libedge_biformer_plugins.so beside
 *          the engine; none if neither exists).
 *
 * The engine runs on one CUDA stream with the batch of INPUT (dynamic batch within the engine's
 * profile). Every TensorRT and CUDA call is checked; a failure prints one line and exits with 1.
 */
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace
{

//! The error type of this program: one line for the user.
struct Failure : std::runtime_error
{
    using std::runtime_error::runtime_error;
};

class Logger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, char const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            std::cerr << "[TensorRT] " << msg << "\n";
        }
    }
};

void checkCuda(cudaError_t status, char const* what)
{
    if (status != cudaSuccess)
    {
        throw Failure(std::string{what} + " failed: " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status)
            + ")");
    }
}

template <typename T>
T* require(T* pointer, std::string const& what)
{
    if (pointer == nullptr)
    {
        throw Failure(what + " failed (see the TensorRT messages above)");
    }
    return pointer;
}

std::vector<char> readFile(std::string const& path)
{
    std::ifstream file(path, std::ios::binary);
    if (!file)
    {
        throw Failure("cannot open " + path);
    }
    return std::vector<char>(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
}

bool endsWith(std::string const& text, std::string const& suffix)
{
    return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

//! A float32 tensor read from an .npy file (little-endian '<f4', C order, version 1.0/2.0/3.0 header).
struct Tensor
{
    std::vector<int64_t> shape;
    std::vector<float> data;
};

Tensor readNpy(std::string const& path)
{
    std::vector<char> bytes = readFile(path);
    if (bytes.size() < 10 || std::memcmp(bytes.data(), "\x93NUMPY", 6) != 0)
    {
        throw Failure(path + " is not an .npy file");
    }
    auto const major = static_cast<unsigned char>(bytes[6]);
    size_t headerLen = 0;
    size_t offset = 0;
    if (major == 1)
    {
        headerLen = static_cast<unsigned char>(bytes[8]) | (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
        offset = 10;
    }
    else
    {
        if (bytes.size() < 12)
        {
            throw Failure(path + ": truncated .npy header");
        }
        for (int i = 0; i < 4; ++i)
        {
            headerLen |= static_cast<size_t>(static_cast<unsigned char>(bytes[static_cast<size_t>(8 + i)])) << (8 * i);
        }
        offset = 12;
    }
    if (offset + headerLen > bytes.size())
    {
        throw Failure(path + ": truncated .npy header");
    }
    std::string const header(bytes.data() + offset, headerLen);
    if (header.find("'descr': '<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
    {
        throw Failure(path + ": expected a C-order float32 array ('<f4'), header " + header);
    }
    auto const open = header.find('(', header.find("'shape'"));
    auto const close = header.find(')', open);
    std::stringstream dims(header.substr(open + 1, close - open - 1));
    Tensor tensor;
    std::string item;
    while (std::getline(dims, item, ','))
    {
        if (item.find_first_not_of(' ') != std::string::npos)
        {
            tensor.shape.push_back(std::stoll(item));
        }
    }
    if (tensor.shape.size() != 4 || tensor.shape[1] != 3)
    {
        throw Failure(path + ": expected N x 3 x H x W tensors");
    }
    auto const count = static_cast<size_t>(
        std::accumulate(tensor.shape.begin(), tensor.shape.end(), int64_t{1}, std::multiplies<int64_t>()));
    size_t const start = offset + headerLen;
    if (bytes.size() - start != count * sizeof(float))
    {
        throw Failure(path + ": the data size does not match the shape");
    }
    tensor.data.resize(count);
    std::memcpy(tensor.data.data(), bytes.data() + start, count * sizeof(float));
    return tensor;
}

//! A binary PPM (P6, maxval 255) image preprocessed to 1 x 3 x H x W (see the file comment).
Tensor readPpm(std::string const& path, int64_t height, int64_t width)
{
    std::ifstream file(path, std::ios::binary);
    std::string magic;
    int w = 0;
    int h = 0;
    int maxval = 0;
    file >> magic;
    auto skipComments = [&file]() {
        file >> std::ws;
        while (file.peek() == '#')
        {
            std::string line;
            std::getline(file, line);
            file >> std::ws;
        }
    };
    skipComments();
    file >> w;
    skipComments();
    file >> h;
    skipComments();
    file >> maxval;
    file.get();
    if (!file || magic != "P6" || w < 1 || h < 1 || maxval != 255)
    {
        throw Failure(path + " is not a binary 8-bit PPM (P6) image; convert it (e.g. with Pillow) or pass an .npy");
    }
    std::vector<unsigned char> rgb(static_cast<size_t>(w) * static_cast<size_t>(h) * 3);
    file.read(reinterpret_cast<char*>(rgb.data()), static_cast<std::streamsize>(rgb.size()));
    if (!file)
    {
        throw Failure(path + ": truncated image data");
    }
    // Shorter side to floor(side / 0.875), then the center crop: the official evaluation transform.
    double const crop = 0.875;
    int64_t newW = 0;
    int64_t newH = 0;
    if (height == width)
    {
        auto const target = static_cast<int64_t>(std::floor(static_cast<double>(height) / crop));
        newW = w <= h ? target : static_cast<int64_t>(target * static_cast<double>(w) / h);
        newH = w <= h ? static_cast<int64_t>(target * static_cast<double>(h) / w) : target;
    }
    else
    {
        newH = static_cast<int64_t>(std::floor(static_cast<double>(height) / crop));
        newW = static_cast<int64_t>(std::floor(static_cast<double>(width) / crop));
    }
    int64_t const top = static_cast<int64_t>(std::lround(static_cast<double>(newH - height) / 2.0));
    int64_t const left = static_cast<int64_t>(std::lround(static_cast<double>(newW - width) / 2.0));
    float const mean[3] = {0.485F, 0.456F, 0.406F};
    float const stdv[3] = {0.229F, 0.224F, 0.225F};
    Tensor tensor;
    tensor.shape = {1, 3, height, width};
    tensor.data.resize(static_cast<size_t>(3 * height * width));
    double const sx = static_cast<double>(w) / static_cast<double>(newW);
    double const sy = static_cast<double>(h) / static_cast<double>(newH);
    for (int64_t y = 0; y < height; ++y)
    {
        double const fy = std::clamp((static_cast<double>(y + top) + 0.5) * sy - 0.5, 0.0, static_cast<double>(h - 1));
        auto const y0 = static_cast<int64_t>(fy);
        int64_t const y1 = std::min<int64_t>(y0 + 1, h - 1);
        double const wy = fy - static_cast<double>(y0);
        for (int64_t x = 0; x < width; ++x)
        {
            double const fx
                = std::clamp((static_cast<double>(x + left) + 0.5) * sx - 0.5, 0.0, static_cast<double>(w - 1));
            auto const x0 = static_cast<int64_t>(fx);
            int64_t const x1 = std::min<int64_t>(x0 + 1, w - 1);
            double const wx = fx - static_cast<double>(x0);
            for (int64_t c = 0; c < 3; ++c)
            {
                auto at = [&](int64_t yy, int64_t xx) {
                    return static_cast<double>(rgb[static_cast<size_t>((yy * w + xx) * 3 + c)]);
                };
                double const v = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1))
                    + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1));
                tensor.data[static_cast<size_t>((c * height + y) * width + x)]
                    = (static_cast<float>(v / 255.0) - mean[c]) / stdv[c];
            }
        }
    }
    return tensor;
}

std::vector<std::string> readLabels(std::string const& path)
{
    std::vector<std::string> labels;
    if (path.empty())
    {
        return labels;
    }
    std::ifstream file(path);
    if (!file)
    {
        throw Failure("cannot open the labels file " + path);
    }
    for (std::string line; std::getline(file, line);)
    {
        if (!line.empty())
        {
            labels.push_back(line);
        }
    }
    return labels;
}

std::string defaultPlugin(std::string const& engine)
{
    if (char const* env = std::getenv("EDGE_BIFORMER_PLUGIN_LIB"))
    {
        return env;
    }
    auto const slash = engine.find_last_of('/');
    std::string const beside
        = (slash == std::string::npos ? std::string{} : engine.substr(0, slash + 1)) + "libedge_biformer_plugins.so";
    std::ifstream probe(beside);
    return probe ? beside : std::string{};
}

//! Device memory freed on scope exit.
struct DeviceBuffer
{
    void* ptr{nullptr};
    explicit DeviceBuffer(size_t bytes)
    {
        checkCuda(cudaMalloc(&ptr, std::max<size_t>(bytes, 1)), "cudaMalloc");
    }
    ~DeviceBuffer()
    {
        if (ptr != nullptr)
        {
            cudaFree(ptr);
        }
    }
    DeviceBuffer(DeviceBuffer const&) = delete;
    DeviceBuffer& operator=(DeviceBuffer const&) = delete;
    DeviceBuffer(DeviceBuffer&&) = delete;
    DeviceBuffer& operator=(DeviceBuffer&&) = delete;
};

int64_t volume(nvinfer1::Dims const& dims)
{
    int64_t v = 1;
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        v *= static_cast<int64_t>(dims.d[i]);
    }
    return v;
}

int run(int argc, char** argv)
{
    if (argc < 3)
    {
        std::cerr << "usage: " << argv[0] << " ENGINE INPUT.npy|INPUT.ppm [--plugin LIB] [--labels FILE] [--top-k K]\n";
        return 2;
    }
    std::string const enginePath = argv[1];
    std::string const inputPath = argv[2];
    std::string plugin = defaultPlugin(enginePath);
    std::string labelsPath;
    int topK = 5;
    for (int i = 3; i < argc; ++i)
    {
        std::string const arg = argv[i];
        if (i + 1 >= argc)
        {
            throw Failure("option " + arg + " needs a value");
        }
        if (arg == "--plugin")
        {
            plugin = argv[++i];
        }
        else if (arg == "--labels")
        {
            labelsPath = argv[++i];
        }
        else if (arg == "--top-k")
        {
            topK = std::max(1, std::atoi(argv[++i]));
        }
        else
        {
            throw Failure("unknown option " + arg);
        }
    }
    std::vector<std::string> const labels = readLabels(labelsPath);

    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime{require(nvinfer1::createInferRuntime(logger), "createInferRuntime")};
    if (!plugin.empty())
    {
        if (runtime->getPluginRegistry().loadLibrary(plugin.c_str()) == nullptr)
        {
            throw Failure("IPluginRegistry::loadLibrary(" + plugin
                + ") failed: build the plugin library for this TensorRT (scripts/build_plugins.sh)");
        }
    }
    std::vector<char> const plan = readFile(enginePath);
    std::unique_ptr<nvinfer1::ICudaEngine> engine{require(runtime->deserializeCudaEngine(plan.data(), plan.size()),
        "deserializing " + enginePath + " (built by another TensorRT version or GPU, or the plugin is missing)")};
    std::unique_ptr<nvinfer1::IExecutionContext> context{
        require(engine->createExecutionContext(), "createExecutionContext")};

    char const* inputName = nullptr;
    char const* outputName = nullptr;
    for (int32_t i = 0; i < engine->getNbIOTensors(); ++i)
    {
        char const* name = engine->getIOTensorName(i);
        bool const isInput = engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT;
        if (engine->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
        {
            throw Failure(std::string{"tensor "} + name + " is not float32; build the engine with float32 I/O");
        }
        if (isInput && inputName == nullptr)
        {
            inputName = name;
        }
        else if (!isInput && outputName == nullptr)
        {
            outputName = name;
        }
    }
    if (inputName == nullptr || outputName == nullptr)
    {
        throw Failure(enginePath + " has no float32 input/output pair");
    }
    nvinfer1::Dims const maxShape = engine->getProfileShape(inputName, 0, nvinfer1::OptProfileSelector::kMAX);
    nvinfer1::Dims const minShape = engine->getProfileShape(inputName, 0, nvinfer1::OptProfileSelector::kMIN);
    nvinfer1::Dims const staticShape = engine->getTensorShape(inputName);
    nvinfer1::Dims const& bounds = maxShape.nbDims == 4 ? maxShape : staticShape;
    if (bounds.nbDims != 4)
    {
        throw Failure(enginePath + ": expected an N x 3 x H x W input");
    }
    Tensor const input = endsWith(inputPath, ".npy")
        ? readNpy(inputPath)
        : readPpm(inputPath, static_cast<int64_t>(bounds.d[2]), static_cast<int64_t>(bounds.d[3]));
    if (input.shape[2] != static_cast<int64_t>(bounds.d[2]) || input.shape[3] != static_cast<int64_t>(bounds.d[3]))
    {
        throw Failure(inputPath + ": the input is " + std::to_string(input.shape[2]) + "x"
            + std::to_string(input.shape[3]) + ", the engine takes " + std::to_string(bounds.d[2]) + "x"
            + std::to_string(bounds.d[3]));
    }
    int64_t const batch = input.shape[0];
    int64_t const minBatch = minShape.nbDims == 4 ? static_cast<int64_t>(minShape.d[0]) : batch;
    if (batch < minBatch || batch > static_cast<int64_t>(bounds.d[0]))
    {
        throw Failure("batch " + std::to_string(batch) + " is outside the engine's profile ("
            + std::to_string(minBatch) + ".." + std::to_string(bounds.d[0]) + ")");
    }
    nvinfer1::Dims shape = bounds;
    shape.d[0] = static_cast<std::remove_reference_t<decltype(shape.d[0])>>(batch);
    if (!context->setInputShape(inputName, shape))
    {
        throw Failure("IExecutionContext::setInputShape failed");
    }
    nvinfer1::Dims const outShape = context->getTensorShape(outputName);
    if (outShape.nbDims != 2)
    {
        throw Failure(std::string{"output "} + outputName + " is not N x classes (a backbone?): this sample classifies");
    }
    auto const classes = static_cast<int64_t>(outShape.d[1]);
    std::vector<float> logits(static_cast<size_t>(volume(outShape)));

    cudaStream_t stream = nullptr;
    checkCuda(cudaStreamCreate(&stream), "cudaStreamCreate");
    std::unique_ptr<CUstream_st, void (*)(cudaStream_t)> streamGuard{stream, [](cudaStream_t s) { cudaStreamDestroy(s); }};
    DeviceBuffer dIn(input.data.size() * sizeof(float));
    DeviceBuffer dOut(logits.size() * sizeof(float));
    checkCuda(cudaMemcpyAsync(dIn.ptr, input.data.data(), input.data.size() * sizeof(float), cudaMemcpyHostToDevice,
                  stream),
        "cudaMemcpyAsync (input)");
    if (!context->setTensorAddress(inputName, dIn.ptr) || !context->setTensorAddress(outputName, dOut.ptr))
    {
        throw Failure("IExecutionContext::setTensorAddress failed");
    }
    if (!context->enqueueV3(stream))
    {
        throw Failure("IExecutionContext::enqueueV3 failed (see the TensorRT messages above)");
    }
    checkCuda(cudaMemcpyAsync(logits.data(), dOut.ptr, logits.size() * sizeof(float), cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync (output)");
    checkCuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");

    for (int64_t n = 0; n < batch; ++n)
    {
        float const* row = logits.data() + n * classes;
        for (int64_t c = 0; c < classes; ++c)
        {
            if (!std::isfinite(row[c]))
            {
                throw Failure("the engine returned NaN/Inf for input " + std::to_string(n));
            }
        }
        float const top = *std::max_element(row, row + classes);
        double sum = 0.0;
        for (int64_t c = 0; c < classes; ++c)
        {
            sum += std::exp(static_cast<double>(row[c] - top));
        }
        std::vector<int64_t> order(static_cast<size_t>(classes));
        std::iota(order.begin(), order.end(), int64_t{0});
        auto const k = std::min<int64_t>(topK, classes);
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
            [row](int64_t a, int64_t b) { return row[a] > row[b]; });
        std::cout << "input " << n << ":";
        for (int64_t i = 0; i < k; ++i)
        {
            int64_t const c = order[static_cast<size_t>(i)];
            double const p = std::exp(static_cast<double>(row[c] - top)) / sum;
            std::cout << "  " << c << " " << (c < static_cast<int64_t>(labels.size()) ? labels[static_cast<size_t>(c)] : "")
                      << " " << p;
        }
        std::cout << "\n";
    }
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    try
    {
        return run(argc, argv);
    }
    catch (Failure const& err)
    {
        std::cerr << "classify: error: " << err.what() << "\n";
    }
    catch (std::exception const& err)
    {
        std::cerr << "classify: error: " << err.what() << "\n";
    }
    return 1;
}
