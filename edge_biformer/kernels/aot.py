"""Ahead-of-time compilation of the routed-attention kernel for the TensorRT plugin.

``python -m edge_biformer.kernels.aot --arch 75 80 86 87 89 90 --out DIR`` compiles every variant of
:mod:`edge_biformer.kernels.config` (dtype x alignment x head-dim bucket x tiles) of the one kernel
source :mod:`edge_biformer.kernels.bra_triton` with ``triton.compile`` for each architecture
(no GPU needed) and writes into ``DIR``:

- ``cubin/sm_<arch>/<variant>.cubin`` and ``ptx/sm_<arch>/<variant>.ptx``: the raw images;
- the tables of the hand-written launcher ``plugins/bra/kernels/bra_launch.c`` (which implements
  ``plugins/bra/bra_launch.h`` with the CUDA driver API only), written by :mod:`.cgen`:
  ``bra_kernels.h`` (table sizes, kernel name), ``bra_kernels.c`` (variant table, image-set list,
  tile policy), ``bra_images_sm<arch>.c`` (cubins of one arch) and ``bra_images_ptx<arch>.c`` (PTX
  kept for JIT on newer GPUs), the images embedded as byte arrays;
- ``manifest.json``: Triton and ptxas versions, archs, the kernel signature, variants, the generated
  (``sources``) and static (``static_sources``) C sources and the SHA-256 of every image.

The output depends only on the kernel, policy and launcher sources, the Triton version (with its
bundled ptxas) and the options: no timestamps, no paths, sorted order, line info disabled. It needs
the repository checkout (the launcher lives in ``plugins/``). Compile the generated ``.c`` files
with the static ones, ``-I plugins/bra -I plugins/bra/kernels -I DIR -I $CUDA/include``, and link
``libcuda``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.kernels import cgen
from edge_biformer.kernels.compile import compile_all, elf_function_symbols
from edge_biformer.kernels.config import DTYPES, HEAD_DIM_BUCKETS, Variant, all_variants, policy
from edge_biformer.kernels.image import AotError, Image
from edge_biformer.utils import atomic_output, log, stage

#: The Triton release the checked-in expectations (and the plugin's release builds) use.
PINNED_TRITON = "3.9.0"
#: Oldest Triton whose ``triton.compile`` API the AOT step uses (ASTSource(constexprs=..., attrs=...)).
MIN_TRITON = (3, 3)
#: Default target architectures: Turing to Blackwell, Jetson Orin (87) and Thor (110) included.
DEFAULT_ARCHS: tuple[int, ...] = (75, 80, 86, 87, 89, 90, 100, 103, 110, 120, 121)


_KERNELS_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _KERNELS_DIR.parents[1]
#: The hand-written launcher compiled with the generated tables (paths relative to the repository).
STATIC_SOURCES: tuple[str, ...] = ("plugins/bra/kernels/bra_launch.c",)
#: Sources whose bytes determine the generated output or what it is compiled with (recorded in the
#: manifest): the kernel, the tile policy and the generator (beside this file), and the static
#: launcher and headers the tables are laid out for (relative to the repository).
_SOURCES = ("bra_triton.py", "config.py", "launch.py", "aot.py", "compile.py", "cgen.py", "image.py")
_STATIC_FILES = (*STATIC_SOURCES, "plugins/bra/kernels/bra_kernel_tables.h", "plugins/bra/bra_launch.h")


def sources_sha256() -> dict[str, str]:
    """SHA-256 of the kernel, policy and generator sources and of the static launcher files."""
    missing = [rel for rel in _STATIC_FILES if not (_REPO_ROOT / rel).is_file()]
    if missing:
        raise AotError(
            f"{_REPO_ROOT / missing[0]} not found: the AOT step writes the tables of the launcher in "
            f"plugins/bra/kernels and needs the repository checkout, not an installed package"
        )
    digests = {name: hashlib.sha256((_KERNELS_DIR / name).read_bytes()).hexdigest() for name in _SOURCES}
    for rel in _STATIC_FILES:
        digests[rel] = hashlib.sha256((_REPO_ROOT / rel).read_bytes()).hexdigest()
    return digests


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
    """File names of the generated C sources, in a stable order (compiled with :data:`STATIC_SOURCES`)."""
    return (
        [cgen.TABLES_SOURCE]
        + [cgen.images_source_name(a, False) for a in sorted(archs)]
        + [cgen.images_source_name(a, True) for a in sorted(ptx_archs)]
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
    sources_sha256()  # the launcher sources must be there too
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
            table = policy(tuple(dtypes), tuple(head_dims))
            manifest = _write_outputs(staging, variants, table, images, archs, ptx_list, ptxas)
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
    table: dict[tuple[str, bool, int, str], Variant],
    images: Sequence[Image],
    archs: Sequence[int],
    ptx_list: Sequence[int],
    ptxas: dict[str, str],
) -> dict[str, object]:
    """Write the images, the generated C and ``manifest.json`` into ``out``; return the manifest."""
    import triton

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
    sources = cgen.generate(
        variants=variants,
        policy=table,
        images=images,
        archs=archs,
        ptx_archs=ptx_list,
        n_hidden=images[0].n_hidden,
        header_comment=_header_comment(triton.__version__),
    )
    for name, text in sources.items():
        _write(out / name, text.encode())
    manifest = _manifest(variants, table, images, archs, ptx_list, ptxas, files, triton.__version__)
    _write(out / "manifest.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return manifest


def _header_comment(triton_version: str) -> str:
    return (
        "Generated by `python -m edge_biformer.kernels.aot` from edge_biformer/kernels/bra_triton.py "
        f"(sha256 {sources_sha256()['bra_triton.py'][:16]}) with Triton {triton_version}. Do not edit."
    )


def _manifest(
    variants: Sequence[Variant],
    table: dict[tuple[str, bool, int, str], Variant],
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
        "policy": [
            {"dtype": d, "aligned": a, "block_d": b, "region": r, "variant": v.name}
            for (d, a, b, r), v in sorted(table.items())
        ],
        "images": [
            {"variant": img.variant, "arch": img.arch, "shared": img.shared, "num_warps": img.num_warps}
            for img in images
        ],
        "files": files,
        "tables_format": cgen.TABLES_FORMAT,
        "sources": generated_sources(archs, ptx_archs),
        "static_sources": list(STATIC_SOURCES),
        "header": cgen.HEADER,
    }


#: What this tool writes into ``--out`` besides ``cubin/`` and ``ptx/``; ``bra_launch.c`` and
#: ``bra_images.h`` are the launcher and header that older versions generated.
_GENERATED_PATTERNS = (
    cgen.TABLES_SOURCE,
    cgen.HEADER,
    "bra_images_sm*.c",
    "bra_images_ptx*.c",
    "bra_launch.c",
    "bra_images.h",
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
        description="Compile the routed-attention kernel ahead of time (cubin + PTX + C launcher tables).",
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
        help="print the C sources this command would generate (one per line; the static launcher "
        "plugins/bra/kernels/bra_launch.c is compiled with them) and exit; compiles nothing",
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
