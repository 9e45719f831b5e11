#!/usr/bin/env bash
# Build libedge_biformer_plugins.so, the BiLevelRoutingAttention TensorRT plugin library.
# See plugins/bra/README.md (Building) for Jetson, x86-64 and cross-architecture builds, and its
# Structure section for the files: CMake configures plugins/ (plugins/CMakeLists.txt, the tests in
# plugins/tests/CMakeLists.txt), generates the plugin's identity/field header from the op contract
# edge_biformer/ops/bra/BiLevelRoutingAttention.json (plugins/cmake/op_contract_header.cmake) and
# the kernel tables with the AOT step (plugins/bra/kernels.cmake), unless --kernels-dir names them.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    cat <<EOF
Usage: scripts/build_plugins.sh [options]

Configures and builds plugins/ with CMake; prints the path of libedge_biformer_plugins.so.

Options (each also read from the environment variable in brackets):
  --tensorrt-root DIR        TensorRT installation with include/ and lib/   [TENSORRT_ROOT]
  --tensorrt-include DIR     directory holding NvInferRuntime.h            [TENSORRT_INCLUDE_DIR]
  --tensorrt-lib DIR         directory holding libnvinfer.so (sample only) [TENSORRT_LIB_DIR]
  --cuda-architectures LIST  compute capabilities, e.g. 87 or "80;86;89;90" [CUDA_ARCHITECTURES]
                             (default: the GPU of this machine if nvidia-smi reports one,
                             else the kernel step's default list)
  --kernels-dir DIR          kernels generated beforehand, possibly on another machine, with
                             python -m edge_biformer.kernels.aot --out DIR   [EB_BRA_KERNELS_DIR]
  --build-dir DIR            build directory (default: build/plugins)
  --build-type TYPE          CMake build type (default: Release)
  --jobs N                   parallel build jobs (default: number of CPUs)
  --cmake-arg ARG            extra argument for the CMake configure step (repeatable)
  -h, --help                 show this help

Without --tensorrt-root/--tensorrt-include the headers are searched in the standard places
(/usr/include/<multiarch>, where JetPack and the TensorRT .deb packages put them).
EOF
}

die() {
    echo "build_plugins.sh: error: $*" >&2
    exit 2
}

tensorrt_root="${TENSORRT_ROOT:-}"
tensorrt_include="${TENSORRT_INCLUDE_DIR:-}"
tensorrt_lib="${TENSORRT_LIB_DIR:-}"
cuda_architectures="${CUDA_ARCHITECTURES:-}"
kernels_dir="${EB_BRA_KERNELS_DIR:-}"
build_dir="${repo_root}/build/plugins"
build_type="Release"
jobs="$(nproc 2>/dev/null || echo 2)"
extra_cmake_args=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --tensorrt-root) tensorrt_root="${2:?--tensorrt-root needs a directory}"; shift 2 ;;
        --tensorrt-include) tensorrt_include="${2:?--tensorrt-include needs a directory}"; shift 2 ;;
        --tensorrt-lib) tensorrt_lib="${2:?--tensorrt-lib needs a directory}"; shift 2 ;;
        --cuda-architectures) cuda_architectures="${2:?--cuda-architectures needs a list}"; shift 2 ;;
        --kernels-dir) kernels_dir="${2:?--kernels-dir needs a directory}"; shift 2 ;;
        --build-dir) build_dir="${2:?--build-dir needs a directory}"; shift 2 ;;
        --build-type) build_type="${2:?--build-type needs a value}"; shift 2 ;;
        --jobs) jobs="${2:?--jobs needs a number}"; shift 2 ;;
        --cmake-arg) extra_cmake_args+=("${2:?--cmake-arg needs a value}"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

# Fail early, with the fix, when the TensorRT headers cannot be found (CMake would say the same later).
header_dirs=()
[[ -n "${tensorrt_include}" ]] && header_dirs+=("${tensorrt_include}")
[[ -n "${tensorrt_root}" ]] && header_dirs+=("${tensorrt_root}/include")
if [[ ${#header_dirs[@]} -eq 0 ]]; then
    multiarch="$(gcc -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")"
    header_dirs+=("/usr/include/${multiarch}" "/usr/include" "/usr/local/TensorRT/include" "/opt/tensorrt/include")
fi
found_header=""
for dir in "${header_dirs[@]}"; do
    if [[ -f "${dir}/NvInferRuntime.h" ]]; then
        found_header="${dir}"
        break
    fi
done
if [[ -z "${found_header}" ]]; then
    die "the TensorRT headers (NvInferRuntime.h) are not in ${header_dirs[*]}. Pass --tensorrt-root DIR" \
        "(a TensorRT tar/zip installation) or --tensorrt-include DIR, or set TENSORRT_ROOT; on JetPack install" \
        "the libnvinfer-dev package. TensorRT 8.5 or newer is required (docs/jetson.md)."
fi

command -v cmake >/dev/null 2>&1 || die "cmake (3.19 or newer) is not installed: apt-get install cmake, or pip install cmake."

# Build for the GPU of this machine when none is given (what someone building on the target wants).
if [[ -z "${cuda_architectures}" ]] && command -v nvidia-smi >/dev/null 2>&1; then
    detected="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d '.' | sort -u | paste -sd ';' || true)"
    if [[ "${detected}" =~ ^[0-9]+(\;[0-9]+)*$ ]]; then
        cuda_architectures="${detected}"
        echo "build_plugins.sh: CUDA architectures from nvidia-smi: ${cuda_architectures}"
    fi
fi
cuda_architectures="${cuda_architectures//,/;}"

cmake_args=(-S "${repo_root}/plugins" -B "${build_dir}" -DCMAKE_BUILD_TYPE="${build_type}"
    -DTENSORRT_INCLUDE_DIR="${found_header}")
[[ -n "${tensorrt_root}" ]] && cmake_args+=(-DTENSORRT_ROOT="${tensorrt_root}")
[[ -n "${tensorrt_lib}" ]] && cmake_args+=(-DTENSORRT_LIB_DIR="${tensorrt_lib}")
[[ -n "${cuda_architectures}" ]] && cmake_args+=(-DCUDA_ARCHITECTURES="${cuda_architectures}")
[[ -n "${kernels_dir}" ]] && cmake_args+=(-DEB_BRA_KERNELS_DIR="${kernels_dir}")
cmake_args+=(${extra_cmake_args[@]+"${extra_cmake_args[@]}"})

echo "build_plugins.sh: TensorRT headers: ${found_header}"
cmake "${cmake_args[@]}"
cmake --build "${build_dir}" --parallel "${jobs}"

library="${build_dir}/libedge_biformer_plugins.so"
[[ -f "${library}" ]] || die "the build finished but ${library} is missing."
echo "build_plugins.sh: built ${library}"
