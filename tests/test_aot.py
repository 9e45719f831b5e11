"""Ahead-of-time compilation of the routed-attention kernel and the generated C launcher.

Without a GPU: the AOT step compiles cubins + PTX for sm_87 and sm_90 and writes C sources that must
compile with ``-Wall -Wextra -Werror`` as C11 and C++; the generated launcher is linked against the
mock CUDA driver (``plugins/bra/aot/mock_cuda.c``), which records module loads and kernel launches,
so image selection, variant selection and every kernel argument are checked against the Python
launch plan that the interpreted kernel is verified with.
"""

from __future__ import annotations

import ctypes
import filecmp
import hashlib
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from edge_biformer.kernels import _cgen
from edge_biformer.kernels.aot import Image, elf_function_symbols, generated_sources
from edge_biformer.kernels.capi import (
    ERR_CUDA,
    ERR_INVALID_ARGUMENT,
    ERR_NO_KERNEL_FOR_ARCH,
    ERR_UNSUPPORTED,
    SUCCESS,
    Launcher,
    MockLaunch,
    build_launcher,
    find_cuda_include,
)
from edge_biformer.kernels.config import all_variants
from edge_biformer.kernels.launch import ContractError, Geometry, UnsupportedError, plan_launch

REPO = Path(__file__).resolve().parents[1]
CUDA_INCLUDE = find_cuda_include()
CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")

needs_c_toolchain = pytest.mark.skipif(
    CUDA_INCLUDE is None or CC is None, reason="needs a C compiler and cuda.h (a CUDA toolkit)"
)
PARAM_LAYOUT = b"ppppp" + b"i" * 22 + b"f" + b"pp"  # 5 pointers, 22 int32, qk_scale, 2 hidden pointers
CUDA_ERROR_INVALID_CONTEXT = 201
CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222
CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701


def _cflags(gen: Path) -> list[str]:
    return [f"-I{REPO / 'plugins' / 'bra'}", f"-I{gen}", f"-I{CUDA_INCLUDE}"]


def _compile(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"


# --------------------------------------------------------------------------------------------------
# The generated launcher with fake images for all variants (fast: nothing is compiled by Triton).
# --------------------------------------------------------------------------------------------------

FAKE_ARCHS = (75, 80, 87, 90, 100)
FAKE_PTX = (87,)
BIG_SHARED = 60000  # one variant of the sm_80 set needs > 48 KB of shared memory


def _fake_images() -> list[Image]:
    images = []
    for arch in FAKE_ARCHS:
        for i, v in enumerate(all_variants()):
            shared = BIG_SHARED if (arch == 80 and i == 0) else 1000 * (i + 1) + arch
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
    sources = _cgen.generate(
        variants=all_variants(),
        images=images,
        archs=archs,
        ptx_archs=ptx_archs,
        n_hidden=2,
        header_comment="test",
    )
    for name, text in sources.items():
        (out / name).write_text(text)
    (out / "manifest.json").write_text(json.dumps({"sources": generated_sources(archs, ptx_archs)}))


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Launcher]:
    if CUDA_INCLUDE is None or CC is None:
        pytest.skip("needs a C compiler and cuda.h (a CUDA toolkit)")
    gen = tmp_path_factory.mktemp("fake_gen")
    _write_generated(gen, _fake_images(), FAKE_ARCHS, FAKE_PTX)
    lib = build_launcher(gen, gen / "libfake.so", mock=True, cc=CC)
    launcher = Launcher(lib)
    launcher.lib.mock_cuda_reset()
    assert launcher.lib.mock_cuda_set_param_layout(PARAM_LAYOUT) == 0
    return gen, launcher


def _image_of(launch: MockLaunch) -> tuple[str, int, str]:
    """(kind, arch, variant) of the recorded launch's image (the fake images spell it out)."""
    raw = ctypes.string_at(launch.image, 96)
    _, kind, arch, variant = raw.split(b"|")[:4]
    return kind.decode(), int(arch), variant.decode()


def _load(launcher: Launcher, major: int, minor: int, optin: int = 101376, **fail) -> tuple[int, object]:
    lib = launcher.lib
    lib.mock_cuda_reset()
    lib.mock_cuda_set_param_layout(PARAM_LAYOUT)
    lib.mock_cuda_set_device(major, minor, optin)
    lib.mock_cuda_set_load_failures(int(fail.get("cubin", False)), int(fail.get("ptx", False)))
    return launcher.load()


@needs_c_toolchain
def test_generated_sources_compile_strict_as_c11_and_cxx(fake) -> None:
    gen, _ = fake
    for src in ["bra_launch.c", "bra_images_sm90.c", "bra_images_ptx87.c"]:
        _compile(
            [
                CC,
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                *_cflags(gen),
                "-c",
                str(gen / src),
                "-o",
                os.devnull,
            ]
        )
        if CXX:
            _compile(
                [
                    CXX,
                    "-x",
                    "c++",
                    "-std=c++11",
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    *_cflags(gen),
                    "-c",
                    str(gen / src),
                    "-o",
                    os.devnull,
                ]
            )


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
    status, module = _load(launcher, *cc)
    assert status == SUCCESS, launcher.status_string(status)
    try:
        assert launcher.module_arch(module) == expected
        assert launcher.lib.mock_cuda_live_modules() == len(all_variants())
    finally:
        launcher.unload(module)
    assert launcher.lib.mock_cuda_live_modules() == 0


def test_module_load_failures(fake) -> None:
    _, launcher = fake
    status, _ = _load(launcher, 7, 0)
    assert status == ERR_NO_KERNEL_FOR_ARCH
    status, module = _load(launcher, 9, 0, cubin=True)  # cubin rejected (e.g. driver too old): PTX
    assert status == SUCCESS and launcher.module_arch(module) == (87, True)
    launcher.unload(module)
    status, module = _load(launcher, 9, 0, cubin=True, ptx=True)
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


def _params(launcher: Launcher, g: Geometry, dtype: str, scale: float):
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


def test_check_and_variant_selection_match_python(fake) -> None:
    _, launcher = fake
    for g, dtype in _geometries():
        p = _params(launcher, g, dtype, 0.125)
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
    p = _params(launcher, Geometry(1, 14, 14, 14, 14, 64, 64, 7, 2, 1), "fp16", 0.1)
    assert launcher.check(p, 70) == ERR_NO_KERNEL_FOR_ARCH
    assert launcher.check(p, 86) == SUCCESS
    assert launcher.check(p, 121) == SUCCESS  # PTX


@pytest.mark.parametrize("pointers", [(256, 4352, 8448, 12544, 16640), (256, 4354, 8448, 12544, 16640)])
def test_launch_arguments_match_the_python_plan(fake, pointers: tuple[int, ...]) -> None:
    """Grid, block, shared memory and every kernel argument equal what the Python path launches."""
    _, launcher = fake
    status, module = _load(launcher, 8, 7)
    assert status == SUCCESS
    lib = launcher.lib
    stream = 0x5000
    try:
        for g, dtype in _geometries():
            scale = g.c_qk**-0.5 if g.c_qk > 0 else 1.0
            p = _params(launcher, g, dtype, scale)
            before = lib.mock_cuda_launch_count()
            status = launcher.launch(module, stream, p, pointers)
            expected = _status_of_python_plan(g, dtype)
            assert status == expected, (g, dtype)
            if status != SUCCESS or g.batch == 0:
                assert lib.mock_cuda_launch_count() == before  # nothing launched
                continue
            q, k, v, _, o = pointers
            plan = plan_launch(g, dtype, scale, pointers=(q, k, v, o))
            rec = MockLaunch()
            assert lib.mock_cuda_last_launch(ctypes.byref(rec)) == 0
            kind, arch, variant = _image_of(rec)
            assert (kind, arch, variant) == ("cubin", 87, plan.variant.name)
            assert rec.function_name == b"bra_fwd_kernel"
            assert list(rec.grid) == [plan.grid, 1, 1]
            assert list(rec.block) == [32 * plan.variant.num_warps, 1, 1]
            index = [x.name for x in all_variants()].index(variant)
            assert rec.shared == 1000 * (index + 1) + 87
            assert rec.stream == stream
            args = list(rec.params[: rec.n_params])
            ints = [x & 0xFFFFFFFF for x in plan.scalar_args()[:-1]]
            scale_bits = struct.unpack("<I", struct.pack("<f", plan.qk_scale))[0]
            assert args == [*pointers, *ints, scale_bits, 0, 0], (g, dtype)
    finally:
        launcher.unload(module)


def test_launch_edge_cases(fake) -> None:
    _, launcher = fake
    lib = launcher.lib
    g = Geometry(1, 14, 14, 14, 14, 32, 32, 7, 2, 4)
    p = _params(launcher, g, "fp16", 0.1)
    status, module = _load(launcher, 8, 7)
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
    v0 = all_variants()[0]  # the variant whose sm_80 image needs BIG_SHARED
    assert (v0.dtype, v0.aligned, v0.block_d, v0.region) == ("fp16", False, 16, "large")
    small_fp16_d16 = _params(launcher, Geometry(1, 8, 8, 8, 8, 16, 16, 1, 1, 1), "fp16", 1.0)
    assert launcher.select_variant(small_fp16_d16, False) == v0.name
    status, module = _load(launcher, 8, 0, optin=166912)
    assert status == SUCCESS and lib.mock_cuda_set_shared_count() == 1
    assert launcher.launch(module, 0, small_fp16_d16, (2, 512, 768, 1024, 1280)) == SUCCESS
    launcher.unload(module)
    status, module = _load(launcher, 8, 6, optin=49152)  # sm_80 images, no room for 60000 B
    assert status == SUCCESS and launcher.module_arch(module) == (80, False)
    assert launcher.launch(module, 0, small_fp16_d16, (2, 512, 768, 1024, 1280)) == ERR_UNSUPPORTED
    other = _params(launcher, Geometry(1, 8, 8, 8, 8, 32, 32, 1, 1, 1), "fp16", 1.0)
    assert launcher.launch(module, 0, other, (2, 512, 768, 1024, 1280)) == SUCCESS
    launcher.unload(module)


# --------------------------------------------------------------------------------------------------
# The real AOT step: Triton compiles cubin + PTX for sm_87 and sm_90 (no GPU needed).
# --------------------------------------------------------------------------------------------------

AOT_ARCHS = (87, 90)
#: Shared memory per block with the opt-in, by arch (CUDA programming guide, compute capabilities).
MAX_SHARED_OPTIN = {75: 65536, 80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}
AOT_SUBSET = ("--dtype", "fp16", "fp32", "--head-dim", "32")


def _run_aot_cli(out: Path, *args: str, pythonpath: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "edge_biformer.kernels.aot", "--out", str(out), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def aot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("triton", reason="the AOT step needs Triton")
    out = tmp_path_factory.mktemp("aot")
    proc = _run_aot_cli(out, "--arch", *map(str, AOT_ARCHS), *AOT_SUBSET, "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _check_artifacts(out: Path, n_variants: int) -> dict:
    import triton

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kernel"] == "bra_fwd_kernel"
    assert manifest["archs"] == list(AOT_ARCHS)
    assert manifest["triton_version"] == triton.__version__
    assert manifest["targets"] == {"87": "sm_87", "90": "sm_90a"}
    assert manifest["ptx_archs"] == [87]
    assert len(manifest["variants"]) == n_variants
    assert manifest["sources"] == [
        "bra_launch.c",
        "bra_images_sm87.c",
        "bra_images_sm90.c",
        "bra_images_ptx87.c",
    ]
    assert all((out / s).is_file() for s in [*manifest["sources"], "bra_images.h"])
    files = manifest["files"]
    assert len(files) == 2 * n_variants * len(AOT_ARCHS)
    for f in files:
        data = (out / f["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
        target = manifest["targets"][str(f["arch"])]
        if f["kind"] == "cubin":
            assert "bra_fwd_kernel" in elf_function_symbols(data), f["file"]
        else:
            text = data.decode()
            assert ".entry bra_fwd_kernel(" in text and f".target {target}" in text, f["file"]
    for img in manifest["images"]:  # every image fits the per-block shared memory of its GPUs
        assert 0 < img["shared"] <= MAX_SHARED_OPTIN[img["arch"]], img
    return manifest


def test_aot_artifacts(aot_dir: Path) -> None:
    manifest = _check_artifacts(aot_dir, n_variants=6)
    names = {v["name"] for v in manifest["variants"]}
    assert {"fp16_a16_d32_m64_n64_w4", "fp16_a16_d32_m16_n64_w4", "fp32_gen_d32_m64_n32_w8"} <= names
    assert [p["name"] for p in manifest["params"]][-2:] == ["hidden0", "hidden1"]


@needs_c_toolchain
def test_aot_sources_compile_and_launch_through_mock(aot_dir: Path, tmp_path: Path) -> None:
    for src in json.loads((aot_dir / "manifest.json").read_text())["sources"]:
        _compile(
            [
                CC,
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Werror",
                *_cflags(aot_dir),
                "-c",
                str(aot_dir / src),
                "-o",
                str(tmp_path / (src + ".o")),
            ]
        )
    if CXX:
        _compile(
            [
                CXX,
                "-x",
                "c++",
                "-std=c++11",
                "-Wall",
                "-Wextra",
                "-Werror",
                *_cflags(aot_dir),
                "-c",
                str(aot_dir / "bra_launch.c"),
                "-o",
                os.devnull,
            ]
        )
    launcher = Launcher(build_launcher(aot_dir, tmp_path / "libaot.so", mock=True, cc=CC))
    manifest = json.loads((aot_dir / "manifest.json").read_text())
    shared = {(i["arch"], i["variant"]): i["shared"] for i in manifest["images"]}
    g = Geometry(2, 56, 56, 56, 56, 64, 64, 7, 2, 1)  # BiFormer-T stage 0
    for cc, arch in (((8, 7), 87), ((9, 0), 90), ((8, 9), 87)):
        status, module = _load(launcher, *cc)
        assert status == SUCCESS and launcher.module_arch(module) == (arch, False)
        p = _params(launcher, g, "fp16", 0.125)
        assert launcher.launch(module, 0, p, (256, 512, 768, 1024, 1280)) == SUCCESS
        rec = MockLaunch()
        launcher.lib.mock_cuda_last_launch(ctypes.byref(rec))
        plan = plan_launch(g, "fp16", 0.125, pointers=(256, 512, 768, 1280))
        image = ctypes.string_at(rec.image, 4)
        assert image == b"\x7fELF"
        assert rec.shared == shared[(arch, plan.variant.name)] and rec.grid[0] == plan.grid
        launcher.unload(module)
    # no fp16 head-dim-64 variant was built in this subset: unsupported, not a wrong kernel
    p = _params(launcher, Geometry(1, 14, 14, 14, 14, 128, 128, 7, 2, 1), "fp16", 0.1)
    assert launcher.check(p, 87) == ERR_UNSUPPORTED
    # head dim 16 has no bucket of its own in this subset: the built d32 variant masks the rest
    p = _params(launcher, Geometry(1, 56, 56, 56, 56, 32, 32, 7, 2, 1), "fp16", 0.1)
    assert launcher.check(p, 87) == SUCCESS


@needs_c_toolchain
def test_c_harness_links_and_runs_against_mock(aot_dir: Path, tmp_path: Path) -> None:
    manifest = json.loads((aot_dir / "manifest.json").read_text())
    exe = tmp_path / "harness"
    srcs = [str(aot_dir / s) for s in manifest["sources"]]
    _compile(
        [
            CC,
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            *_cflags(aot_dir),
            str(REPO / "plugins/bra/aot/harness.c"),
            str(REPO / "plugins/bra/aot/mock_cuda.c"),
            *srcs,
            "-o",
            str(exe),
        ]
    )
    ok = subprocess.run([str(exe), "87"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and ok.stdout.count(": success") == 3, ok.stdout
    old = subprocess.run([str(exe), "70"], capture_output=True, text=True, check=False)
    assert old.returncode == 1 and "no kernel image" in old.stdout


@needs_c_toolchain
def test_c_harness_links_against_cuda_stubs(aot_dir: Path, tmp_path: Path) -> None:
    stubs = [CUDA_INCLUDE.parent / d / "stubs" for d in ("lib64", "lib", "targets/x86_64-linux/lib")]
    stub = next((d for d in stubs if (d / "libcuda.so").is_file()), None)
    if stub is None:
        pytest.skip(
            f"no CUDA stubs library (libcuda.so) under {CUDA_INCLUDE.parent}; linked against the mock only"
        )
    manifest = json.loads((aot_dir / "manifest.json").read_text())
    srcs = [str(aot_dir / s) for s in manifest["sources"]]
    _compile(
        [
            CC,
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            *_cflags(aot_dir),
            str(REPO / "plugins/bra/aot/harness.c"),
            *srcs,
            f"-L{stub}",
            "-lcuda",
            "-o",
            str(tmp_path / "harness"),
        ]
    )


def test_aot_is_reproducible_and_path_independent(aot_dir: Path, tmp_path: Path) -> None:
    """A second run from a copy of the sources elsewhere, with a fresh Triton cache, is byte-identical."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "edge_biformer", src / "edge_biformer", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path / "again"
    proc = _run_aot_cli(out, "--arch", *map(str, AOT_ARCHS), *AOT_SUBSET, "--jobs", "2", pythonpath=src)
    assert proc.returncode == 0, proc.stderr[-4000:]
    cmp = filecmp.dircmp(aot_dir, out)
    assert not cmp.left_only and not cmp.right_only
    for dirpath, _, filenames in os.walk(aot_dir):
        for name in filenames:
            a = Path(dirpath) / name
            b = out / a.relative_to(aot_dir)
            assert a.read_bytes() == b.read_bytes(), f"{a.relative_to(aot_dir)} differs between runs"


def test_aot_cli_errors(tmp_path: Path) -> None:
    pytest.importorskip("triton", reason="the AOT step needs Triton")
    proc = _run_aot_cli(tmp_path / "x", "--arch", "70")
    assert proc.returncode == 2 and "sm_70 is not supported" in proc.stderr
    proc = _run_aot_cli(tmp_path / "x", "--arch", "87", "--ptx-arch", "80")
    assert proc.returncode == 2 and "--ptx-arch 80 is not among the compiled archs" in proc.stderr
    proc = _run_aot_cli(tmp_path / "x", "--arch", "87", "90", "100", "--list-sources")
    assert proc.returncode == 0
    assert proc.stdout.split() == [
        "bra_launch.c",
        "bra_images_sm87.c",
        "bra_images_sm90.c",
        "bra_images_sm100.c",
        "bra_images_ptx87.c",
    ]
    assert not (tmp_path / "x").exists()


def test_aot_refuses_too_old_triton(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    triton = pytest.importorskip("triton", reason="the AOT step needs Triton")
    from edge_biformer.kernels.aot import AotError, run_aot

    monkeypatch.setattr(triton, "__version__", "3.2.0")
    with pytest.raises(AotError, match=r"too old for the AOT step \(needs >= 3.3\)"):
        run_aot(tmp_path / "x", [87])
    assert not (tmp_path / "x").exists()


CMAKE = shutil.which("cmake")


def _cmake_project(tmp_path: Path, extra: str) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.19)\n"
        "project(bra_kernels_test C)\n"
        f'include("{REPO / "plugins/bra/kernels.cmake"}")\n'
        f"eb_bra_kernels(EB_BRA_SOURCES EB_BRA_INCLUDE_DIRS {extra})\n"
        "add_library(bra_kernels STATIC ${EB_BRA_SOURCES})\n"
        f'target_include_directories(bra_kernels PRIVATE ${{EB_BRA_INCLUDE_DIRS}} "{CUDA_INCLUDE}")\n'
        "target_compile_options(bra_kernels PRIVATE -Wall -Wextra -Werror)\n"
    )
    return proj


@needs_c_toolchain
@pytest.mark.skipif(CMAKE is None, reason="needs cmake")
def test_kernels_cmake_with_pregenerated_dir(aot_dir: Path, tmp_path: Path) -> None:
    proj = _cmake_project(tmp_path, "")
    build = tmp_path / "build"
    cfg = subprocess.run(
        [CMAKE, "-S", str(proj), "-B", str(build), f"-DEB_BRA_KERNELS_DIR={aot_dir}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run([CMAKE, "--build", str(build), "-j2"], capture_output=True, text=True, check=False)
    assert bld.returncode == 0, bld.stdout[-4000:] + bld.stderr[-4000:]
    assert (build / "libbra_kernels.a").is_file()


@needs_c_toolchain
@pytest.mark.skipif(CMAKE is None, reason="needs cmake")
def test_kernels_cmake_refuses_pregenerated_dir_without_the_arch(aot_dir: Path, tmp_path: Path) -> None:
    manifest = json.loads((aot_dir / "manifest.json").read_text())
    missing = 75 if 75 not in manifest["archs"] and not any(p <= 75 for p in manifest["ptx_archs"]) else None
    assert missing is not None, "the test's AOT subset should not cover sm_75"
    proj = _cmake_project(tmp_path, f"ARCHS {manifest['archs'][0]} {missing}")
    cfg = subprocess.run(
        [CMAKE, "-S", str(proj), "-B", str(tmp_path / "build"), f"-DEB_BRA_KERNELS_DIR={aot_dir}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cfg.returncode != 0
    assert f"has no kernel for sm_{missing}" in " ".join((cfg.stdout + cfg.stderr).split())


@needs_c_toolchain
@pytest.mark.skipif(CMAKE is None, reason="needs cmake")
def test_kernels_cmake_build_time_mode_configures(tmp_path: Path) -> None:
    pytest.importorskip("triton", reason="the AOT step needs Triton")
    proj = _cmake_project(tmp_path, "ARCHS 87 90 PYTHON " + sys.executable)
    build = tmp_path / "build"
    cfg = subprocess.run(
        [CMAKE, "-S", str(proj), "-B", str(build)], capture_output=True, text=True, check=False
    )
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    rules = (build / "CMakeFiles" / "bra_kernels.dir" / "build.make").read_text()
    assert "edge_biformer.kernels.aot" in rules and "bra_images_ptx87.c" in rules


@pytest.mark.slow
@needs_c_toolchain
@pytest.mark.skipif(CMAKE is None, reason="needs cmake")
def test_kernels_cmake_build_time_mode_builds(tmp_path: Path) -> None:
    pytest.importorskip("triton", reason="the AOT step needs Triton")
    proj = _cmake_project(tmp_path, "ARCHS 87 JOBS 2 PYTHON " + sys.executable)
    build = tmp_path / "build"
    cfg = subprocess.run(
        [CMAKE, "-S", str(proj), "-B", str(build)], capture_output=True, text=True, check=False
    )
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(
        [CMAKE, "--build", str(build)], capture_output=True, text=True, check=False, timeout=900
    )
    assert bld.returncode == 0, bld.stdout[-4000:] + bld.stderr[-4000:]
    manifest = json.loads((build / "eb_bra_kernels" / "manifest.json").read_text())
    assert manifest["archs"] == [87] and len(manifest["variants"]) == len(all_variants())


@pytest.mark.slow
@needs_c_toolchain
def test_aot_full_variant_set(tmp_path: Path) -> None:
    """Every variant of the tile table for sm_87 and sm_90; the sources compile with -Werror."""
    pytest.importorskip("triton", reason="the AOT step needs Triton")
    out = tmp_path / "full"
    proc = _run_aot_cli(out, "--arch", *map(str, AOT_ARCHS), "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    manifest = _check_artifacts(out, n_variants=len(all_variants()))
    for src in manifest["sources"]:
        _compile(
            [
                CC,
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Werror",
                *_cflags(out),
                "-c",
                str(out / src),
                "-o",
                os.devnull,
            ]
        )
