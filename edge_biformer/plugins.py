"""Find, build and load ``libedge_biformer_plugins.so``, the TensorRT plugin library of the
``BiLevelRoutingAttention`` op (see ``plugins/bra/README.md``).

Typical use, before parsing an ONNX graph that holds the op or deserializing an engine built with it::

    import tensorrt as trt
    from edge_biformer import plugins

    plugins.load()                                   # registers the creator in TensorRT's registry
    plugins.load(builder.get_plugin_registry())      # or through IPluginRegistry::loadLibrary

The library is looked up in this order: the ``EDGE_BIFORMER_PLUGIN_LIB`` environment variable (a path
to the ``.so``), the repository's build directory ``build/plugins/`` (what ``scripts/build_plugins.sh``
writes), then ``edge_biformer/lib/`` inside the installed package. Nothing here imports TensorRT until
:func:`load` needs it.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
import subprocess
from pathlib import Path
from typing import Any

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.ops.bra import CONTRACT

#: File name of the plugin library.
LIBRARY_NAME = "libedge_biformer_plugins.so"
#: Environment variable that points at a built library (takes precedence over every other place).
ENV_VAR = "EDGE_BIFORMER_PLUGIN_LIB"
#: Identity of the op in TensorRT's plugin registry, from its contract.
PLUGIN_NAME = CONTRACT.name
PLUGIN_VERSION = CONTRACT.version
PLUGIN_NAMESPACE = CONTRACT.namespace

_REPO_ROOT = Path(__file__).resolve().parent.parent
_BUILD_SCRIPT = _REPO_ROOT / "scripts" / "build_plugins.sh"


def default_build_dir() -> Path:
    """The directory ``scripts/build_plugins.sh`` builds into by default (``<repo>/build/plugins``)."""
    return _REPO_ROOT / "build" / "plugins"


def candidate_paths() -> list[Path]:
    """Where :func:`library_path` looks when ``EDGE_BIFORMER_PLUGIN_LIB`` is not set, in order."""
    return [default_build_dir() / LIBRARY_NAME, Path(__file__).resolve().parent / "lib" / LIBRARY_NAME]


def build_command() -> str:
    """The shell command that builds the library from this checkout."""
    return f"{_BUILD_SCRIPT} --tensorrt-root /path/to/TensorRT"


def library_path(build: bool = False) -> Path:
    """Path of ``libedge_biformer_plugins.so``; with ``build=True``, build it first if it is missing.

    Raises :class:`~edge_biformer.errors.EdgeBiformerError` if ``EDGE_BIFORMER_PLUGIN_LIB`` names a
    missing file, or if no library is found (and ``build`` is false), with the command that builds it.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            return path.resolve()
        raise EdgeBiformerError(
            f"{ENV_VAR} is set to '{env}', but there is no file there. Point it at a built {LIBRARY_NAME} "
            f"(scripts/build_plugins.sh writes {default_build_dir() / LIBRARY_NAME}), or unset it to use the "
            "repository's build."
        )
    for path in candidate_paths():
        if path.is_file():
            return path
    if build:
        return build_library()
    looked = ", ".join(str(p) for p in candidate_paths())
    raise EdgeBiformerError(
        f"The TensorRT plugin library {LIBRARY_NAME} was not found (looked in {looked}). Build it with "
        f"'{build_command()}' (it needs the TensorRT headers: pass --tensorrt-root, or set TENSORRT_ROOT or "
        "TENSORRT_INCLUDE_DIR; see plugins/bra/README.md), call "
        f"edge_biformer.plugins.library_path(build=True), or set {ENV_VAR} to the path of a library built "
        "elsewhere."
    )


def build_library(
    build_dir: str | os.PathLike[str] | None = None,
    cuda_architectures: str | None = None,
    tensorrt_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Build the library with ``scripts/build_plugins.sh`` and return its path.

    ``cuda_architectures`` is a list like ``"87"`` or ``"80;86;89;90"`` (default: the script's choice);
    ``tensorrt_root`` defaults to the ``TENSORRT_ROOT``/``TENSORRT_INCLUDE_DIR`` environment variables.
    """
    if not _BUILD_SCRIPT.is_file():
        raise EdgeBiformerError(
            f"Cannot build {LIBRARY_NAME}: {_BUILD_SCRIPT} is not there (an installed package without the "
            f"repository's sources). Build it from a checkout of edge-biformer and set {ENV_VAR} to its path."
        )
    out_dir = Path(build_dir) if build_dir is not None else default_build_dir()
    cmd = ["bash", str(_BUILD_SCRIPT), "--build-dir", str(out_dir)]
    if cuda_architectures:
        cmd += ["--cuda-architectures", cuda_architectures]
    if tensorrt_root:
        cmd += ["--tensorrt-root", str(tensorrt_root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    library = out_dir / LIBRARY_NAME
    if proc.returncode != 0 or not library.is_file():
        lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
        tail = " | ".join(lines[-12:]) if lines else "no output"
        raise EdgeBiformerError(
            f"Building {LIBRARY_NAME} failed ('{' '.join(cmd)}' exited with status {proc.returncode}). "
            f"Last lines of its output: {tail}"
        )
    return library


def library_status(path: str | os.PathLike[str] | None = None) -> str:
    """What the library says about itself: its TensorRT version and how it registered its creator.

    Loads the library (without any side effect beyond its load-time registration) and returns the
    text of its exported ``edge_biformer_plugin_status()``.
    """
    lib_path = Path(path) if path is not None else library_path()
    lib = _cdll(lib_path)
    fn = lib.edge_biformer_plugin_status
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    value = fn()
    return value.decode("utf-8", "replace") if value else ""


def load(registry: Any = None) -> Any:
    """Make ``BiLevelRoutingAttention`` (version 1, namespace ``edge_biformer``) known to TensorRT.

    Without ``registry``: ``import tensorrt`` (so that the library finds the TensorRT runtime), then
    load the library with ``ctypes.CDLL(path, RTLD_GLOBAL)``; it registers its creator into the
    process-wide registry while it loads (what ``polygraphy --plugins`` does). Returns the
    :class:`ctypes.CDLL`.

    With a TensorRT ``IPluginRegistry`` (``trt.get_plugin_registry()``, ``builder.get_plugin_registry()``,
    ``runtime.get_plugin_registry()``): ``registry.load_library(path)``, i.e. ``IPluginRegistry::loadLibrary``
    (what ``trtexec --dynamicPlugins`` does). Returns the library handle TensorRT gives back, which
    ``registry.deregister_library`` accepts.

    Either way the creator is then looked up in the registry; if it is missing, an
    :class:`~edge_biformer.errors.EdgeBiformerError` explains why (the library reports, for example,
    that it was built against another TensorRT major version).
    """
    path = library_path()
    if registry is None:
        trt = _import_tensorrt()
        handle: Any = _cdll(path)
        check_registry = trt.get_plugin_registry()
    elif not hasattr(registry, "load_library"):
        raise EdgeBiformerError(
            "this TensorRT (8.5) has no IPluginRegistry.load_library; call edge_biformer.plugins.load() "
            "without a registry: the library registers its creator while it is loaded"
        )
    else:
        handle = registry.load_library(str(path))
        check_registry = registry
    if find_creator(check_registry) is None:
        try:
            status = library_status(path)
        except EdgeBiformerError as err:
            status = str(err)
        how_text = (
            "ctypes.CDLL (load-time registration)"
            if registry is None
            else f"IPluginRegistry.load_library (returned {'no handle' if handle is None else 'a handle'})"
        )
        raise EdgeBiformerError(
            f"{path} was loaded with {how_text}, but TensorRT's plugin registry has no {PLUGIN_NAMESPACE}::"
            f"{PLUGIN_NAME} version {PLUGIN_VERSION} creator. The library reports: {status}. If it was built "
            "against another TensorRT major version than the one installed, rebuild it with "
            f"'{build_command()}'."
        )
    return handle


def find_creator(registry: Any) -> Any:
    """The ``BiLevelRoutingAttention`` creator in a TensorRT plugin registry, or ``None``.

    TensorRT >= 10 registries hold the ``IPluginCreatorV3One`` (``get_creator``), TensorRT 8 ones the
    ``IPluginCreator`` of the library built for them (``get_plugin_creator``).
    """
    for lookup in ("get_creator", "get_plugin_creator"):
        get_creator = getattr(registry, lookup, None)
        if get_creator is not None:
            return get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    for creator in (
        getattr(registry, "all_creators", None) or getattr(registry, "plugin_creator_list", None) or []
    ):
        if (
            getattr(creator, "name", None) == PLUGIN_NAME
            and getattr(creator, "plugin_version", None) == PLUGIN_VERSION
            and getattr(creator, "plugin_namespace", None) == PLUGIN_NAMESPACE
        ):
            return creator
    return None


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as err:
        raise EdgeBiformerError(
            "edge_biformer.plugins.load() registers the plugin into TensorRT's plugin registry and needs the "
            f"TensorRT Python package, which cannot be imported here ({err}). Install it (pip install "
            "'tensorrt>=10,<12', or JetPack's python3-libnvinfer), or pass the library path from "
            "edge_biformer.plugins.library_path() to trtexec --staticPlugins / --dynamicPlugins yourself."
        ) from err
    return tensorrt


def _cdll(path: Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        raise EdgeBiformerError(
            f"Cannot load the plugin library {path}: {err}. It needs the NVIDIA driver's libcuda.so.1 and "
            "must have been built for this machine's CPU architecture; rebuild it here with "
            f"'{build_command()}'."
        ) from err


_EM_CUDA = 190


def library_archs(data: bytes) -> tuple[set[int], set[int]]:
    """``(cubin archs, PTX archs)`` of the kernel images embedded in a plugin library's bytes.

    Cubins are the embedded ELF images with ``e_machine == EM_CUDA``; their SM is in ``e_flags``
    (bits 8-15 from ELF ABI version 8, CUDA 12.8+; bits 0-7 before). PTX is found by its ``.target
    sm_XX`` lines.
    """
    cubins: set[int] = set()
    start = 0
    while (pos := data.find(b"\x7fELF", start)) != -1:
        start = pos + 4
        if pos == 0 or len(data) < pos + 52 or data[pos + 4] != 2:
            continue  # the library's own header, or not a 64-bit ELF
        if struct.unpack_from("<H", data, pos + 18)[0] != _EM_CUDA:
            continue
        flags = struct.unpack_from("<I", data, pos + 48)[0]
        sm = (flags >> 8) & 0xFF if data[pos + 8] >= 8 else flags & 0xFF
        if 30 <= sm <= 200:
            cubins.add(sm)
    ptx = {int(m) for m in re.findall(rb"\.target\s+sm_(\d+)", data)}
    return cubins, ptx


def library_tensorrt(data: bytes) -> tuple[int, int, int] | None:
    """The TensorRT version a plugin library was built against (its ``built against TensorRT X.Y.Z`` text)."""
    match = re.search(rb"TensorRT (\d+)\.(\d+)\.(\d+)", data)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3))) if match else None
