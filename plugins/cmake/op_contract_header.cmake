# The C/C++ view of an op contract (edge_biformer/ops/<op>/<Name>.json): generates a header with the
# op's TensorRT identity, its ONNX identity, its plugin fields and its fixed string attributes, so that
# the plugin, its tests and the samples take those facts from the contract instead of re-typing them.
#
# In a CMake project (configure time; reconfigures when the JSON changes):
#
#   include(path/to/plugins/cmake/op_contract_header.cmake)
#   eb_op_contract_header(CONTRACT <json> OUTPUT <header> PREFIX EB_BRA)
#
# As a script (no project, no TensorRT; what tests/plugins/test_plugin_loader.py runs):
#
#   cmake -DCONTRACT=<json> -DOUTPUT=<header> [-DPREFIX=EB_BRA] -P plugins/cmake/op_contract_header.cmake
#
# The header needs no other header (C or C++), so a program can print its content without TensorRT:
#
#   #define <P>_PLUGIN_NAME "..."          plugin name, version and namespace (string literals)
#   #define <P>_PLUGIN_VERSION "..."
#   #define <P>_PLUGIN_NAMESPACE "..."
#   #define <P>_ONNX_OP_TYPE "..."         ONNX node op_type, domain (string literals), opset (number)
#   #define <P>_ONNX_DOMAIN "..."
#   #define <P>_ONNX_OPSET_VERSION 1
#   #define <P>_NB_INPUTS 4                inputs and outputs of the op
#   #define <P>_NB_OUTPUTS 1
#   #define <P>_NB_PLUGIN_FIELDS 4         attributes with "plugin_field": true, in the contract's order:
#   #define <P>_PLUGIN_FIELDS(X) X(ID, "name", kTYPE) ...
#                                          kTYPE is a bare nvinfer1::PluginFieldType enumerator
#                                          (int -> kINT32, float -> kFLOAT32, string -> kCHAR)
#   #define <P>_NB_FIXED_ATTRIBUTES 2      attributes with a fixed "value" (the ONNX parser's lookup keys):
#   #define <P>_FIXED_ATTRIBUTES(X) X(ID, "name", "value") ...
#   #define <P>_ATTR_<ID> "name"           per attribute; plus <P>_ATTR_<ID>_TYPE (plugin fields) and
#                                          <P>_ATTR_<ID>_VALUE (fixed attributes)
#
# <ID> is the attribute name in upper case. The file is rewritten only when its content changes.

if(CMAKE_VERSION VERSION_LESS 3.19)
  message(FATAL_ERROR "op_contract_header.cmake needs CMake >= 3.19 (string(JSON)); this is ${CMAKE_VERSION}")
endif()

# One member of the contract; a missing member is a FATAL_ERROR naming the file.
function(_eb_contract_get out json)
  string(JSON _value ERROR_VARIABLE _error GET "${json}" ${ARGN})
  if(_error)
    string(REPLACE ";" "." _where "${ARGN}")
    message(FATAL_ERROR "${_EB_CONTRACT_FILE}: cannot read '${_where}': ${_error}")
  endif()
  set(${out} "${_value}" PARENT_SCOPE)
endfunction()

# A C string literal of a value (backslashes and quotes escaped).
function(_eb_c_string out value)
  string(REPLACE "\\" "\\\\" _escaped "${value}")
  string(REPLACE "\"" "\\\"" _escaped "${_escaped}")
  set(${out} "\"${_escaped}\"" PARENT_SCOPE)
endfunction()

# Write the header for the contract `contract` into `output`, macros prefixed with `prefix`.
function(_eb_write_contract_header contract output prefix)
  if(NOT prefix MATCHES "^[A-Z][A-Z0-9_]*$")
    message(FATAL_ERROR "op_contract_header: PREFIX '${prefix}' must be an upper-case C identifier")
  endif()
  if(NOT EXISTS "${contract}")
    message(FATAL_ERROR "op_contract_header: the contract ${contract} does not exist")
  endif()
  set(_EB_CONTRACT_FILE "${contract}")
  file(READ "${contract}" _json)
  get_filename_component(_file_name "${contract}" NAME)

  set(_identity "")
  foreach(_key name version namespace)
    _eb_contract_get(_value "${_json}" ${_key})
    _eb_c_string(_literal "${_value}")
    string(TOUPPER "${_key}" _upper)
    string(APPEND _identity "#define ${prefix}_PLUGIN_${_upper} ${_literal}\n")
  endforeach()
  _eb_contract_get(_name "${_json}" name)
  foreach(_key op_type domain)
    _eb_contract_get(_value "${_json}" onnx ${_key})
    _eb_c_string(_literal "${_value}")
    string(TOUPPER "${_key}" _upper)
    string(APPEND _identity "#define ${prefix}_ONNX_${_upper} ${_literal}\n")
  endforeach()
  _eb_contract_get(_opset "${_json}" onnx opset_version)
  string(APPEND _identity "#define ${prefix}_ONNX_OPSET_VERSION ${_opset}\n")
  string(JSON _nb_inputs LENGTH "${_json}" inputs)
  string(JSON _nb_outputs LENGTH "${_json}" outputs)

  set(_fields "")
  set(_fixed "")
  set(_per_attribute "")
  set(_nb_fields 0)
  set(_nb_fixed 0)
  string(JSON _nb_attributes LENGTH "${_json}" attributes)
  if(_nb_attributes GREATER 0)
    math(EXPR _last "${_nb_attributes} - 1")
    foreach(_i RANGE ${_last})
      _eb_contract_get(_attr_name "${_json}" attributes ${_i} name)
      _eb_contract_get(_attr_type "${_json}" attributes ${_i} type)
      if(NOT _attr_name MATCHES "^[A-Za-z_][A-Za-z0-9_]*$")
        message(FATAL_ERROR "${contract}: attribute name '${_attr_name}' is not a C identifier")
      endif()
      string(TOUPPER "${_attr_name}" _id)
      _eb_c_string(_name_literal "${_attr_name}")
      string(APPEND _per_attribute "#define ${prefix}_ATTR_${_id} ${_name_literal}\n")
      # As edge_biformer.ops.contract reads it: numbers are plugin fields unless the contract says otherwise.
      string(JSON _is_field ERROR_VARIABLE _no_flag GET "${_json}" attributes ${_i} plugin_field)
      if(_no_flag)
        if(_attr_type STREQUAL "string")
          set(_is_field OFF)
        else()
          set(_is_field ON)
        endif()
      endif()
      if(_is_field)
        if(_attr_type STREQUAL "int")
          set(_field_type kINT32)
        elseif(_attr_type STREQUAL "float")
          set(_field_type kFLOAT32)
        elseif(_attr_type STREQUAL "string")
          set(_field_type kCHAR)
        else()
          message(FATAL_ERROR "${contract}: attribute '${_attr_name}' has type '${_attr_type}' (int, float or string)")
        endif()
        list(APPEND _fields "X(${_id}, ${_name_literal}, ${_field_type})")
        string(APPEND _per_attribute "#define ${prefix}_ATTR_${_id}_TYPE ${_field_type}\n")
        math(EXPR _nb_fields "${_nb_fields} + 1")
      endif()
      string(JSON _value ERROR_VARIABLE _no_value GET "${_json}" attributes ${_i} value)
      if(NOT _no_value)
        _eb_c_string(_value_literal "${_value}")
        list(APPEND _fixed "X(${_id}, ${_name_literal}, ${_value_literal})")
        string(APPEND _per_attribute "#define ${prefix}_ATTR_${_id}_VALUE ${_value_literal}\n")
        math(EXPR _nb_fixed "${_nb_fixed} + 1")
      endif()
    endforeach()
  endif()

  # One X(...) per line; the list separator would be a ';' inside the macro otherwise.
  list(JOIN _fields " \\\n    " _fields)
  list(JOIN _fixed " \\\n    " _fixed)
  set(_guard "${prefix}_CONTRACT_H")
  set(_text "/* Generated from ${_file_name} by plugins/cmake/op_contract_header.cmake. Do not edit. */
/*
 * The ${_name} op as its contract declares it: TensorRT and ONNX identity, plugin
 * fields and fixed string attributes. Plain macros: usable from C and C++, without TensorRT headers.
 */
#ifndef ${_guard}
#define ${_guard}

/* Identity: the TensorRT plugin registry key and the ONNX node. */
${_identity}
/* Tensors. */
#define ${prefix}_NB_INPUTS ${_nb_inputs}
#define ${prefix}_NB_OUTPUTS ${_nb_outputs}

/* Plugin fields in the contract's order: X(ID, \"name\", TYPE), TYPE a nvinfer1::PluginFieldType enumerator. */
#define ${prefix}_NB_PLUGIN_FIELDS ${_nb_fields}
#define ${prefix}_PLUGIN_FIELDS(X) \\
    ${_fields}

/* Attributes with one fixed value, which are not plugin fields (the ONNX parser's lookup keys; some
 * parser versions still pass them as kCHAR fields): X(ID, \"name\", \"value\"). */
#define ${prefix}_NB_FIXED_ATTRIBUTES ${_nb_fixed}
#define ${prefix}_FIXED_ATTRIBUTES(X) \\
    ${_fixed}

/* Every attribute by name; _TYPE for the plugin fields, _VALUE for the fixed attributes. */
${_per_attribute}
#endif /* ${_guard} */
")
  set(_old "")
  if(EXISTS "${output}")
    file(READ "${output}" _old)
  endif()
  if(NOT _old STREQUAL _text)
    file(WRITE "${output}" "${_text}")
  endif()
endfunction()

#   eb_op_contract_header(CONTRACT <json> OUTPUT <header> [PREFIX <P>])
# Generates the header at configure time and reconfigures when the contract changes.
function(eb_op_contract_header)
  cmake_parse_arguments(ARG "" "CONTRACT;OUTPUT;PREFIX" "" ${ARGN})
  if(NOT ARG_CONTRACT OR NOT ARG_OUTPUT)
    message(FATAL_ERROR "eb_op_contract_header: CONTRACT and OUTPUT are required")
  endif()
  if(NOT ARG_PREFIX)
    set(ARG_PREFIX EB_OP)
  endif()
  get_filename_component(_contract "${ARG_CONTRACT}" ABSOLUTE)
  _eb_write_contract_header("${_contract}" "${ARG_OUTPUT}" "${ARG_PREFIX}")
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${_contract}")
endfunction()

# Script mode: cmake -DCONTRACT=... -DOUTPUT=... [-DPREFIX=...] -P op_contract_header.cmake
if(CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  if(NOT CONTRACT OR NOT OUTPUT)
    message(FATAL_ERROR
      "usage: cmake -DCONTRACT=<contract.json> -DOUTPUT=<header.h> [-DPREFIX=EB_BRA] -P ${CMAKE_CURRENT_LIST_FILE}")
  endif()
  if(NOT PREFIX)
    set(PREFIX EB_OP)
  endif()
  _eb_write_contract_header("${CONTRACT}" "${OUTPUT}" "${PREFIX}")
endif()
