"""The C launcher of the AOT kernels against the mock CUDA driver, with fake images (fast: no Triton).

``plugins/bra/kernels/bra_launch.c`` is compiled with tables that :mod:`edge_biformer.kernels.cgen`
writes for fake images of every variant, must compile with ``-Wall -Wextra -Werror`` as C11 and
C++, and is linked against the mock driver (``plugins/tests/mock_cuda_driver.c``), which records
module loads and kernel launches: image selection, variant selection and every kernel argument are
checked against the Python launch plan that the interpreted kernel is verified with.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from edge_biformer.kernels import aot, cgen
from edge_biformer.kernels.capi import (
    ERR_CUDA,
    ERR_INVALID_ARGUMENT,
    ERR_NO_KERNEL_FOR_ARCH,
    ERR_UNSUPPORTED,
    SUCCESS,
    Launcher,
)
from edge_biformer.kernels.config import all_variants, policy
from edge_biformer.kernels.image import Image
from edge_biformer.kernels.launch import ContractError, Geometry, UnsupportedError, plan_launch
from tests.kernels.launcher_mock import (
    CC,
    CUDA_ERROR_INVALID_CONTEXT,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES,
    CUDA_ERROR_UNSUPPORTED_PTX_VERSION,
    CUDA_INCLUDE,
    CXX,
    MOCK_DRIVER,
    PARAM_LAYOUT,
    REPO,
    MockLaunch,
    build_mock_launcher,
    cflags,
    compile_ok,
    last_launch,
    launch_params,
    load_on,
    needs_c_toolchain,
    strict_c,
    strict_cxx,
)

# --------------------------------------------------------------------------------------------------
# The generated launcher with fake images for all variants (fast: nothing is compiled by Triton).
# --------------------------------------------------------------------------------------------------

FAKE_ARCHS = (75, 80, 87, 90, 100)
FAKE_PTX = (87,)
BIG_SHARED = 60000  # one variant of the sm_80 set needs > 48 KB of shared memory: the one serving
BIG_GEOMETRY = Geometry(1, 8, 8, 8, 8, 16, 16, 1, 1, 1)  # with unaligned pointers
BIG_VARIANT = plan_launch(BIG_GEOMETRY, "fp16", 1.0, pointers=(2, 0, 0, 0)).variant.name


def _fake_images() -> list[Image]:
    images = []
    for arch in FAKE_ARCHS:
        for i, v in enumerate(all_variants()):
            shared = BIG_SHARED if (arch == 80 and v.name == BIG_VARIANT) else 1000 * (i + 1) + arch
            images.append(
                Image(
                    variant=v.name,
                    arch=arch,
                    target=f"sm_{arch}{'a' if arch >= 90 else ''}",
                    ptx_version="8.8",
                    shared=shared,
                    num_warps=v.num_warps,
                    n_hidden=2,
                    cubin=(b"\x7fELF" + f"|cubin|{arch}|{v.name}|".encode()).ljust(128, b"\0"),
                    ptx=f"|ptx|{arch}|{v.name}|".ljust(127),
                )
            )
    return images


def _write_generated(out: Path, images: list[Image], archs, ptx_archs) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sources = cgen.generate(
        variants=all_variants(),
        policy=policy(),
        images=images,
        archs=archs,
        ptx_archs=ptx_archs,
        n_hidden=2,
        header_comment="test",
    )
    for name, text in sources.items():
        (out / name).write_text(text)
    manifest = {
        "sources": aot.generated_sources(archs, ptx_archs),
        "static_sources": list(aot.STATIC_SOURCES),
    }
    (out / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Launcher]:
    if CUDA_INCLUDE is None or CC is None:
        pytest.skip("needs a C compiler and cuda.h (a CUDA toolkit)")
    gen = tmp_path_factory.mktemp("fake_gen")
    _write_generated(gen, _fake_images(), FAKE_ARCHS, FAKE_PTX)
    launcher = build_mock_launcher(gen, gen / "libfake.so")
    launcher.lib.mock_cuda_reset()
    assert launcher.lib.mock_cuda_set_param_layout(PARAM_LAYOUT) == 0
    return gen, launcher


def _image_of(launch: MockLaunch) -> tuple[str, int, str]:
    """(kind, arch, variant) of the recorded launch's image (the fake images spell it out)."""
    raw = ctypes.string_at(launch.image, 96)
    _, kind, arch, variant = raw.split(b"|")[:4]
    return kind.decode(), int(arch), variant.decode()


@needs_c_toolchain
def test_generated_and_static_sources_compile_strict_as_c11_and_cxx(fake) -> None:
    gen, _ = fake
    sources = [REPO / aot.STATIC_SOURCES[0], gen / "bra_kernels.c", gen / "bra_images_sm90.c"]
    sources += [gen / "bra_images_ptx87.c", MOCK_DRIVER]
    for src in sources:
        compile_ok(strict_c("-pedantic", *cflags(gen), "-c", str(src), "-o", os.devnull))
        if CXX:
            compile_ok(strict_cxx(*cflags(gen), "-c", str(src), "-o", os.devnull))


def test_tables_format_matches_the_static_launcher() -> None:
    """The generator writes the table layout the hand-written tables header declares."""
    header = (REPO / "plugins" / "bra" / "kernels" / "bra_kernel_tables.h").read_text()
    assert re.search(r"#define EB_BRA_TABLES_FORMAT (\d+)", header).group(1) == str(cgen.TABLES_FORMAT)


@needs_c_toolchain
def test_tables_of_another_format_do_not_compile(fake, tmp_path: Path) -> None:
    gen, _ = fake
    stale = tmp_path / "stale"
    stale.mkdir()
    text = (gen / cgen.HEADER).read_text()
    old = f"#define EB_BRA_GENERATED_TABLES_FORMAT {cgen.TABLES_FORMAT}"
    assert old in text
    (stale / cgen.HEADER).write_text(text.replace(old, "#define EB_BRA_GENERATED_TABLES_FORMAT 1"))
    cmd = strict_c(*cflags(stale), "-c", str(REPO / aot.STATIC_SOURCES[0]), "-o", os.devnull)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "regenerate it with python -m edge_biformer.kernels.aot" in proc.stderr


@pytest.mark.parametrize(
    ("cc", "expected"),
    [
        ((7, 5), (75, False)),
        ((8, 0), (80, False)),
        ((8, 6), (80, False)),  # sm_80 cubins run on 8.6; the sm_87 ones do not
        ((8, 7), (87, False)),
        ((8, 9), (87, False)),
        ((9, 0), (90, False)),
        ((10, 0), (100, False)),
        ((10, 3), (87, True)),  # sm_100a is arch-specific: JIT the portable sm_87 PTX
        ((12, 0), (87, True)),
    ],
)
def test_module_load_picks_the_best_image_set(fake, cc: tuple[int, int], expected: tuple[int, bool]) -> None:
    _, launcher = fake
    status, module = load_on(launcher, *cc)
    assert status == SUCCESS, launcher.status_string(status)
    try:
        assert launcher.module_arch(module) == expected
        assert launcher.lib.mock_cuda_live_modules() == len(all_variants())
    finally:
        launcher.unload(module)
    assert launcher.lib.mock_cuda_live_modules() == 0


def test_module_load_failures(fake) -> None:
    _, launcher = fake
    status, _ = load_on(launcher, 7, 0)
    assert status == ERR_NO_KERNEL_FOR_ARCH
    status, module = load_on(launcher, 9, 0, cubin=True)  # cubin rejected (e.g. driver too old): PTX
    assert status == SUCCESS and launcher.module_arch(module) == (87, True)
    launcher.unload(module)
    status, module = load_on(launcher, 9, 0, cubin=True, ptx=True)
    assert status == ERR_CUDA and not module.value
    assert launcher.last_cuda_error() == CUDA_ERROR_UNSUPPORTED_PTX_VERSION
    assert launcher.lib.mock_cuda_live_modules() == 0  # partial loads were released
    launcher.lib.mock_cuda_reset()
    launcher.lib.mock_cuda_set_no_context(1)
    status, _ = launcher.load()
    assert status == ERR_CUDA and launcher.last_cuda_error() == CUDA_ERROR_INVALID_CONTEXT
    assert launcher.status_string(ERR_CUDA).startswith("a CUDA driver call failed")
    assert launcher.status_string(99) == "unknown eb_bra status"


def _geometries() -> list[tuple[Geometry, str]]:
    out = []
    shapes = [  # (S, Hq, Wq, Hk, Wk)
        (7, 56, 56, 56, 56),
        (7, 28, 28, 28, 28),
        (7, 14, 14, 14, 14),
        (2, 6, 10, 8, 4),
        (1, 16, 16, 16, 16),
        (4, 4, 4, 8, 8),
        (8, 128, 64, 32, 32),
    ]
    channels = [
        (64, 64, 2),
        (256, 256, 8),
        (48, 80, 2),
        (128, 128, 1),
        (24, 24, 3),
        (96, 32, 1),
        (512, 512, 2),
    ]
    for (s, hq, wq, hk, wk), (c_qk, c_v, heads), dtype in itertools.product(
        shapes, channels, ("fp16", "fp32")
    ):
        for batch, topk in ((2, 1), (1, s * s)):
            out.append((Geometry(batch, hq, wq, hk, wk, c_qk, c_v, s, heads, topk), dtype))
    # contract violations and unsupported shapes
    out += [
        (Geometry(1, 14, 14, 14, 14, 64, 64, 7, 3, 1), "fp16"),
        (Geometry(1, 14, 15, 14, 14, 64, 64, 7, 2, 1), "fp16"),
        (Geometry(1, 14, 14, 14, 14, 64, 64, 7, 2, 50), "fp16"),
        (Geometry(1, 14, 14, 14, 14, 64, 64, 0, 2, 1), "fp32"),
        (Geometry(1, 14, 14, 14, 14, 0, 64, 7, 2, 1), "fp32"),
        (Geometry(0, 14, 14, 14, 14, 64, 64, 7, 2, 1), "fp16"),
        (Geometry(1, 14, 14, 14, 14, 512, 512, 7, 2, 1), "fp16"),
        (Geometry(1, 7 * 4096, 7 * 4096, 7, 7, 64, 64, 7, 2, 1), "fp16"),
        (Geometry(2**30, 14, 14, 14, 14, 64, 64, 7, 2, 1), "fp16"),
    ]
    return out


def _status_of_python_plan(g: Geometry, dtype: str) -> int:
    try:
        plan_launch(g, dtype, 1.0)
    except ContractError:
        return ERR_INVALID_ARGUMENT
    except UnsupportedError:
        return ERR_UNSUPPORTED
    return SUCCESS


def test_check_and_variant_selection_match_python(fake) -> None:
    _, launcher = fake
    for g, dtype in _geometries():
        p = launch_params(launcher, g, dtype, 0.125)
        expected = _status_of_python_plan(g, dtype)
        assert launcher.check(p, 0) == expected, (g, dtype)
        for aligned in (False, True):
            name = launcher.select_variant(p, aligned)
            if expected != SUCCESS:
                assert name is None
                continue
            ptr = 0 if aligned else 2
            plan = plan_launch(g, dtype, 0.125, pointers=(ptr, 0, 0, 0))
            assert name == plan.variant.name, (g, dtype, aligned)
    p = launch_params(launcher, Geometry(1, 14, 14, 14, 14, 64, 64, 7, 2, 1), "fp16", 0.1)
    assert launcher.check(p, 70) == ERR_NO_KERNEL_FOR_ARCH
    assert launcher.check(p, 86) == SUCCESS
    assert launcher.check(p, 121) == SUCCESS  # PTX


@pytest.mark.parametrize("pointers", [(256, 4352, 8448, 12544, 16640), (256, 4354, 8448, 12544, 16640)])
def test_launch_arguments_match_the_python_plan(fake, pointers: tuple[int, ...]) -> None:
    """Grid, block, shared memory and every kernel argument equal what the Python path launches."""
    _, launcher = fake
    status, module = load_on(launcher, 8, 7)
    assert status == SUCCESS
    lib = launcher.lib
    stream = 0x5000
    try:
        for g, dtype in _geometries():
            scale = g.c_qk**-0.5 if g.c_qk > 0 else 1.0
            p = launch_params(launcher, g, dtype, scale)
            before = lib.mock_cuda_launch_count()
            status = launcher.launch(module, stream, p, pointers)
            expected = _status_of_python_plan(g, dtype)
            assert status == expected, (g, dtype)
            if status != SUCCESS or g.batch == 0:
                assert lib.mock_cuda_launch_count() == before  # nothing launched
                continue
            q, k, v, _, o = pointers
            plan = plan_launch(g, dtype, scale, pointers=(q, k, v, o))
            rec = last_launch(launcher)
            kind, arch, variant = _image_of(rec)
            assert (kind, arch, variant) == ("cubin", 87, plan.variant.name)
            assert rec.function_name == b"bra_fwd_kernel"
            assert list(rec.grid) == [plan.grid, 1, 1]
            assert list(rec.block) == [32 * plan.variant.num_warps, 1, 1]
            index = [x.name for x in all_variants()].index(variant)
            assert rec.shared == 1000 * (index + 1) + 87
            assert rec.stream == stream
            args = list(rec.params[: rec.n_params])
            assert args == [*pointers, *_bits(plan.scalar_args()), 0, 0], (g, dtype)
    finally:
        launcher.unload(module)


def _bits(values: tuple[int | float, ...]) -> list[int]:
    """The raw 32-bit words of the kernel's scalar arguments (floats as their IEEE bits)."""
    return [
        struct.unpack("<I", struct.pack("<f", x))[0] if isinstance(x, float) else x & 0xFFFFFFFF
        for x in values
    ]


def test_launch_edge_cases(fake) -> None:
    _, launcher = fake
    lib = launcher.lib
    g = Geometry(1, 14, 14, 14, 14, 32, 32, 7, 2, 4)
    p = launch_params(launcher, g, "fp16", 0.1)
    status, module = load_on(launcher, 8, 7)
    assert status == SUCCESS
    try:
        assert launcher.launch(module, 0, p, (256, 0, 512, 768, 1024)) == ERR_INVALID_ARGUMENT  # null k
        lib.mock_cuda_set_launch_failure(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)
        assert launcher.launch(module, 0, p, (256, 512, 768, 1024, 1280)) == ERR_CUDA
        assert launcher.last_cuda_error() == CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES
        lib.mock_cuda_set_launch_failure(0)
        assert launcher.launch(None, 0, p, (256, 512, 768, 1024, 1280)) == ERR_INVALID_ARGUMENT
        assert lib.mock_cuda_launch_count() == 0
    finally:
        launcher.unload(module)
    launcher.unload(None)  # safe on NULL


def test_variants_above_48k_shared_memory(fake) -> None:
    """A variant needing > 48 KB gets the opt-in attribute, or stays unusable where the GPU lacks it."""
    _, launcher = fake
    lib = launcher.lib
    small_fp16_d16 = launch_params(launcher, BIG_GEOMETRY, "fp16", 1.0)
    assert launcher.select_variant(small_fp16_d16, False) == BIG_VARIANT
    status, module = load_on(launcher, 8, 0, optin=166912)
    assert status == SUCCESS and lib.mock_cuda_set_shared_count() == 1
    assert launcher.launch(module, 0, small_fp16_d16, (2, 512, 768, 1024, 1280)) == SUCCESS
    launcher.unload(module)
    status, module = load_on(launcher, 8, 6, optin=49152)  # sm_80 images, no room for 60000 B
    assert status == SUCCESS and launcher.module_arch(module) == (80, False)
    assert launcher.launch(module, 0, small_fp16_d16, (2, 512, 768, 1024, 1280)) == ERR_UNSUPPORTED
    other = launch_params(launcher, Geometry(1, 8, 8, 8, 8, 32, 32, 1, 1, 1), "fp16", 1.0)
    assert launcher.launch(module, 0, other, (2, 512, 768, 1024, 1280)) == SUCCESS
    launcher.unload(module)
