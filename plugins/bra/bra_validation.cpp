#include "bra_validation.h"

#include "cuda_driver.h"
#include "plugin_fields.h"

#include <cmath>
#include <exception>
#include <sstream>
#include <utility>
#include <vector>

namespace edge_biformer
{
namespace plugin
{

using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;

namespace
{

//! Largest n_win for which n_win * n_win fits int32.
constexpr int32_t kMAX_N_WIN = 46340;

//! The fixed attributes of the contract, accepted as kCHAR fields when they name this plugin.
struct FixedAttribute
{
    char const* name;
    char const* value;
};
#define EB_BRA_FIXED(id, name, value) FixedAttribute{name, value},
constexpr FixedAttribute kFIXED_ATTRIBUTES[] = {EB_BRA_FIXED_ATTRIBUTES(EB_BRA_FIXED)};
#undef EB_BRA_FIXED

bool isIntField(BraField const& field) noexcept
{
    return field.intMember != nullptr;
}

//! "<name> takes the fields n_win, num_heads, topk (int32) and scale (float32)": the fields in the
//! contract's order, runs of one type grouped.
std::string const& fieldsHelp()
{
    static std::string const help = [] {
        std::vector<std::string> groups;
        for (int32_t i = 0; i < kBRA_NB_FIELDS; ++i)
        {
            BraField const& field = kBRA_FIELDS[i];
            if (i > 0 && isIntField(kBRA_FIELDS[i - 1]) == isIntField(field))
            {
                groups.back() += std::string{", "} + field.name;
            }
            else
            {
                groups.emplace_back(field.name);
            }
            if (i + 1 == kBRA_NB_FIELDS || isIntField(kBRA_FIELDS[i + 1]) != isIntField(field))
            {
                groups.back() += isIntField(field) ? " (int32)" : " (float32)";
            }
        }
        std::string text = std::string{kBRA_PLUGIN_NAME} + " takes the fields ";
        for (size_t g = 0; g < groups.size(); ++g)
        {
            text += (g == 0 ? "" : g + 1 == groups.size() ? " and " : ", ") + groups[g];
        }
        return text;
    }();
    return help;
}

//! Index of a plugin field in kBRA_FIELDS, or -1.
int32_t fieldIndex(std::string const& name) noexcept
{
    for (int32_t i = 0; i < kBRA_NB_FIELDS; ++i)
    {
        if (name == kBRA_FIELDS[i].name)
        {
            return i;
        }
    }
    return -1;
}

//! The value a fixed attribute must have, or null if `name` is none.
char const* fixedValue(std::string const& name) noexcept
{
    for (FixedAttribute const& fixed : kFIXED_ATTRIBUTES)
    {
        if (name == fixed.name)
        {
            return fixed.value;
        }
    }
    return nullptr;
}

//! Read one plugin field into the attribute it fills.
std::string readAttribute(PluginField const& field, BraField const& spec, BraAttributes& attrs)
{
    if (spec.intMember != nullptr)
    {
        return readInt32Field(field, attrs.*spec.intMember);
    }
    double v{};
    std::string err = readFloatField(field, v);
    if (err.empty())
    {
        attrs.*spec.floatMember = static_cast<float>(v);
    }
    return err;
}

} // namespace

std::string parseAttributes(PluginFieldCollection const* fc, BraAttributes& out) noexcept
{
    try
    {
        if (fc == nullptr || fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr))
        {
            return "no plugin fields were given; " + fieldsHelp();
        }
        bool seen[kBRA_NB_FIELDS]{};
        BraAttributes attrs;
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            PluginField const& field = fc->fields[i];
            if (field.name == nullptr)
            {
                return "plugin field #" + std::to_string(i) + " has no name; " + fieldsHelp();
            }
            std::string const name{field.name};
            std::string err;
            int32_t const index = fieldIndex(name);
            if (index >= 0)
            {
                if (seen[index])
                {
                    err = "field '" + name + "' is given twice";
                }
                else
                {
                    seen[index] = true;
                    err = readAttribute(field, kBRA_FIELDS[index], attrs);
                }
            }
            else if (char const* expected = fixedValue(name))
            {
                // The ONNX node's lookup keys; some parser versions pass them on as fields.
                std::string value;
                err = readStringField(field, value);
                if (err.empty() && value != expected)
                {
                    err = "field '" + name + "' is '" + value + "' but this library implements " + kBRA_PLUGIN_NAME
                        + " version " + kBRA_PLUGIN_VERSION + " in namespace " + kBRA_PLUGIN_NAMESPACE;
                }
            }
            else
            {
                err = "unknown plugin field '" + name + "'; " + fieldsHelp();
            }
            if (!err.empty())
            {
                return err;
            }
        }
        std::string missing;
        for (int32_t i = 0; i < kBRA_NB_FIELDS; ++i)
        {
            if (!seen[i])
            {
                missing += (missing.empty() ? "" : ", ") + std::string{kBRA_FIELDS[i].name};
            }
        }
        if (!missing.empty())
        {
            return "missing plugin field(s) " + missing + "; " + fieldsHelp();
        }
        out = attrs;
        return {};
    }
    catch (std::exception const& e)
    {
        return std::string{"cannot read the plugin fields: "} + e.what();
    }
    catch (...)
    {
        return "cannot read the plugin fields";
    }
}

std::string validateAttributes(BraAttributes const& a) noexcept
{
    try
    {
        if (a.nWin < 1 || a.nWin > kMAX_N_WIN)
        {
            return "n_win = " + std::to_string(a.nWin) + " is out of range [1, " + std::to_string(kMAX_N_WIN) + "]";
        }
        if (a.numHeads < 1)
        {
            return "num_heads = " + std::to_string(a.numHeads) + " must be >= 1";
        }
        int32_t const regions = a.nWin * a.nWin;
        if (a.topk < 1 || a.topk > regions)
        {
            return "topk = " + std::to_string(a.topk) + " must lie in [1, n_win*n_win = " + std::to_string(regions)
                + "]";
        }
        if (!std::isfinite(a.scale))
        {
            return "scale must be a finite number (BiFormer uses qk_dim ** -0.5)";
        }
        return {};
    }
    catch (...)
    {
        return "cannot validate the attributes (out of memory)";
    }
}

std::string checkShapes(BraAttributes const& a, Dims const& q, Dims const& k, Dims const& v, Dims const& rIdx,
    char const* what, eb_bra_params_t* params) noexcept
{
    try
    {
        std::string const prefix = std::string{what} + ": ";
        if (q.nbDims != 4 || k.nbDims != 4 || v.nbDims != 4 || rIdx.nbDims != 3)
        {
            return prefix + "q, k, v must be 4-D NHWC and r_idx 3-D [N, n_win*n_win, topk]; got q " + dimsToString(q)
                + ", k " + dimsToString(k) + ", v " + dimsToString(v) + ", r_idx " + dimsToString(rIdx);
        }
        for (Dims const* d : {&q, &k, &v, &rIdx})
        {
            for (int32_t i = 0; i < d->nbDims; ++i)
            {
                if (!fitsInt32(d->d[i]))
                {
                    return prefix + "every dimension must lie in [0, 2^31); got q " + dimsToString(q) + ", k "
                        + dimsToString(k) + ", v " + dimsToString(v) + ", r_idx " + dimsToString(rIdx);
                }
            }
        }
        std::string const shapes = " (q " + dimsToString(q) + ", k " + dimsToString(k) + ", v " + dimsToString(v)
            + ", r_idx " + dimsToString(rIdx) + ")";
        if (k.d[0] != q.d[0] || v.d[0] != q.d[0] || rIdx.d[0] != q.d[0])
        {
            return prefix + "q, k, v and r_idx must have the same batch size" + shapes;
        }
        if (v.d[1] != k.d[1] || v.d[2] != k.d[2])
        {
            return prefix + "k and v must have the same height and width" + shapes;
        }
        if (k.d[3] != q.d[3])
        {
            return prefix + "q and k must have the same number of channels" + shapes;
        }
        int64_t const s = a.nWin;
        if (q.d[1] % s != 0 || q.d[2] % s != 0 || k.d[1] % s != 0 || k.d[2] % s != 0)
        {
            return prefix + "the heights and widths of q and k/v must be multiples of n_win = " + std::to_string(s)
                + shapes + "; pad the maps to a multiple of n_win before the op (BiFormer's auto_pad)";
        }
        if (q.d[3] == 0 || v.d[3] == 0 || q.d[3] % a.numHeads != 0 || v.d[3] % a.numHeads != 0)
        {
            return prefix + "the channels of q/k and of v must be positive multiples of num_heads = "
                + std::to_string(a.numHeads) + shapes;
        }
        if (rIdx.d[1] != s * s || rIdx.d[2] != a.topk)
        {
            return prefix + "r_idx must have shape [N, n_win*n_win = " + std::to_string(s * s)
                + ", topk = " + std::to_string(a.topk) + "]" + shapes;
        }
        if (params != nullptr)
        {
            params->batch = static_cast<int32_t>(q.d[0]);
            params->hq = static_cast<int32_t>(q.d[1]);
            params->wq = static_cast<int32_t>(q.d[2]);
            params->hk = static_cast<int32_t>(k.d[1]);
            params->wk = static_cast<int32_t>(k.d[2]);
            params->c_qk = static_cast<int32_t>(q.d[3]);
            params->c_v = static_cast<int32_t>(v.d[3]);
            params->n_win = a.nWin;
            params->num_heads = a.numHeads;
            params->topk = a.topk;
            params->scale = a.scale;
        }
        return {};
    }
    catch (...)
    {
        return "cannot check the shapes (out of memory)";
    }
}

std::string checkShapeExprs(BraAttributes const& a, DimsExprs const* inputs) noexcept
{
    try
    {
        DimsExprs const& q = inputs[0];
        DimsExprs const& k = inputs[1];
        DimsExprs const& v = inputs[2];
        DimsExprs const& r = inputs[3];
        if (q.nbDims != 4 || k.nbDims != 4 || v.nbDims != 4 || r.nbDims != 3)
        {
            return "q, k, v must be 4-D NHWC [N, H, W, C] and r_idx 3-D [N, n_win*n_win, topk]; got ranks "
                + std::to_string(q.nbDims) + ", " + std::to_string(k.nbDims) + ", " + std::to_string(v.nbDims) + ", "
                + std::to_string(r.nbDims);
        }
        // Build-time checks on whatever is known now; the rest is checked per profile (configurePlugin)
        // and per shape (onShapeChange).
        auto known = [](nvinfer1::IDimensionExpr const* e) { return e != nullptr && e->isConstant(); };
        auto value = [](nvinfer1::IDimensionExpr const* e) { return e->getConstantValue(); };
        for (auto const& [tensor, name] : {std::pair<DimsExprs const*, char const*>{&q, "q"}, {&k, "k"}, {&v, "v"}})
        {
            if (!known(tensor->d[3]))
            {
                return std::string{"the channel count (last dim) of "} + name
                    + " must be known at build time; only N, H and W may be dynamic";
            }
        }
        int64_t const cqk = value(q.d[3]);
        int64_t const cv = value(v.d[3]);
        if (value(k.d[3]) != cqk)
        {
            return "q and k must have the same number of channels; got " + std::to_string(cqk) + " and "
                + std::to_string(value(k.d[3]));
        }
        if (cqk <= 0 || cv <= 0 || cqk % a.numHeads != 0 || cv % a.numHeads != 0)
        {
            return "the channels of q/k (" + std::to_string(cqk) + ") and of v (" + std::to_string(cv)
                + ") must be positive multiples of num_heads = " + std::to_string(a.numHeads);
        }
        int64_t const s = a.nWin;
        for (auto const& [tensor, name] : {std::pair<DimsExprs const*, char const*>{&q, "q"}, {&k, "k"}, {&v, "v"}})
        {
            for (int32_t axis = 1; axis <= 2; ++axis)
            {
                if (known(tensor->d[axis]) && value(tensor->d[axis]) % s != 0)
                {
                    return std::string{"the "} + (axis == 1 ? "height" : "width") + " of " + name + " ("
                        + std::to_string(value(tensor->d[axis])) + ") must be a multiple of n_win = "
                        + std::to_string(s) + "; pad the maps to a multiple of n_win before the op";
                }
            }
        }
        for (int32_t axis = 0; axis <= 2; ++axis)
        {
            if (known(k.d[axis]) && known(v.d[axis]) && value(k.d[axis]) != value(v.d[axis]))
            {
                return "k and v must have the same batch, height and width; they differ in dim "
                    + std::to_string(axis);
            }
        }
        int64_t const batches[] = {known(q.d[0]) ? value(q.d[0]) : -1, known(k.d[0]) ? value(k.d[0]) : -1,
            known(r.d[0]) ? value(r.d[0]) : -1};
        for (int64_t b : batches)
        {
            for (int64_t c : batches)
            {
                if (b >= 0 && c >= 0 && b != c)
                {
                    return "q, k, v and r_idx must have the same batch size";
                }
            }
        }
        if ((known(r.d[1]) && value(r.d[1]) != s * s) || (known(r.d[2]) && value(r.d[2]) != a.topk))
        {
            return "r_idx must have shape [N, n_win*n_win = " + std::to_string(s * s) + ", topk = "
                + std::to_string(a.topk) + "]; got [..., "
                + (known(r.d[1]) ? std::to_string(value(r.d[1])) : std::string{"?"}) + ", "
                + (known(r.d[2]) ? std::to_string(value(r.d[2])) : std::string{"?"}) + "]";
        }
        return {};
    }
    catch (...)
    {
        return "cannot check the shapes (out of memory)";
    }
}

std::string statusMessage(eb_bra_status_t status, eb_bra_params_t const& p, int32_t sm)
{
    std::ostringstream os;
    char const* text = eb_bra_status_string(status);
    os << (text != nullptr ? text : "unknown status") << " [status " << static_cast<int>(status) << "]";
    switch (status)
    {
    case EB_BRA_ERR_NO_KERNEL_FOR_ARCH:
        os << ": the library holds no kernel image for this GPU (sm_" << sm
           << "); rebuild it with this architecture, e.g. scripts/build_plugins.sh --cuda-architectures " << sm;
        break;
    case EB_BRA_ERR_UNSUPPORTED:
    {
        int32_t const dQk = p.num_heads > 0 ? p.c_qk / p.num_heads : 0;
        int32_t const dV = p.num_heads > 0 ? p.c_v / p.num_heads : 0;
        char const* const dtype = p.dtype == EB_BRA_FLOAT16 ? "float16" : "float32";
        if (dQk > 128 || dV > 128)
        {
            os << ": head dims d_qk=" << dQk << ", d_v=" << dV << " (" << dtype
               << ") exceed the largest compiled kernel variant (128)";
        }
        else
        {
            os << ": no compiled kernel variant runs this call (" << dtype << ", d_qk=" << dQk << ", d_v=" << dV
               << "): the variant was left out of the AOT build (--dtype/--head-dim), it needs more shared memory "
                  "than this GPU offers, or one image's map or the grid exceeds 2^31 elements; see "
                  "plugins/bra/README.md, Kernel";
        }
        break;
    }
    case EB_BRA_ERR_CUDA: os << ": " << cudaErrorText(eb_bra_last_cuda_error()); break;
    default: break;
    }
    return os.str();
}

} // namespace plugin
} // namespace edge_biformer
