"""The real AOT step and the builds around it: Triton compiles cubin + PTX for sm_87 and sm_90.

No GPU needed: the artifacts and the manifest, kernel names in the ELF symbols and PTX, hashes, byte
reproducibility from another path, the generated tables with the static launcher under
``-Wall -Wextra -Werror`` (C11 and C++11) and through the mock driver, the C harness, the CLI's
errors, and ``plugins/bra/kernels.cmake`` in both of its modes.
"""

from __future__ import annotations

import ctypes
import filecmp
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_biformer.kernels import aot
from edge_biformer.kernels.capi import ERR_UNSUPPORTED, SUCCESS
from edge_biformer.kernels.compile import elf_function_symbols
from edge_biformer.kernels.config import all_variants
from edge_biformer.kernels.launch import Geometry, plan_launch
from edge_biformer.kernels.shapes import stage_shapes
from tests.kernels.launcher_mock import (
    CUDA_INCLUDE,
    CXX,
    MOCK_DRIVER,
    REPO,
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

STATIC_LAUNCHER = REPO / aot.STATIC_SOURCES[0]
HARNESS = REPO / "plugins" / "samples" / "bra_launch_harness.c"


def _launcher_sources(gen: Path) -> list[str]:
    """The static launcher and the generated sources the manifest lists."""
    manifest = json.loads((gen / "manifest.json").read_text())
    return [str(REPO / s) for s in manifest["static_sources"]] + [str(gen / s) for s in manifest["sources"]]


AOT_ARCHS = (87, 90)
BIFORMER_T = stage_shapes(["cls224"], ["T/S"])
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
    names = {v["name"] for v in manifest["variants"]}
    assert {p["variant"] for p in manifest["policy"]} == names  # every built variant serves the policy
    assert manifest["sources"] == [
        "bra_kernels.c",
        "bra_images_sm87.c",
        "bra_images_sm90.c",
        "bra_images_ptx87.c",
    ]
    assert manifest["static_sources"] == ["plugins/bra/kernels/bra_launch.c"]
    assert manifest["header"] == "bra_kernels.h" and manifest["tables_format"] == 3
    assert all((out / s).is_file() for s in [*manifest["sources"], "bra_kernels.h"])
    assert not (out / "bra_launch.c").exists()  # the launcher is not generated
    digests = manifest["sources_sha256"]
    for rel in ("plugins/bra/kernels/bra_launch.c", "plugins/bra/kernels/bra_kernel_tables.h"):
        assert digests[rel] == hashlib.sha256((REPO / rel).read_bytes()).hexdigest()
    assert {"bra_triton.py", "config.py", "aot.py", "cgen.py", "image.py"} <= set(digests)
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


def _subset_variants() -> list[str]:
    return [v.name for v in all_variants(("fp16", "fp32"), (32,))]


def test_aot_artifacts(aot_dir: Path) -> None:
    manifest = _check_artifacts(aot_dir, n_variants=len(_subset_variants()))
    names = {v["name"] for v in manifest["variants"]}
    stages = [plan_launch(sh.geometry(1), "fp16", 0.1, pointers=(256,) * 4).variant.name for sh in BIFORMER_T]
    assert set(stages) <= names and len(set(stages)) == 3  # one variant per BiFormer-T stage
    assert [p["name"] for p in manifest["params"]][-2:] == ["hidden0", "hidden1"]


@needs_c_toolchain
def test_aot_sources_compile_and_launch_through_mock(aot_dir: Path, tmp_path: Path) -> None:
    for src in _launcher_sources(aot_dir):
        compile_ok(strict_c(*cflags(aot_dir), "-c", src, "-o", str(tmp_path / (Path(src).name + ".o"))))
    if CXX:
        for src in (STATIC_LAUNCHER, aot_dir / "bra_kernels.c"):
            compile_ok(strict_cxx(*cflags(aot_dir), "-c", str(src), "-o", os.devnull))
    launcher = build_mock_launcher(aot_dir, tmp_path / "libaot.so")
    manifest = json.loads((aot_dir / "manifest.json").read_text())
    shared = {(i["arch"], i["variant"]): i["shared"] for i in manifest["images"]}
    g = BIFORMER_T[0].geometry(2)  # BiFormer-T stage 1
    for cc, arch in (((8, 7), 87), ((9, 0), 90), ((8, 9), 87)):
        status, module = load_on(launcher, *cc)
        assert status == SUCCESS and launcher.module_arch(module) == (arch, False)
        p = launch_params(launcher, g, "fp16", 0.125)
        assert launcher.launch(module, 0, p, (256, 512, 768, 1024, 1280)) == SUCCESS
        rec = last_launch(launcher)
        plan = plan_launch(g, "fp16", 0.125, pointers=(256, 512, 768, 1280))
        image = ctypes.string_at(rec.image, 4)
        assert image == b"\x7fELF"
        assert rec.shared == shared[(arch, plan.variant.name)] and rec.grid[0] == plan.grid
        launcher.unload(module)
    # no fp16 head-dim-64 variant was built in this subset: unsupported, not a wrong kernel
    p = launch_params(launcher, Geometry(1, 14, 14, 14, 14, 128, 128, 7, 2, 1), "fp16", 0.1)
    assert launcher.check(p, 87) == ERR_UNSUPPORTED
    # head dim 16 has no bucket of its own in this subset: the built d32 variant masks the rest
    p = launch_params(launcher, Geometry(1, 56, 56, 56, 56, 32, 32, 7, 2, 1), "fp16", 0.1)
    assert launcher.check(p, 87) == SUCCESS


@needs_c_toolchain
def test_c_harness_links_and_runs_against_mock(aot_dir: Path, tmp_path: Path) -> None:
    exe = tmp_path / "harness"
    compile_ok(
        strict_c(
            *cflags(aot_dir), str(HARNESS), str(MOCK_DRIVER), *_launcher_sources(aot_dir), "-o", str(exe)
        )
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
    exe = tmp_path / "harness"
    compile_ok(
        strict_c(
            *cflags(aot_dir), str(HARNESS), *_launcher_sources(aot_dir), f"-L{stub}", "-lcuda", "-o", str(exe)
        )
    )


def test_aot_is_reproducible_and_path_independent(aot_dir: Path, tmp_path: Path) -> None:
    """A second run from a copy of the sources elsewhere, with a fresh Triton cache, is byte-identical."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "edge_biformer", src / "edge_biformer", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "plugins", src / "plugins")  # the static launcher the tables are made for
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
        "bra_kernels.c",
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


def _cmake(*args: str, timeout: int | None = None) -> subprocess.CompletedProcess:
    """Run cmake (configure: ``-S proj -B build ...``, build: ``--build build``), output captured."""
    return subprocess.run([str(CMAKE), *args], capture_output=True, text=True, check=False, timeout=timeout)


@needs_c_toolchain
@pytest.mark.skipif(CMAKE is None, reason="needs cmake")
def test_kernels_cmake_with_pregenerated_dir(aot_dir: Path, tmp_path: Path) -> None:
    proj = _cmake_project(tmp_path, "")
    build = tmp_path / "build"
    cfg = _cmake("-S", str(proj), "-B", str(build), f"-DEB_BRA_KERNELS_DIR={aot_dir}")
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = _cmake("--build", str(build), "-j2")
    assert bld.returncode == 0, bld.stdout[-4000:] + bld.stderr[-4000:]
    assert (build / "libbra_kernels.a").is_file()


@needs_c_toolchain
@pytest.mark.skipif(CMAKE is None, reason="needs cmake")
def test_kernels_cmake_refuses_pregenerated_dir_without_the_arch(aot_dir: Path, tmp_path: Path) -> None:
    manifest = json.loads((aot_dir / "manifest.json").read_text())
    missing = 75 if 75 not in manifest["archs"] and not any(p <= 75 for p in manifest["ptx_archs"]) else None
    assert missing is not None, "the test's AOT subset should not cover sm_75"
    proj = _cmake_project(tmp_path, f"ARCHS {manifest['archs'][0]} {missing}")
    cfg = _cmake("-S", str(proj), "-B", str(tmp_path / "build"), f"-DEB_BRA_KERNELS_DIR={aot_dir}")
    assert cfg.returncode != 0
    assert f"has no kernel for sm_{missing}" in " ".join((cfg.stdout + cfg.stderr).split())


@needs_c_toolchain
@pytest.mark.skipif(CMAKE is None, reason="needs cmake")
def test_kernels_cmake_build_time_mode_configures(tmp_path: Path) -> None:
    pytest.importorskip("triton", reason="the AOT step needs Triton")
    proj = _cmake_project(tmp_path, "ARCHS 87 90 PYTHON " + sys.executable)
    build = tmp_path / "build"
    cfg = _cmake("-S", str(proj), "-B", str(build))
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
    cfg = _cmake("-S", str(proj), "-B", str(build))
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = _cmake("--build", str(build), timeout=900)
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
    _check_artifacts(out, n_variants=len(all_variants()))
    for src in _launcher_sources(out):
        compile_ok(strict_c(*cflags(out), "-c", src, "-o", os.devnull))


def test_clean_outputs_removes_this_and_older_layouts(tmp_path: Path) -> None:
    """A rerun into the same --out replaces what this tool (or an older version of it) wrote there."""
    ours = ["bra_kernels.c", "bra_kernels.h", "bra_images_sm87.c", "bra_images_ptx87.c", "manifest.json"]
    older = ["bra_launch.c", "bra_images.h"]  # the generated launcher and header of the old layout
    for name in ours + older:
        (tmp_path / name).write_text("generated")
    (tmp_path / "cubin" / "sm_87").mkdir(parents=True)
    (tmp_path / "ptx").mkdir()
    (tmp_path / "notes.txt").write_text("not ours")
    aot._clean_outputs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
