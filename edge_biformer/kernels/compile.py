"""Compiling the routed-attention kernel's variants with ``triton.compile`` (no GPU needed).

:func:`compile_all` compiles every (variant, arch) pair in fresh worker processes and returns the
:class:`~edge_biformer.kernels.image.Image` of each, checked: no Triton scratch memory, no
clusters, the expected kernel name and parameter list (plus Triton's hidden pointers), no line
info. :mod:`.aot` writes them out.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import re
import struct
from collections.abc import Sequence

from edge_biformer.kernels.config import Variant
from edge_biformer.kernels.image import AotError, Image

__all__ = [
    "COMPILE_ENV",
    "compile_all",
    "compile_variant",
    "elf_function_symbols",
    "expected_ptx_params",
    "ptx_entry_params",
    "ptxas_version",
]

#: Environment of the compiler processes: no line info (smaller images, no source paths inside),
#: explicit FP fusion (Triton 3.9 warns when it is left to its default).
COMPILE_ENV = {"TRITON_DISABLE_LINE_INFO": "1", "TRITON_DEFAULT_FP_FUSION": "1"}


def _signature(variant: Variant) -> tuple[dict[str, str], dict[tuple[int, ...], list[list[object]]]]:
    from edge_biformer.kernels.bra_triton import ALIGNED_PARAMS, CONSTEXPR_PARAMS, RUNTIME_PARAMS

    elem = "*fp16" if variant.dtype == "fp16" else "*fp32"
    sig: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list[list[object]]] = {}
    for i, (name, ty) in enumerate(RUNTIME_PARAMS):
        sig[name] = elem if ty == "ptr" else ty
        if variant.aligned and name in ALIGNED_PARAMS:
            attrs[(i,)] = [["tt.divisibility", 16]]
    for name in variant.constexprs:
        sig[name] = "constexpr"
    if list(variant.constexprs) != list(CONSTEXPR_PARAMS):
        raise AotError(
            f"variant constexprs {list(variant.constexprs)} differ from the kernel's {CONSTEXPR_PARAMS}"
        )
    return sig, attrs


_PARAM_RE = re.compile(r"\.param\s+\.(\w+)\b[^,]*")


def ptx_entry_params(ptx: str, kernel: str) -> list[str]:
    """PTX types of the parameters of ``.entry kernel(...)`` (e.g. ``["u64", "u32", "f32"]``)."""
    m = re.search(r"\.entry\s+" + re.escape(kernel) + r"\s*\((.*?)\)", ptx, re.S)
    if not m:
        raise AotError(f"the PTX has no entry point named {kernel}")
    return _PARAM_RE.findall(m.group(1))


def expected_ptx_params() -> list[str]:
    """PTX parameter types of the kernel's run-time arguments (without Triton's hidden ones)."""
    from edge_biformer.kernels.bra_triton import RUNTIME_PARAMS

    kinds = {"ptr": "u64", "*i32": "u64", "i32": "u32", "fp32": "f32"}
    return [kinds[ty] for _, ty in RUNTIME_PARAMS]


def compile_variant(variant: Variant, arch: int) -> Image:
    """Compile one variant for ``sm_<arch>`` with the running Triton (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from edge_biformer.kernels import bra_triton

    # Always the compiled form, even if TRITON_INTERPRET is set in the environment.
    fn = JITFunction(bra_triton.bra_fwd_kernel)
    sig, attrs = _signature(variant)
    src = ASTSource(fn=fn, signature=sig, constexprs=variant.constexprs, attrs=attrs)
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    options = backend.parse_options(
        {"num_warps": variant.num_warps, "num_stages": variant.num_stages, "enable_fp_fusion": True}
    )
    compiled = triton.compile(src, target=target, options=options.__dict__)
    md = compiled.metadata
    if getattr(md, "global_scratch_size", 0) or getattr(md, "profile_scratch_size", 0):
        raise AotError(
            f"variant {variant.name} for sm_{arch} needs Triton scratch memory, which the "
            f"workspace-free plugin cannot provide"
        )
    if getattr(md, "num_ctas", 1) != 1 or getattr(md, "launch_cooperative_grid", False):
        raise AotError(f"variant {variant.name} for sm_{arch} needs clusters or cooperative launch")
    if getattr(md, "launch_pdl", False):
        raise AotError(f"variant {variant.name} for sm_{arch} needs programmatic dependent launch")
    if int(md.num_warps) != variant.num_warps:
        raise AotError(
            f"variant {variant.name} compiled with {md.num_warps} warps, expected {variant.num_warps}"
        )
    if md.name != bra_triton.KERNEL_NAME:
        raise AotError(f"compiled kernel is named {md.name}, expected {bra_triton.KERNEL_NAME}")
    ptx: str = compiled.asm["ptx"]
    cubin: bytes = compiled.asm["cubin"]
    params = ptx_entry_params(ptx, md.name)
    expected = expected_ptx_params()
    n_hidden = len(params) - len(expected)
    hidden = params[len(expected) :]
    if params[: len(expected)] != expected or n_hidden < 0 or any(t != "u64" for t in hidden):
        raise AotError(
            f"unexpected kernel parameters {params} for sm_{arch}; expected {expected} followed by "
            f"Triton's hidden pointer arguments"
        )
    target_m = re.search(r"^\.target\s+(\w+)", ptx, re.M)
    version_m = re.search(r"^\.version\s+([\d.]+)", ptx, re.M)
    if not target_m or not version_m:
        raise AotError(f"cannot read the .target/.version of the PTX for sm_{arch}")
    if ".loc" in ptx or ".file" in ptx:
        raise AotError("the PTX carries line info; TRITON_DISABLE_LINE_INFO=1 did not take effect")
    return Image(
        variant=variant.name,
        arch=arch,
        target=target_m.group(1),
        ptx_version=version_m.group(1),
        shared=int(md.shared),
        num_warps=int(md.num_warps),
        n_hidden=n_hidden,
        cubin=bytes(cubin),
        ptx=ptx,
    )


def _worker_init(cache_dir: str) -> None:
    os.environ.update(COMPILE_ENV)
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.pop("TRITON_INTERPRET", None)


def _compile_task(args: tuple[Variant, int]) -> Image:
    return compile_variant(*args)


def ptxas_version(arch: int) -> str:
    """Version (``"12.9.86"``) of the ptxas Triton uses for ``sm_<arch>``."""
    from triton.backends.nvidia.compiler import get_ptxas_version

    text = get_ptxas_version(arch)
    m = re.search(r"V(\d+\.\d+\.\d+)", text)
    return m.group(1) if m else text.strip().splitlines()[-1]


def _ptxas_versions(archs: Sequence[int], cache_dir: str) -> dict[str, str]:
    _worker_init(cache_dir)
    return {str(a): ptxas_version(a) for a in archs}


def compile_all(
    variants: Sequence[Variant], archs: Sequence[int], jobs: int, cache_dir: str
) -> tuple[list[Image], dict[str, str]]:
    """Compile every (variant, arch) pair in ``jobs`` fresh processes; results in sorted order."""
    tasks = [(v, a) for a in sorted(archs) for v in variants]
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold torch threads
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=max(1, jobs), mp_context=ctx, initializer=_worker_init, initargs=(cache_dir,)
    ) as pool:
        versions_f = pool.submit(_ptxas_versions, list(archs), cache_dir)
        images = list(pool.map(_compile_task, tasks))
        versions = versions_f.result()
    return images, versions


def elf_function_symbols(image: bytes) -> list[str]:
    """Names of the FUNC symbols in a 64-bit little-endian ELF (a cubin)."""
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise AotError("not a 64-bit little-endian ELF image")
    e_shoff = struct.unpack_from("<Q", image, 0x28)[0]
    e_shentsize, e_shnum = struct.unpack_from("<HH", image, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", image, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    names: list[str] = []
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]
        str_off = strtab[4]
        off, size, entsize = sh[4], sh[5], sh[9] or 24
        for j in range(size // entsize):
            st_name, st_info = struct.unpack_from("<IB", image, off + j * entsize)
            if st_info & 0xF == 2:  # STT_FUNC
                end = image.index(b"\0", str_off + st_name)
                names.append(image[str_off + st_name : end].decode())
    return names
