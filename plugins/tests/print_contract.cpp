/*
 * Prints what the generated op contract header (plugins/cmake/op_contract_header.cmake) says, one fact
 * per line, so that tests/plugins/test_plugin_loader.py can compare it with the JSON contract as
 * edge_biformer.ops.contract reads it. Needs no TensorRT header: the field types are bare tokens.
 *
 *   c++ -std=c++17 -I <dir of bra_contract.h> plugins/tests/print_contract.cpp -o print_contract
 *
 * Output:
 *   identity <name> <version> <namespace>
 *   onnx <op_type> <domain> <opset_version>
 *   tensors <inputs> <outputs>
 *   field <name> <PluginFieldType> <name> <PluginFieldType>   (one per plugin field, in order: from the
 *                                                             X-macro, then from <P>_ATTR_<ID>[_TYPE])
 *   fixed <name> <value> <name> <value>                       (one per fixed attribute, likewise)
 *   counts <plugin fields> <fixed attributes>
 */
#include "bra_contract.h"

#include <cstdio>

#define EB_TOKEN_TEXT_IMPL(x) #x
#define EB_TOKEN_TEXT(x) EB_TOKEN_TEXT_IMPL(x)

int main()
{
    std::printf("identity %s %s %s\n", EB_BRA_PLUGIN_NAME, EB_BRA_PLUGIN_VERSION, EB_BRA_PLUGIN_NAMESPACE);
    std::printf("onnx %s %s %d\n", EB_BRA_ONNX_OP_TYPE, EB_BRA_ONNX_DOMAIN, EB_BRA_ONNX_OPSET_VERSION);
    std::printf("tensors %d %d\n", EB_BRA_NB_INPUTS, EB_BRA_NB_OUTPUTS);
#define EB_PRINT_FIELD(id, name, type)                                                                                 \
    std::printf(                                                                                                       \
        "field %s %s %s %s\n", name, EB_TOKEN_TEXT(type), EB_BRA_ATTR_##id, EB_TOKEN_TEXT(EB_BRA_ATTR_##id##_TYPE));
    EB_BRA_PLUGIN_FIELDS(EB_PRINT_FIELD)
#define EB_PRINT_FIXED(id, name, value)                                                                                \
    std::printf("fixed %s %s %s %s\n", name, value, EB_BRA_ATTR_##id, EB_BRA_ATTR_##id##_VALUE);
    EB_BRA_FIXED_ATTRIBUTES(EB_PRINT_FIXED)
    std::printf("counts %d %d\n", EB_BRA_NB_PLUGIN_FIELDS, EB_BRA_NB_FIXED_ATTRIBUTES);
    return 0;
}
