"""What ``edge-biformer doctor`` checks: Python and packages, TensorRT, CUDA, the GPU, the plugin library,
the Jetson's JetPack. Each check gives PASS, WARN or FAIL with the command that fixes it.

Nothing here needs TensorRT or a GPU: what is absent is reported (a WARN where it is only needed on the
target GPU, a FAIL where the user asked for something that cannot work, such as a plugin library
without kernels for this GPU).
"""

from __future__ import annotations

import ctypes
import platform
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_biformer.plugins import library_archs, library_tensorrt

__all__ = [
    "Check",
    "check_jetson",
    "check_packages",
    "check_plugin_library",
    "check_python",
    "check_tensorrt",
    "gpu_info",
    "library_archs",
    "library_tensorrt",
    "run_checks",
]

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
DIST = "edge-biformer"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # PASS | WARN | FAIL
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def check_edge_biformer() -> Check:
    """The package itself: its version and where it is imported from."""
    import edge_biformer

    where = Path(edge_biformer.__file__).resolve().parent
    return Check("edge-biformer", PASS, f"{edge_biformer.__version__} ({where})")


def check_python(version: tuple[int, int, int] | None = None) -> Check:
    """The Python version against ``requires-python``."""
    v = version or sys.version_info[:3]
    text = ".".join(map(str, v))
    spec = (metadata.metadata(DIST).get("Requires-Python") if _installed(DIST) else None) or ">=3.10"
    ok = _satisfies(text, spec)
    if ok is False:
        return Check("python", FAIL, f"{text} (supported: {spec})", "install Python 3.10 or newer")
    return Check("python", PASS, f"{text} (supported: {spec})")


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def _satisfies(version: str, spec: str) -> bool | None:
    """Whether ``version`` is in ``spec`` (``None``: the ``packaging`` module is absent)."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:  # pragma: no cover - packaging comes with onnxruntime
        return None
    return SpecifierSet(spec).contains(Version(version), prereleases=True)


def check_packages(requirements: Iterable[str] | None = None) -> list[Check]:
    """Every dependency of the installed package against its declared range (extras left out)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover
        return [Check("packages", WARN, "cannot compare versions: the packaging module is missing")]
    if requirements is None:
        requirements = metadata.requires(DIST) or [] if _installed(DIST) else []
    checks = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra
        spec = str(req.specifier) or "any"
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            checks.append(
                Check(
                    req.name,
                    FAIL,
                    f"not installed (needs {spec})",
                    f"pip install '{req.name}{req.specifier}'",
                )
            )
            continue
        version_base = version.split("+")[0]
        if req.specifier and not req.specifier.contains(version_base, prereleases=True):
            fix = f"pip install '{req.name}{req.specifier}'"
            if req.name == "torch":
                fix = (
                    "pip install 'torch>=2.4,<2.14' (the CPU or CUDA build your machine needs; see README.md)"
                )
            checks.append(Check(req.name, FAIL, f"{version} is outside the supported range {spec}", fix))
        else:
            checks.append(Check(req.name, PASS, f"{version} ({spec})"))
    return checks


def check_tensorrt(version: tuple[int, int, int] | None = None, present: bool | None = None) -> Check:
    """TensorRT's presence and version (needed only where engines are built or run)."""
    from edge_biformer.engine.tensorrt import missing_reason, tensorrt_version

    reason = "TensorRT is not installed"
    if present is None:
        version = tensorrt_version()
        present = version is not None
        reason = missing_reason() or reason
    if not present or version is None:
        return Check(
            "tensorrt",
            WARN,
            f"not installed: {reason.split(';')[0]} (needed only to build and run engines, on the target "
            "GPU)",
            "pip install 'tensorrt>=10,<12' 'cuda-python>=12,<14' (x86-64), or JetPack's TensorRT on a "
            "Jetson",
        )
    text = ".".join(map(str, version))
    if version < (8, 5, 0) or version[0] == 9:
        return Check(
            "tensorrt", FAIL, f"{text}: not supported (8.5, 8.6, 10 and 11 are)", "install TensorRT 10 or 11"
        )
    interface = "IPluginV3" if version[0] >= 10 else "IPluginV2DynamicExt"
    return Check("tensorrt", PASS, f"{text} (plugin interface {interface})")


def _cuda_versions() -> tuple[int | None, int | None, str]:
    """(driver version, runtime version, how they were read), CUDA's integer form (12060 = 12.6)."""
    driver = runtime = None
    how = ""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        value = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(value)) == 0:
            driver, how = value.value, "libcuda.so.1"
    except OSError:
        pass
    try:
        from edge_biformer.runtime.engine import import_cudart

        cudart = import_cudart()
        err, value = cudart.cudaRuntimeGetVersion()
        if int(err) == 0:
            runtime = int(value)
            how = (how + ", " if how else "") + "cuda-python"
    except Exception:
        pass
    return driver, runtime, how


def _cuda_text(v: int | None) -> str:
    return "absent" if v is None else f"{v // 1000}.{(v % 1000) // 10}"


def _driver_gpus(lib: Any = None) -> list[tuple[str, tuple[int, int]]]:
    """``[(name, (major, minor))]`` from the CUDA driver API (``libcuda.so.1``; ``[]`` without a driver)."""
    try:
        lib = lib or ctypes.CDLL("libcuda.so.1")
        if lib.cuInit(0) != 0:
            return []
        count = ctypes.c_int()
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return []
        found = []
        for i in range(count.value):
            device, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
            name = ctypes.create_string_buffer(256)
            if lib.cuDeviceGet(ctypes.byref(device), i) != 0:
                continue
            lib.cuDeviceGetName(name, 256, device)
            lib.cuDeviceGetAttribute(ctypes.byref(major), 75, device)  # COMPUTE_CAPABILITY_MAJOR
            lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, device)  # COMPUTE_CAPABILITY_MINOR
            found.append((name.value.decode(errors="replace"), (major.value, minor.value)))
        return found
    except (OSError, AttributeError):
        return []


def gpu_info() -> list[tuple[str, tuple[int, int]]]:
    """``[(name, (major, minor))]`` of the CUDA GPUs: torch's view where it has CUDA, else the driver's
    (a CPU build of torch beside TensorRT is common); ``[]`` without a driver."""
    try:
        import torch

        if torch.cuda.is_available():
            return [
                (torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
                for i in range(torch.cuda.device_count())
            ]
    except Exception:
        pass
    return _driver_gpus()


def check_cuda(
    versions: Callable[[], tuple[int | None, int | None, str]] = _cuda_versions,
    gpus: Callable[[], list[tuple[str, tuple[int, int]]]] = gpu_info,
) -> list[Check]:
    """The CUDA driver and runtime, and the GPUs with their compute capability."""
    driver, runtime, how = versions()
    checks = []
    if driver is None:
        checks.append(
            Check(
                "cuda driver",
                WARN,
                "no NVIDIA driver (libcuda.so.1) here: engines cannot run on this machine",
                "install the NVIDIA driver on the target GPU machine (JetPack on a Jetson)",
            )
        )
    else:
        detail = f"driver supports CUDA {_cuda_text(driver)}, runtime {_cuda_text(runtime)} ({how})"
        if runtime is not None and runtime > driver:
            checks.append(
                Check(
                    "cuda driver",
                    FAIL,
                    detail + ": the driver is older than the runtime",
                    "upgrade the NVIDIA driver",
                )
            )
        else:
            checks.append(Check("cuda driver", PASS, detail))
    found = gpus()
    if not found:
        checks.append(
            Check("gpu", WARN, "no CUDA GPU visible (driver API, torch)", "run on the target GPU machine")
        )
    for i, (name, (major, minor)) in enumerate(found):
        status = PASS if (major, minor) >= (7, 5) else FAIL
        fix = "" if status == PASS else "the kernels need sm_75 (Turing) or newer"
        checks.append(
            Check(f"gpu {i}", status, f"{name}, compute capability {major}.{minor} (sm_{major}{minor})", fix)
        )
    return checks


def check_plugin_library(
    path: Path | None = None,
    tensorrt: tuple[int, int, int] | None = None,
    capabilities: Iterable[tuple[int, int]] = (),
) -> list[Check]:
    """The plugin library: found, its TensorRT major against the installed one, kernels for each GPU."""
    from edge_biformer import plugins
    from edge_biformer.errors import EdgeBiformerError

    if path is None:
        try:
            path = plugins.library_path()
        except EdgeBiformerError as err:
            return [Check("plugin library", WARN, f"not found ({str(err).split('(looked in')[0].strip()})",
                          plugins.build_command() + "  # or set " + plugins.ENV_VAR)]  # fmt: skip
    data = Path(path).read_bytes()
    built = library_tensorrt(data)
    checks = [Check("plugin library", PASS, f"{path}")]
    if built is None:
        checks.append(Check("plugin tensorrt", WARN, "cannot read which TensorRT it was built against", ""))
    elif tensorrt is not None and built[0] != tensorrt[0]:
        checks.append(
            Check(
                "plugin tensorrt",
                FAIL,
                f"built against TensorRT {'.'.join(map(str, built))}, installed "
                f"{'.'.join(map(str, tensorrt))}",
                f"{plugins.build_command()}  # rebuild for the installed TensorRT",
            )
        )
    else:
        checks.append(Check("plugin tensorrt", PASS, f"built against TensorRT {'.'.join(map(str, built))}"))
    cubins, ptx = library_archs(data)
    listed = f"cubins sm {sorted(cubins) or '-'}, PTX sm {sorted(ptx) or '-'}"
    for major, minor in capabilities:
        cc = major * 10 + minor
        if cc in cubins:
            checks.append(Check("plugin kernels", PASS, f"sm_{cc}: cubin ({listed})"))
        elif any(p <= cc for p in ptx):
            checks.append(
                Check(
                    "plugin kernels",
                    WARN,
                    f"sm_{cc}: PTX only, JIT-compiled at first use ({listed})",
                    f"scripts/build_plugins.sh --cuda-architectures {cc} --tensorrt-root ...",
                )
            )
        else:
            checks.append(
                Check(
                    "plugin kernels",
                    FAIL,
                    f"no kernels for sm_{cc} ({listed})",
                    f"scripts/build_plugins.sh --cuda-architectures {cc} --tensorrt-root ...",
                )
            )
    if not list(capabilities):
        checks.append(Check("plugin kernels", PASS if cubins or ptx else WARN, listed))
    return checks


def check_jetson(release_file: Path | None = None, dpkg_status: Path | None = None) -> Check:
    """A Jetson's Jetson Linux (L4T) and JetPack release: the TensorRT and plugin interface it implies."""
    from edge_biformer.engine import target

    l4t = target.read_l4t(release_file or target.RELEASE_FILE, dpkg_status or target.DPKG_STATUS)
    if l4t is None:
        return Check("jetson", PASS, f"not a Jetson ({platform.machine()})")
    release = target.jetpack_release(l4t)
    if release is None:
        return Check(
            "jetson",
            WARN,
            f"Jetson Linux {l4t} is not in the JetPack table of docs/jetson.md",
            "pass --target-trt with its TensorRT version (dpkg -l | grep nvinfer)",
        )
    interface = "IPluginV3" if int(release.tensorrt.split(".")[0]) >= 10 else "IPluginV2DynamicExt"
    return Check(
        "jetson",
        PASS,
        f"JetPack {release.jetpack} (L4T {l4t}): TensorRT {release.tensorrt}, CUDA {release.cuda}, "
        f"{release.gpu}; "
        f"plugin interface {interface}",
    )


def check_serving() -> Check:
    """The Triton client (the [serve] extra)."""
    try:
        import tritonclient

        version = getattr(tritonclient, "__version__", None) or metadata.version("tritonclient")
    except Exception:
        return Check(
            "tritonclient",
            WARN,
            "not installed (needed by serve-repo validation and the Triton client)",
            "pip install 'edge-biformer[serve]'",
        )
    return Check("tritonclient", PASS, str(version))


def run_checks() -> list[Check]:
    """Every check, in report order."""
    from edge_biformer.engine.tensorrt import tensorrt_version

    checks = [check_edge_biformer(), check_python(), *check_packages()]
    trt = tensorrt_version()
    checks.append(check_tensorrt())
    checks += check_cuda()
    capabilities = [cc for _, cc in gpu_info()]
    checks += check_plugin_library(None, trt, capabilities)
    checks.append(check_jetson())
    checks.append(check_serving())
    return checks


def as_json(checks: list[Check]) -> dict[str, Any]:
    """The report as data."""
    return {"passed": all(c.status != FAIL for c in checks), "checks": [c.to_dict() for c in checks]}
