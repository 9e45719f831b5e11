/*
 * The BiLevelRoutingAttention contract on the C++ side: the identity and plugin fields (from the
 * header that plugins/cmake/op_contract_header.cmake generates from the op's JSON contract), the
 * attributes they fill, and the checks of attributes and shapes that the plugin runs at creation,
 * build and run time (free functions, unit-tested without a GPU). The prose contract is
 * plugins/bra/README.md.
 */
#ifndef EDGE_BIFORMER_BRA_VALIDATION_H
#define EDGE_BIFORMER_BRA_VALIDATION_H

#include "bra_contract.h"
#include "bra_launch.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>

namespace edge_biformer
{
namespace plugin
{

//! Identity of the op in TensorRT's plugin registry.
constexpr char const* kBRA_PLUGIN_NAME = EB_BRA_PLUGIN_NAME;
constexpr char const* kBRA_PLUGIN_VERSION = EB_BRA_PLUGIN_VERSION;
constexpr char const* kBRA_PLUGIN_NAMESPACE = EB_BRA_PLUGIN_NAMESPACE;

//! Number of plugin inputs (q, k, v, r_idx) and outputs (o).
constexpr int32_t kBRA_NB_INPUTS = EB_BRA_NB_INPUTS;
constexpr int32_t kBRA_NB_OUTPUTS = EB_BRA_NB_OUTPUTS;

//! The creation attributes of one BiLevelRoutingAttention layer.
struct BraAttributes
{
    int32_t nWin{0};
    int32_t numHeads{0};
    int32_t topk{0};
    float scale{0.0F};
};

//! One plugin field of the contract and the attribute it fills (exactly one of the members is set).
struct BraField
{
    char const* name;
    nvinfer1::PluginFieldType type;
    int32_t BraAttributes::*intMember;
    float BraAttributes::*floatMember;
};

constexpr BraField braField(char const* name, nvinfer1::PluginFieldType type, int32_t BraAttributes::*member)
{
    return BraField{name, type, member, nullptr};
}

constexpr BraField braField(char const* name, nvinfer1::PluginFieldType type, float BraAttributes::*member)
{
    return BraField{name, type, nullptr, member};
}

// The BraAttributes member of each plugin field, by the field's ID in the contract header.
#define EB_BRA_MEMBER_N_WIN nWin
#define EB_BRA_MEMBER_NUM_HEADS numHeads
#define EB_BRA_MEMBER_TOPK topk
#define EB_BRA_MEMBER_SCALE scale
#define EB_BRA_BIND_FIELD(id, name, type)                                                                              \
    braField(name, nvinfer1::PluginFieldType::type, &BraAttributes::EB_BRA_MEMBER_##id),

//! The plugin fields, in the contract's order: what the creator lists, parses and serializes.
inline constexpr BraField kBRA_FIELDS[] = {EB_BRA_PLUGIN_FIELDS(EB_BRA_BIND_FIELD)};
#undef EB_BRA_BIND_FIELD
#undef EB_BRA_MEMBER_N_WIN
#undef EB_BRA_MEMBER_NUM_HEADS
#undef EB_BRA_MEMBER_TOPK
#undef EB_BRA_MEMBER_SCALE
inline constexpr int32_t kBRA_NB_FIELDS = EB_BRA_NB_PLUGIN_FIELDS;

constexpr bool braFieldTypesMatchAttributes()
{
    for (BraField const& f : kBRA_FIELDS)
    {
        bool const isInt = f.type == nvinfer1::PluginFieldType::kINT32;
        bool const isFloat = f.type == nvinfer1::PluginFieldType::kFLOAT32;
        if ((f.intMember != nullptr) != isInt || (f.floatMember != nullptr) != isFloat)
        {
            return false;
        }
    }
    return true;
}
static_assert(sizeof(kBRA_FIELDS) / sizeof(kBRA_FIELDS[0]) == EB_BRA_NB_PLUGIN_FIELDS,
    "every plugin field of the contract is bound to an attribute");
static_assert(braFieldTypesMatchAttributes(), "the contract's field types match the attribute types");

//! Parse plugin fields (from the ONNX parser, an application or a serialized plan). Returns an empty
//! string on success, else a one-line description of what is wrong and how to fix it. Unknown field
//! names are errors; the fixed string attributes plugin_version/plugin_namespace that the ONNX node
//! carries are accepted when they name this plugin.
std::string parseAttributes(nvinfer1::PluginFieldCollection const* fc, BraAttributes& out) noexcept;

//! Check the attributes themselves (n_win >= 1, num_heads >= 1, 1 <= topk <= n_win^2, finite scale).
std::string validateAttributes(BraAttributes const& attrs) noexcept;

//! Check concrete input shapes against the op contract and fill the launch parameters.
//! `what` names the shapes in messages (e.g. "runtime shapes", "profile kMIN shapes").
std::string checkShapes(BraAttributes const& attrs, nvinfer1::Dims const& q, nvinfer1::Dims const& k,
    nvinfer1::Dims const& v, nvinfer1::Dims const& rIdx, char const* what, eb_bra_params_t* params) noexcept;

//! The build-time checks of getOutputShapes on the input shape expressions (kBRA_NB_INPUTS of them):
//! ranks, static channel counts, and whatever else of the contract the constant dims already decide.
std::string checkShapeExprs(BraAttributes const& attrs, nvinfer1::DimsExprs const* inputs) noexcept;

//! What a failed eb_bra_check/eb_bra_launch status means for the user, with the fix.
std::string statusMessage(eb_bra_status_t status, eb_bra_params_t const& p, int32_t sm);

} // namespace plugin
} // namespace edge_biformer

#endif // EDGE_BIFORMER_BRA_VALIDATION_H
