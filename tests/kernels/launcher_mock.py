"""Test helpers of the C kernel launcher: the mock CUDA driver and the C toolchain.

The launcher (``plugins/bra/kernels/bra_launch.c`` with the generated tables) is linked against the
mock driver ``plugins/tests/mock_cuda_driver.c`` (the one every GPU-less test of the plugin links),
which records module loads and kernel launches; :class:`MockLaunch` is its ``mock_cuda_launch_t``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_biformer.kernels.capi import Launcher, Params, build_launcher, find_cuda_include, include_dirs
from edge_biformer.kernels.launch import Geometry

REPO = Path(__file__).resolve().parents[2]
#: The mock driver and its header of knobs.
MOCK_DRIVER = REPO / "plugins" / "tests" / "mock_cuda_driver.c"
CUDA_INCLUDE = find_cuda_include()
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")

needs_c_toolchain = pytest.mark.skipif(
    CUDA_INCLUDE is None or CC is None, reason="needs a C compiler and cuda.h (a CUDA toolkit)"
)


def param_layout(n_hidden: int = 2) -> bytes:
    """The kernel's parameters for the mock's recorder ('p' pointer, 'i' 32-bit int, 'f' float), from
    ``bra_triton.RUNTIME_PARAMS`` and Triton's ``n_hidden`` hidden pointers."""
    from edge_biformer.kernels.bra_triton import RUNTIME_PARAMS

    codes = {"ptr": b"p", "*i32": b"p", "i32": b"i", "fp32": b"f"}
    return b"".join(codes[ty] for _, ty in RUNTIME_PARAMS) + b"p" * n_hidden


#: Triton 3.9's kernels take 2 hidden pointers (global and profile scratch).
PARAM_LAYOUT = param_layout(2)
CUDA_ERROR_INVALID_CONTEXT = 201
CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222
CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701


class MockLaunch(ctypes.Structure):
    """``mock_cuda_launch_t`` of ``plugins/tests/mock_cuda_driver.h``."""

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


def build_mock_launcher(gen_dir: Path, out: Path) -> Launcher:
    """The launcher with the tables in ``gen_dir``, linked against the mock driver instead of libcuda."""
    return Launcher(build_launcher(gen_dir, out, link_cuda=False, cc=CC, extra_sources=[MOCK_DRIVER]))


def load_on(
    launcher: Launcher, major: int, minor: int, optin: int = 101376, **fail: bool
) -> tuple[int, object]:
    """Reset the mock to a device of compute capability ``major.minor`` and load the module there."""
    lib = launcher.lib
    lib.mock_cuda_reset()
    lib.mock_cuda_set_param_layout(PARAM_LAYOUT)
    lib.mock_cuda_set_device(major, minor, optin)
    lib.mock_cuda_set_load_failures(int(fail.get("cubin", False)), int(fail.get("ptx", False)))
    return launcher.load()


def launch_params(launcher: Launcher, g: Geometry, dtype: str, scale: float) -> Params:
    """The ``eb_bra_params_t`` of one call."""
    return launcher.params(
        batch=g.batch,
        hq=g.hq,
        wq=g.wq,
        hk=g.hk,
        wk=g.wk,
        c_qk=g.c_qk,
        c_v=g.c_v,
        n_win=g.n_win,
        num_heads=g.num_heads,
        topk=g.topk,
        scale=scale,
        dtype=dtype,
    )


def last_launch(launcher: Launcher) -> MockLaunch:
    """The launch the mock recorded last."""
    rec = MockLaunch()
    assert launcher.lib.mock_cuda_last_launch(ctypes.byref(rec)) == 0
    return rec


def cflags(gen: Path) -> list[str]:
    """Include flags of the launcher sources with the tables in ``gen``."""
    return [*(f"-I{d}" for d in include_dirs(gen)), f"-I{CUDA_INCLUDE}"]


def strict_c(*args: str) -> list[str]:
    """A C11 compile command with every warning an error."""
    return [str(CC), "-std=c11", "-Wall", "-Wextra", "-Werror", *args]


def strict_cxx(*args: str) -> list[str]:
    """The same sources compiled as C++11."""
    return [str(CXX), "-x", "c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", *args]


def compile_ok(cmd: list[str]) -> None:
    """Run a compiler command and fail the test with its diagnostics if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"
