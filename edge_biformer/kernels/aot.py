"""Ahead-of-time compilation of the routed-attention kernel for the TensorRT plugin.

``python -m edge_biformer.kernels.aot --arch 75 80 86 87 89 90 --out DIR`` compiles every variant of
:mod:`edge_biformer.kernels.config` (dtype x alignment x head-dim bucket x tiles) of the one kernel
source :mod:`edge_biformer.kernels.bra_triton` with ``triton.compile`` for each architecture
(no GPU needed) and writes into ``DIR``:

- ``cubin/sm_<arch>/<variant>.cubin`` and ``ptx/sm_<arch>/<variant>.ptx``: the raw images;
- ``bra_images.h``, ``bra_launch.c``, ``bra_images_sm<arch>.c`` (cubins of one arch) and
  ``bra_images_ptx<arch>.c`` (PTX kept for JIT on newer GPUs): C sources implementing
  ``plugins/bra/bra_launch.h`` with the CUDA driver API only, the images embedded as byte arrays;
- ``manifest.json``: Triton and ptxas versions, archs, the kernel signature, variants and the
  SHA-256 of every image.

The output depends only on the kernel sources, the Triton version (with its bundled ptxas) and the
options: no timestamps, no paths, sorted order, line info disabled. Compile the generated ``.c``
files with ``-I plugins/bra -I DIR -I $CUDA/include`` and link ``libcuda``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import struct
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.kernels.config import DTYPES, HEAD_DIM_BUCKETS, Variant, all_variants
from edge_biformer.utils import atomic_output, log, stage

#: The Triton release the checked-in expectations (and the plugin's release builds) use.
PINNED_TRITON = "3.9.0"
#: Oldest Triton whose ``triton.compile`` API the AOT step uses (ASTSource(constexprs=..., attrs=...)).
MIN_TRITON = (3, 3)
#: Default target architectures: Turing to Blackwell, Jetson Orin (87) and Thor (110) included.
DEFAULT_ARCHS: tuple[int, ...] = (75, 80, 86, 87, 89, 90, 100, 103, 110, 120, 121)
#: Environment of the compiler processes: no line info (smaller images, no source paths inside),
#: explicit FP fusion (Triton 3.9 warns when it is left to its default).
COMPILE_ENV = {"TRITON_DISABLE_LINE_INFO": "1", "TRITON_DEFAULT_FP_FUSION": "1"}


#: Sources whose bytes determine the generated output (recorded in the manifest).
_SOURCES = ("bra_triton.py", "config.py", "aot.py", "_cgen.py")


def sources_sha256() -> dict[str, str]:
    """SHA-256 of the kernel, policy and generator sources."""
    here = Path(__file__).parent
    return {name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in _SOURCES}


class AotError(EdgeBiformerError):
    """The ahead-of-time compilation could not produce its outputs."""


@dataclass(frozen=True)
class Image:
    """One compiled variant for one architecture."""

    variant: str
    arch: int
    target: str  # PTX target, e.g. "sm_87" or "sm_90a"
    ptx_version: str  # e.g. "8.8"
    shared: int  # dynamic shared memory in bytes (launch argument)
    num_warps: int
    n_hidden: int  # pointer arguments Triton appends (global / profile scratch)
    cubin: bytes
    ptx: str

    @property
    def arch_specific(self) -> bool:
        """Whether the target is arch-specific (``sm_90a``): loadable only on exactly that GPU."""
        return self.target.endswith("a")


# --------------------------------------------------------------------------------------------------
# Compilation (runs in worker processes)
# --------------------------------------------------------------------------------------------------


def _signature(variant: Variant) -> tuple[dict[str, str], dict[tuple[int, ...], list[list[object]]]]:
    from edge_biformer.kernels.bra_triton import ALIGNED_PARAMS, RUNTIME_PARAMS

    elem = "*fp16" if variant.dtype == "fp16" else "*fp32"
    sig: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list[list[object]]] = {}
    for i, (name, ty) in enumerate(RUNTIME_PARAMS):
        sig[name] = elem if ty == "ptr" else ty
        if variant.aligned and name in ALIGNED_PARAMS:
            attrs[(i,)] = [["tt.divisibility", 16]]
    for name in variant.constexprs:
        sig[name] = "constexpr"
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


# --------------------------------------------------------------------------------------------------
# Checks on the images
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def triton_targets(archs: Sequence[int]) -> dict[int, str]:
    """The PTX target Triton compiles each arch for (``sm_87``, ``sm_90a``), without compiling."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    return {a: sm_arch_from_capability(a) for a in archs}


def resolve_ptx_archs(
    archs: Sequence[int], ptx_archs: Sequence[int] | str, targets: dict[int, str]
) -> list[int]:
    """The archs whose PTX is embedded, from an ``--ptx-arch`` value."""
    if ptx_archs == "auto":
        return default_ptx_archs(archs, targets)
    if ptx_archs == "none":
        return []
    if ptx_archs == "all":
        return sorted(archs)
    out = sorted(set(int(a) for a in ptx_archs))
    missing = [a for a in out if a not in archs]
    if missing:
        raise AotError(f"--ptx-arch {missing[0]} is not among the compiled archs {sorted(archs)}")
    return out


def default_ptx_archs(archs: Sequence[int], targets: dict[int, str]) -> list[int]:
    """PTX kept for JIT: the newest arch whose target is not arch-specific (else the newest)."""
    portable = [a for a in archs if not targets[a].endswith("a")]
    return [max(portable)] if portable else [max(archs)]


def generated_sources(archs: Sequence[int], ptx_archs: Sequence[int]) -> list[str]:
    """File names of the generated C sources, in a stable order (what CMake compiles)."""
    return (
        ["bra_launch.c"]
        + [f"bra_images_sm{a}.c" for a in sorted(archs)]
        + [f"bra_images_ptx{a}.c" for a in sorted(ptx_archs)]
    )


def run_aot(
    out: Path,
    archs: Sequence[int] = DEFAULT_ARCHS,
    *,
    dtypes: Sequence[str] = DTYPES,
    head_dims: Sequence[int] = HEAD_DIM_BUCKETS,
    ptx_archs: Sequence[int] | str = "auto",
    jobs: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    strict_version: bool = False,
) -> dict[str, object]:
    """Compile the variants and write images, C sources and ``manifest.json`` into ``out``.

    Returns the manifest. ``ptx_archs`` is ``"auto"`` (:func:`default_ptx_archs`), ``"none"``,
    ``"all"`` or a list of archs from ``archs``.
    """
    import triton

    version = tuple(int(x) for x in re.findall(r"\d+", triton.__version__)[:2])
    if version < MIN_TRITON:
        raise AotError(
            f"Triton {triton.__version__} is too old for the AOT step (needs >= "
            f"{'.'.join(map(str, MIN_TRITON))}); pip install 'triton=={PINNED_TRITON}'"
        )
    archs = sorted(set(int(a) for a in archs))
    if not archs:
        raise AotError("no target architecture given (--arch)")
    bad = [a for a in archs if a < 75]
    if bad:
        raise AotError(
            f"sm_{bad[0]} is not supported: Triton {triton.__version__} compiles for sm_75 and newer"
        )
    if triton.__version__ != PINNED_TRITON:
        msg = (
            f"Triton {triton.__version__} is running but the kernels are pinned to Triton "
            f"{PINNED_TRITON}; the images will differ from a pinned build (pip install "
            f"triton=={PINNED_TRITON} to reproduce it)"
        )
        if strict_version:
            raise AotError(msg)
        log(f"warning: {msg}")
    resolve_ptx_archs(archs, ptx_archs, triton_targets(archs))  # fail before compiling
    variants = all_variants(tuple(dtypes), tuple(head_dims))
    jobs = jobs or min(os.cpu_count() or 1, 8)
    tmp_cache = None
    if cache_dir is None:
        tmp_cache = tempfile.mkdtemp(prefix="eb-aot-cache-")
        cache_dir = tmp_cache
    try:
        with stage("aot compile") as st:
            images, ptxas = compile_all(variants, archs, jobs, os.fspath(cache_dir))
            st.details.append(f"{len(images)} images ({len(variants)} variants x {len(archs)} archs)")
    finally:
        if tmp_cache:
            shutil.rmtree(tmp_cache, ignore_errors=True)

    from edge_biformer.kernels.bra_triton import KERNEL_NAME

    for img in images:
        if KERNEL_NAME not in elf_function_symbols(img.cubin):
            raise AotError(f"cubin {img.variant} for sm_{img.arch} has no function {KERNEL_NAME}")
    n_hidden = {img.n_hidden for img in images}
    if len(n_hidden) != 1:
        raise AotError(f"images disagree on Triton's hidden arguments: {sorted(n_hidden)}")
    targets = {img.arch: img.target for img in images}
    if targets != triton_targets(archs):
        raise AotError(
            f"compiled targets {targets} differ from Triton's arch mapping {triton_targets(archs)}"
        )
    ptx_list = resolve_ptx_archs(archs, ptx_archs, targets)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Everything is written to a staging folder beside `out` and moved in only when complete, so a
    # failed or interrupted run leaves the previous output as it was.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        with stage("aot write") as st:
            manifest = _write_outputs(staging, variants, images, archs, ptx_list, ptxas)
            _clean_outputs(out)
            for entry in sorted(staging.iterdir()):
                os.replace(entry, out / entry.name)
            st.output = out / "manifest.json"
            st.details.append(f"{len(manifest['sources'])} C sources in {out}")  # type: ignore[arg-type]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _write_outputs(
    out: Path,
    variants: Sequence[Variant],
    images: Sequence[Image],
    archs: Sequence[int],
    ptx_list: Sequence[int],
    ptxas: dict[str, str],
) -> dict[str, object]:
    """Write the images, the generated C and ``manifest.json`` into ``out``; return the manifest."""
    import triton

    from edge_biformer.kernels import _cgen

    files: list[dict[str, object]] = []
    for img in images:
        for kind, data in (("cubin", img.cubin), ("ptx", img.ptx.encode())):
            rel = f"{kind}/sm_{img.arch}/{img.variant}.{kind}"
            _write(out / rel, data)
            files.append(
                {
                    "file": rel,
                    "kind": kind,
                    "arch": img.arch,
                    "variant": img.variant,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "bytes": len(data),
                    "embedded": kind == "cubin" or img.arch in ptx_list,
                }
            )
    sources = _cgen.generate(
        variants=variants,
        images=images,
        archs=archs,
        ptx_archs=ptx_list,
        n_hidden=images[0].n_hidden,
        header_comment=_header_comment(triton.__version__),
    )
    for name, text in sources.items():
        _write(out / name, text.encode())
    manifest = _manifest(variants, images, archs, ptx_list, ptxas, files, triton.__version__)
    _write(out / "manifest.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return manifest


def _header_comment(triton_version: str) -> str:
    return (
        "Generated by `python -m edge_biformer.kernels.aot` from edge_biformer/kernels/bra_triton.py "
        f"(sha256 {sources_sha256()['bra_triton.py'][:16]}) with Triton {triton_version}. Do not edit."
    )


def _manifest(
    variants: Sequence[Variant],
    images: Sequence[Image],
    archs: Sequence[int],
    ptx_archs: Sequence[int],
    ptxas: dict[str, str],
    files: list[dict[str, object]],
    triton_version: str,
) -> dict[str, object]:
    from edge_biformer.kernels.bra_triton import KERNEL_NAME, RUNTIME_PARAMS

    return {
        "format": 1,
        "kernel": KERNEL_NAME,
        "source": "edge_biformer/kernels/bra_triton.py",
        "sources_sha256": sources_sha256(),
        "triton_version": triton_version,
        "pinned_triton_version": PINNED_TRITON,
        "ptxas_versions": ptxas,
        "archs": list(archs),
        "ptx_archs": list(ptx_archs),
        "targets": {str(img.arch): img.target for img in images},
        "ptx_versions": {str(img.arch): img.ptx_version for img in images},
        "params": [{"name": n, "type": t} for n, t in RUNTIME_PARAMS]
        + [{"name": f"hidden{i}", "type": "ptr"} for i in range(images[0].n_hidden)],
        "variants": [{"name": v.name, **asdict(v)} for v in variants],
        "images": [
            {"variant": img.variant, "arch": img.arch, "shared": img.shared, "num_warps": img.num_warps}
            for img in images
        ],
        "files": files,
        "sources": generated_sources(archs, ptx_archs),
        "header": "bra_images.h",
    }


_GENERATED_PATTERNS = (
    "bra_launch.c",
    "bra_images.h",
    "bra_images_sm*.c",
    "bra_images_ptx*.c",
    "manifest.json",
)


def _clean_outputs(out: Path) -> None:
    """Remove what an earlier run generated in ``out``: our own file names and the ``cubin/`` and
    ``ptx/`` folders this tool writes."""
    for pattern in _GENERATED_PATTERNS:
        for p in out.glob(pattern):
            p.unlink()
    for sub in ("cubin", "ptx"):
        if (out / sub).is_dir():
            shutil.rmtree(out / sub)


def _write(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o644)


def build_parser() -> argparse.ArgumentParser:
    """Command-line parser of ``python -m edge_biformer.kernels.aot``."""
    p = argparse.ArgumentParser(
        prog="python -m edge_biformer.kernels.aot",
        description="Compile the routed-attention kernel ahead of time (cubin + PTX + C launcher).",
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--arch",
        nargs="+",
        type=int,
        default=list(DEFAULT_ARCHS),
        metavar="SM",
        help=f"compute capabilities as major*10+minor (default: {' '.join(map(str, DEFAULT_ARCHS))})",
    )
    p.add_argument(
        "--ptx-arch",
        nargs="+",
        default=["auto"],
        metavar="SM",
        help="archs whose PTX is embedded for JIT on GPUs without a matching cubin: 'auto' (the "
        "newest non-arch-specific target), 'none', 'all' or a list (default: auto)",
    )
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES), help="dtypes to build")
    p.add_argument(
        "--head-dim",
        nargs="+",
        type=int,
        choices=HEAD_DIM_BUCKETS,
        default=list(HEAD_DIM_BUCKETS),
        help="head-dim buckets to build (head dims up to the bucket use it)",
    )
    p.add_argument("--jobs", "-j", type=int, default=None, help="compiler processes (default: CPUs, max 8)")
    p.add_argument("--cache-dir", default=None, help="Triton cache to reuse (default: a fresh temporary one)")
    p.add_argument(
        "--list-sources",
        action="store_true",
        help="print the C sources this command would generate (one per line) and exit; compiles nothing",
    )
    p.add_argument(
        "--strict-triton-version",
        action="store_true",
        help=f"fail unless the running Triton is the pinned {PINNED_TRITON}",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    ptx: Sequence[int] | str
    if len(args.ptx_arch) == 1 and args.ptx_arch[0] in ("auto", "none", "all"):
        ptx = args.ptx_arch[0]
    else:
        try:
            ptx = [int(a) for a in args.ptx_arch]
        except ValueError:
            print(
                f"aot: error: --ptx-arch takes auto, none, all or archs, got {args.ptx_arch}",
                file=sys.stderr,
            )
            return 2
    try:
        if args.list_sources:
            archs = sorted(set(args.arch))
            ptx_list = resolve_ptx_archs(archs, ptx, triton_targets(archs))
            for name in generated_sources(archs, ptx_list):
                print(name)
            return 0
        run_aot(
            args.out,
            args.arch,
            dtypes=args.dtype,
            head_dims=args.head_dim,
            ptx_archs=ptx,
            jobs=args.jobs,
            cache_dir=args.cache_dir,
            strict_version=args.strict_triton_version,
        )
    except ImportError as err:
        print(
            f"aot: error: Triton is required for the AOT step ({err}); pip install 'triton=={PINNED_TRITON}'",
            file=sys.stderr,
        )
        return 2
    except EdgeBiformerError as err:
        print(f"aot: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
