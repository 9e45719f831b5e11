"""Compile the plugin against the real TensorRT headers and test what runs without TensorRT or a GPU.

Needs ``TENSORRT_INCLUDE_DIR`` (a directory holding ``NvInferRuntime.h``; the CI machine has none, so
these tests skip there, saying so). What they do:

- build the host-side unit test (the plugin's logic against test doubles of the kernels and the
  CUDA driver) with AddressSanitizer/UBSan/LeakSanitizer and ``-Wall -Wextra -Werror``, and run it
  with the identity and plugin fields of the op contract;
- run the registration test in every loading scenario against fake TensorRT runtimes;
- (slow) build ``libedge_biformer_plugins.so`` itself with ``scripts/build_plugins.sh`` (AOT kernels
  included) and check its ELF interface: exported entry points, dependencies, no libnvinfer import;
  run the plugin with the real launcher and the generated kernel tables on the mock CUDA driver.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_biformer.ops.bra import CONTRACT

REPO = Path(__file__).resolve().parents[2]
#: The TensorRT PluginFieldType of each contract attribute type.
FIELD_TYPES = {"int": "kINT32", "float": "kFLOAT32", "string": "kCHAR"}


def _tensorrt_include() -> Path:
    value = os.environ.get("TENSORRT_INCLUDE_DIR")
    if not value:
        pytest.skip(
            "TENSORRT_INCLUDE_DIR is not set: compiling the plugin needs the TensorRT headers "
            "(NvInferRuntime.h), which this machine does not have"
        )
    path = Path(value)
    if not (path / "NvInferRuntime.h").is_file():
        pytest.fail(
            f"TENSORRT_INCLUDE_DIR={value} holds no NvInferRuntime.h; point it at TensorRT's include/"
        )
    if shutil.which("cmake") is None:
        pytest.fail("TENSORRT_INCLUDE_DIR is set but cmake is not installed (needed to build plugins/)")
    return path


def _tensorrt_major(include: Path) -> int:
    text = (include / "NvInferVersion.h").read_text()
    match = re.search(r"#define TRT_MAJOR_ENTERPRISE (\d+)", text) or re.search(
        r"#define NV_TENSORRT_MAJOR (\d+)", text
    )
    assert match, "cannot read the TensorRT major version"
    return int(match.group(1))


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def host_build(tmp_path_factory) -> Path:
    include = _tensorrt_include()
    build = tmp_path_factory.mktemp("plugin_host_build")
    _run(
        [
            "cmake",
            "-S",
            str(REPO / "plugins"),
            "-B",
            str(build),
            f"-DTENSORRT_INCLUDE_DIR={include}",
            "-DEB_BUILD_LIBRARY=OFF",
            "-DEB_BUILD_HOST_TESTS=ON",
            "-DEB_SANITIZE=ON",
            "-DEB_BUILD_SAMPLES=ON",
        ]
    )
    _run(["cmake", "--build", str(build), "--parallel", "2"])
    return build


def test_host_unit_test(host_build):
    fields = [f"{a.name}:{FIELD_TYPES[a.type]}" for a in CONTRACT.plugin_fields]
    proc = _run(
        [
            str(host_build / "bra_plugin_host_test"),
            CONTRACT.name,
            CONTRACT.version,
            CONTRACT.namespace,
            *fields,
        ]
    )
    assert re.search(r"bra_plugin_host_test: (\d+)/\1 checks passed", proc.stdout), proc.stdout


REGISTRATION_MODES = [
    "dlopen",
    "loadLibrary",
    "dlopen+loadLibrary",
    "lean",
    "lean-only",
    "search-path",
    "no-tensorrt",
    "major-mismatch",
    "second-copy",
    "opt-out",
]


@pytest.mark.parametrize("mode", REGISTRATION_MODES)
def test_registration(host_build, mode, tmp_path):
    major = _tensorrt_major(_tensorrt_include())
    plugin = host_build / "registration_plugin" / "libedge_biformer_plugins.so"
    fake_trt = host_build / "fake_tensorrt"
    cleared = ("LD_LIBRARY_PATH", "EB_FAKE_TRT_MAJOR", "EDGE_BIFORMER_PLUGIN_STATIC_REGISTRATION")
    env = {k: v for k, v in os.environ.items() if k not in cleared}
    args = [str(host_build / "registration_test"), mode, str(plugin), str(fake_trt)]
    if mode == "opt-out":
        env["EDGE_BIFORMER_PLUGIN_STATIC_REGISTRATION"] = "0"
    elif mode == "search-path":
        env["LD_LIBRARY_PATH"] = str(fake_trt)
    elif mode == "major-mismatch":
        env["EB_FAKE_TRT_MAJOR"] = str(major + 1)
    elif mode == "second-copy":
        copy = tmp_path / "copy" / plugin.name
        copy.parent.mkdir()
        shutil.copy2(plugin, copy)
        args.append(str(copy))
    elif mode == "no-tensorrt":
        try:
            ctypes.CDLL(f"libnvinfer.so.{major}")
        except OSError:
            pass
        else:
            pytest.skip(f"a real libnvinfer.so.{major} is on the library search path of this machine")
    proc = _run(args, env=env)
    assert f"registration_test {mode}: passed" in proc.stdout


def _elf(tool: list[str], path: Path) -> str:
    if shutil.which(tool[0]) is None:
        pytest.fail(f"{tool[0]} (binutils) is needed to inspect {path}")
    return _run([*tool, str(path)]).stdout


@pytest.mark.slow
def test_plugin_library_build_interface_and_kernel_integration(tmp_path):
    include = _tensorrt_include()
    build = tmp_path / "build"
    archs = os.environ.get("CUDA_ARCHITECTURES", "87")
    _run(
        [
            "bash",
            str(REPO / "scripts" / "build_plugins.sh"),
            "--tensorrt-include",
            str(include),
            "--cuda-architectures",
            archs,
            "--build-dir",
            str(build),
            "--jobs",
            "2",
            "--cmake-arg",
            "-DEB_BUILD_INTEGRATION_TEST=ON",
            "--cmake-arg",
            "-DEB_SANITIZE=ON",
            "--cmake-arg",
            "-DEB_BUILD_HOST_TESTS=ON",
        ]
    )
    library = build / "libedge_biformer_plugins.so"
    assert library.is_file()

    # The plugin with the real launcher and the generated kernel tables, on the mock CUDA driver.
    manifest = json.loads((build / "eb_bra_kernels" / "manifest.json").read_text())
    codes = {"ptr": "p", "*i32": "p", "i32": "i", "fp32": "f"}
    layout = "".join(codes[p["type"]] for p in manifest["params"])
    proc = _run([str(build / "bra_plugin_integration_test"), layout])
    assert re.search(r"bra_plugin_integration_test: (\d+)/\1 checks passed", proc.stdout), proc.stdout

    dynamic = _elf(["readelf", "-d", "-W"], library)
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic))
    assert "libcuda.so.1" in needed
    assert not {n for n in needed if n.startswith(("libnvinfer", "libcudart", "libnvonnxparser"))}, needed
    assert "NODELETE" in dynamic
    assert "RPATH" not in dynamic and "RUNPATH" not in dynamic

    defined = _elf(["nm", "-D", "--defined-only"], library)
    exported = {line.split()[-1] for line in defined.splitlines() if re.search(r"\s[TDBRVW]\s", line)}
    assert exported == {"getCreators", "setLoggerFinder", "edge_biformer_plugin_status"}, exported

    undefined = _elf(["nm", "-D", "--undefined-only"], library)
    imports = {line.split()[-1].split("@")[0] for line in undefined.splitlines() if line.strip()}
    tensorrt_imports = {s for s in imports if "nvinfer" in s or s in ("getPluginRegistry", "getLogger")}
    assert not tensorrt_imports, f"TensorRT symbols imported at link time: {tensorrt_imports}"
    assert not {s for s in imports if s.startswith("cuda")}, "the CUDA runtime must not be used"

    # The shipped binary's registration, in the scenarios of test_registration. The driver symbols
    # are bound lazily and never called; without a driver, the soname placeholder stands in for it.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LD_LIBRARY_PATH", "LD_BIND_NOW", "EB_FAKE_TRT_MAJOR")
    }
    stub = build / "cuda_soname_stub"
    if stub.is_dir():
        env["LD_LIBRARY_PATH"] = str(stub)
    else:
        try:
            ctypes.CDLL("libcuda.so.1")
        except OSError:
            pytest.skip("libcuda.so was found at build time but libcuda.so.1 cannot be loaded here")
    for mode in ("dlopen", "loadLibrary", "dlopen+loadLibrary", "lean", "lean-only"):
        proc = _run(
            [str(build / "registration_test"), mode, str(library), str(build / "fake_tensorrt")], env=env
        )
        assert f"registration_test {mode}: passed" in proc.stdout
