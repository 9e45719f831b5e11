"""Compile the plugin against the real TensorRT headers and test what runs without TensorRT or a GPU.

Needs TensorRT headers: ``TENSORRT_INCLUDE_DIRS`` (several include directories, separated by ``:``, e.g.
the 8.5, 8.6, 10.x and 11.x headers) and/or ``TENSORRT_INCLUDE_DIR`` (one); every test runs once per
header set, with the plugin interface of that TensorRT (``IPluginV2DynamicExt`` for 8.5/8.6, ``IPluginV3``
for 10/11). The CI machine has none, so these tests skip there, saying so. What they do:

- build the host-side unit test (the plugin's logic against test doubles of the kernels and the
  CUDA driver) with AddressSanitizer/UBSan/LeakSanitizer and ``-Wall -Wextra -Werror``, and run it
  with the identity and plugin fields of the op contract;
- run the registration test in every loading scenario of that TensorRT against fake TensorRT runtimes;
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


def _include_dirs() -> list[str]:
    """The header sets: TENSORRT_INCLUDE_DIRS, then TENSORRT_INCLUDE_DIR (without duplicates)."""
    found: list[str] = []
    for value in (
        *os.environ.get("TENSORRT_INCLUDE_DIRS", "").split(os.pathsep),
        os.environ.get("TENSORRT_INCLUDE_DIR"),
    ):
        if value and value not in found:
            found.append(value)
    return found


INCLUDE_DIRS = _include_dirs()


def _version_part(text: str, part: str) -> int:
    # TensorRT >= 10.11 defines NV_TENSORRT_<PART> through TRT_<PART>_ENTERPRISE.
    match = re.search(rf"#define TRT_{part}_ENTERPRISE (\d+)", text) or re.search(
        rf"#define NV_TENSORRT_{part} (\d+)", text
    )
    assert match, f"cannot read the TensorRT {part.lower()} version"
    return int(match.group(1))


def _tensorrt_version(include: Path) -> tuple[int, int]:
    text = (include / "NvInferVersion.h").read_text()
    return _version_part(text, "MAJOR"), _version_part(text, "MINOR")


def _tensorrt_major(include: Path) -> int:
    return _tensorrt_version(include)[0]


@pytest.fixture(
    scope="module", params=INCLUDE_DIRS or [None], ids=lambda v: Path(v).parent.name if v else "none"
)
def include_dir(request) -> Path:
    """One TensorRT include directory (the tests run once per header set)."""
    value = request.param
    if not value:
        pytest.skip(
            "TENSORRT_INCLUDE_DIR(S) is not set: compiling the plugin needs the TensorRT headers "
            "(NvInferRuntime.h), which this machine does not have"
        )
    path = Path(value)
    if not (path / "NvInferRuntime.h").is_file():
        pytest.fail(
            f"TensorRT include directory {value} holds no NvInferRuntime.h; point it at TensorRT's include/"
        )
    if shutil.which("cmake") is None:
        pytest.fail("TensorRT headers are given but cmake is not installed (needed to build plugins/)")
    return path


def _registration_modes(include: Path) -> list[str]:
    """The loading scenarios of that TensorRT: loadLibrary and the lean runtime exist from 8.6."""
    if _tensorrt_version(include) >= (8, 6):
        return REGISTRATION_MODES
    return [m for m in REGISTRATION_MODES if m not in LOAD_LIBRARY_MODES]


def _exported_entry_points(include: Path) -> set[str]:
    """What the library exports: loadLibrary's entry points of that TensorRT, and the status function."""
    version = _tensorrt_version(include)
    if version >= (10, 0):
        return {"getCreators", "setLoggerFinder", "edge_biformer_plugin_status"}
    if version >= (8, 6):
        return {"getPluginCreators", "setLoggerFinder", "edge_biformer_plugin_status"}
    return {"getPluginCreators", "edge_biformer_plugin_status"}


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def host_build(include_dir, tmp_path_factory) -> Path:
    include = include_dir
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
    "loadLibrary-major-mismatch",
    "second-copy",
    "opt-out",
]
#: The modes that need IPluginRegistry::loadLibrary or a lean runtime (TensorRT >= 8.6).
LOAD_LIBRARY_MODES = ("loadLibrary", "dlopen+loadLibrary", "lean", "lean-only", "loadLibrary-major-mismatch")


@pytest.mark.parametrize("mode", REGISTRATION_MODES)
def test_registration(include_dir, host_build, mode, tmp_path):
    if mode not in _registration_modes(include_dir):
        pytest.skip(
            f"TensorRT {'.'.join(map(str, _tensorrt_version(include_dir)))} has no loadLibrary/lean runtime"
        )
    major = _tensorrt_major(include_dir)
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
    elif mode == "loadLibrary-major-mismatch":
        env["EB_FAKE_TRT_MAJOR"] = str(major + 1)
        env["EDGE_BIFORMER_PLUGIN_STATIC_REGISTRATION"] = "0"
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
def test_plugin_library_build_interface_and_kernel_integration(include_dir, tmp_path):
    include = include_dir
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
    # The kernels generated at build time, or the pre-generated ones (EB_BRA_KERNELS_DIR).
    kernels_dir = Path(os.environ.get("EB_BRA_KERNELS_DIR") or build / "eb_bra_kernels")
    manifest = json.loads((kernels_dir / "manifest.json").read_text())
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
    assert exported == _exported_entry_points(include), exported

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
    shipped = ("dlopen", "loadLibrary", "dlopen+loadLibrary", "lean", "lean-only")
    for mode in (m for m in shipped if m in _registration_modes(include)):
        proc = _run(
            [str(build / "registration_test"), mode, str(library), str(build / "fake_tensorrt")], env=env
        )
        assert f"registration_test {mode}: passed" in proc.stdout
