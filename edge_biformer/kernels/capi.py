"""Build and call the generated C launcher from Python (ctypes), for tests and the GPU check.

:func:`build_launcher` compiles the sources written by :mod:`edge_biformer.kernels.aot` into a
shared library, linked either against the real CUDA driver (``libcuda``) or against the mock driver
``plugins/bra/aot/mock_cuda.c`` (no GPU needed). :class:`Launcher` wraps the functions of
``plugins/bra/bra_launch.h`` (and the extras of the generated ``bra_images.h``).

These helpers need the repository checkout (``plugins/bra``) and a C compiler; the plugin itself
links the generated sources directly (``plugins/bra/kernels.cmake``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from edge_biformer.errors import EdgeBiformerError

#: Status codes of ``eb_bra_status_t``.
SUCCESS, ERR_INVALID_ARGUMENT, ERR_NO_KERNEL_FOR_ARCH, ERR_UNSUPPORTED, ERR_CUDA = range(5)
#: ``eb_bra_dtype_t``.
DTYPE_CODES = {"fp32": 0, "fp16": 1}


class Params(ctypes.Structure):
    """``eb_bra_params_t``."""

    _fields_ = [
        ("batch", ctypes.c_int32),
        ("hq", ctypes.c_int32),
        ("wq", ctypes.c_int32),
        ("hk", ctypes.c_int32),
        ("wk", ctypes.c_int32),
        ("c_qk", ctypes.c_int32),
        ("c_v", ctypes.c_int32),
        ("n_win", ctypes.c_int32),
        ("num_heads", ctypes.c_int32),
        ("topk", ctypes.c_int32),
        ("scale", ctypes.c_float),
        ("dtype", ctypes.c_int),
    ]


class MockLaunch(ctypes.Structure):
    """``mock_cuda_launch_t`` of ``plugins/bra/aot/mock_cuda.c``."""

    _fields_ = [
        ("image", ctypes.c_void_p),
        ("function_name", ctypes.c_char_p),
        ("grid", ctypes.c_uint * 3),
        ("block", ctypes.c_uint * 3),
        ("shared", ctypes.c_uint),
        ("stream", ctypes.c_uint64),
        ("n_params", ctypes.c_int),
        ("params", ctypes.c_uint64 * 64),
    ]


def repo_root() -> Path:
    """The checkout this package lives in (``plugins/bra`` must exist there)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "plugins" / "bra" / "bra_launch.h").is_file():
        raise EdgeBiformerError(
            f"{root / 'plugins/bra/bra_launch.h'} not found: building the C launcher needs the "
            f"repository checkout, not an installed package"
        )
    return root


def find_cuda_include() -> Path | None:
    """A directory holding ``cuda.h``: ``$CUDA_HOME``/``$CUDA_PATH``, ``nvcc``'s toolkit, /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if c and (Path(c) / "include" / "cuda.h").is_file():
            return Path(c) / "include"
    return None


def build_launcher(
    gen_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mock: bool,
    cc: str | None = None,
    extra_sources: list[str | os.PathLike[str]] | None = None,
    cuda_include: str | os.PathLike[str] | None = None,
) -> Path:
    """Compile the generated sources in ``gen_dir`` into the shared library ``out``.

    With ``mock=True`` the mock driver is compiled in; otherwise the library links ``-lcuda``.
    """
    gen_dir = Path(gen_dir)
    root = repo_root()
    inc = Path(cuda_include) if cuda_include else find_cuda_include()
    if inc is None:
        raise EdgeBiformerError("cuda.h not found: set CUDA_HOME to a CUDA toolkit")
    import json

    manifest = json.loads((gen_dir / "manifest.json").read_text())
    sources = [gen_dir / s for s in manifest["sources"]]
    if mock:
        sources.append(root / "plugins" / "bra" / "aot" / "mock_cuda.c")
    sources += [Path(s) for s in extra_sources or []]
    cmd = [
        cc or os.environ.get("CC", "cc"),
        "-std=c11",
        "-O1",
        "-fPIC",
        "-shared",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-I{root / 'plugins' / 'bra'}",
        f"-I{gen_dir}",
        f"-I{inc}",
        *map(str, sources),
        "-o",
        str(out),
    ]
    if not mock:
        # Link against the driver, or the toolkit's stubs where no unversioned libcuda.so is installed;
        # at run time the soname libcuda.so.1 resolves to the driver.
        for d in (
            "lib64/stubs",
            "lib/stubs",
            "targets/x86_64-linux/lib/stubs",
            "targets/sbsa-linux/lib/stubs",
        ):
            if (inc.parent / d / "libcuda.so").is_file():
                cmd.append(f"-L{inc.parent / d}")
        cmd.append("-lcuda")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EdgeBiformerError(f"compiling the launcher failed:\n{' '.join(cmd)}\n{proc.stderr}")
    return Path(out)


class Launcher:
    """ctypes view of a built launcher library."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.lib = ctypes.CDLL(os.fspath(path))
        lib = self.lib
        lib.eb_bra_check.argtypes = [ctypes.POINTER(Params), ctypes.c_int]
        lib.eb_bra_check.restype = ctypes.c_int
        lib.eb_bra_module_load.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.eb_bra_module_load.restype = ctypes.c_int
        lib.eb_bra_module_unload.argtypes = [ctypes.c_void_p]
        lib.eb_bra_module_unload.restype = None
        lib.eb_bra_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(Params)] + [
            ctypes.c_uint64
        ] * 5
        lib.eb_bra_launch.restype = ctypes.c_int
        lib.eb_bra_status_string.argtypes = [ctypes.c_int]
        lib.eb_bra_status_string.restype = ctypes.c_char_p
        lib.eb_bra_last_cuda_error.argtypes = []
        lib.eb_bra_last_cuda_error.restype = ctypes.c_int
        lib.eb_bra_module_arch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
        lib.eb_bra_module_arch.restype = ctypes.c_int
        lib.eb_bra_select_variant.argtypes = [ctypes.POINTER(Params), ctypes.c_int]
        lib.eb_bra_select_variant.restype = ctypes.c_int
        lib.eb_bra_variant_name.argtypes = [ctypes.c_int]
        lib.eb_bra_variant_name.restype = ctypes.c_char_p

    @staticmethod
    def params(
        *,
        batch: int,
        hq: int,
        wq: int,
        hk: int,
        wk: int,
        c_qk: int,
        c_v: int,
        n_win: int,
        num_heads: int,
        topk: int,
        scale: float,
        dtype: str,
    ) -> Params:
        """An ``eb_bra_params_t``."""
        return Params(batch, hq, wq, hk, wk, c_qk, c_v, n_win, num_heads, topk, scale, DTYPE_CODES[dtype])

    def check(self, p: Params, sm: int) -> int:
        """``eb_bra_check``."""
        return int(self.lib.eb_bra_check(ctypes.byref(p), sm))

    def load(self) -> tuple[int, ctypes.c_void_p]:
        """``eb_bra_module_load``: (status, module handle)."""
        handle = ctypes.c_void_p()
        status = int(self.lib.eb_bra_module_load(ctypes.byref(handle)))
        return status, handle

    def unload(self, module: ctypes.c_void_p) -> None:
        """``eb_bra_module_unload``."""
        self.lib.eb_bra_module_unload(module)

    def launch(self, module: ctypes.c_void_p, stream: int, p: Params, ptrs: tuple[int, ...]) -> int:
        """``eb_bra_launch`` with device pointers ``(q, k, v, r_idx, o)``."""
        return int(self.lib.eb_bra_launch(module, ctypes.c_void_p(stream), ctypes.byref(p), *ptrs))

    def module_arch(self, module: ctypes.c_void_p) -> tuple[int, bool]:
        """(arch, is_ptx) of the loaded image set."""
        is_ptx = ctypes.c_int(0)
        arch = int(self.lib.eb_bra_module_arch(module, ctypes.byref(is_ptx)))
        return arch, bool(is_ptx.value)

    def select_variant(self, p: Params, aligned: bool) -> str | None:
        """Name of the variant ``eb_bra_launch`` would use, or ``None``."""
        idx = int(self.lib.eb_bra_select_variant(ctypes.byref(p), int(aligned)))
        if idx < 0:
            return None
        return self.lib.eb_bra_variant_name(idx).decode()

    def status_string(self, status: int) -> str:
        """``eb_bra_status_string``."""
        return self.lib.eb_bra_status_string(status).decode()

    def last_cuda_error(self) -> int:
        """``eb_bra_last_cuda_error``."""
        return int(self.lib.eb_bra_last_cuda_error())
