#!/usr/bin/env python3
"""Benchmark and GPU check of the fused routed-attention kernel (``edge_biformer.kernels``).

Benchmark (CUDA): the fused Triton kernel against the official BiFormer attention core
(expand + gather of K/V, matmul, softmax, matmul; eager and ``torch.compile``) on the BiFormer-T
stage shapes at 224x224, fp16, batch 1/8/64. Reports median time, achieved memory bandwidth
(compulsory bytes: q + k + v + r_idx + o, over the time) as a share of the GPU's measured copy
bandwidth, and the peak extra device memory of one call::

    python scripts/bench_kernel.py --out docs/benchmarks.md

GPU check (CUDA): the JIT kernel and the AOT cubin (compiled for this GPU by
``python -m edge_biformer.kernels.aot``, built into a shared library with the generated C launcher
and called through ctypes) against the float64 reference of the op contract::

    python scripts/bench_kernel.py --check

Tile sweep (CUDA): time alternative tiles per stage shape, to retune ``config.TILES``::

    python scripts/bench_kernel.py --tune

CPU smoke run (no GPU; Triton's interpreter; tiny shapes; times are not meaningful)::

    python scripts/bench_kernel.py --device cpu --smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from edge_biformer.kernels import official_bra_core, routed_attention, routed_attention_reference  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    """One BRA call: the NHWC maps, heads and routing of a BiFormer stage."""

    name: str
    batch: int
    size: int  # H = W of q, k, v
    channels: int  # Cqk = Cv
    heads: int
    n_win: int
    topk: int

    @property
    def scale(self) -> float:
        return self.channels**-0.5


def biformer_tiny_shapes(batches: list[int], stages: list[int]) -> list[Shape]:
    """BiFormer-T at 224x224: (size, channels, heads, topk) of the three BRA stages."""
    table = {0: (56, 64, 2, 1), 1: (28, 128, 4, 4), 2: (14, 256, 8, 16)}
    return [Shape(f"stage{s}", b, *table[s][:3], 7, table[s][3]) for b in batches for s in stages]


def make_inputs(shape: Shape, device: str, dtype: torch.dtype, seed: int = 0):
    """q, k, v and a TopK routing of their region means, like the official router."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n, size, c, s = shape.batch, shape.size, shape.channels, shape.n_win
    q, k, v = (torch.randn(n, size, size, c, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    r = size // s
    q_win = q.float().reshape(n, s, r, s, r, c).mean((2, 4)).reshape(n, s * s, c)
    k_win = k.float().reshape(n, s, r, s, r, c).mean((2, 4)).reshape(n, s * s, c)
    logits = (q_win * shape.scale) @ k_win.transpose(-1, -2)
    r_idx = torch.topk(logits, k=shape.topk, dim=-1).indices.to(torch.int32).contiguous()
    return q, k, v, r_idx


def compulsory_bytes(q, k, v, r_idx) -> int:
    """Bytes a call must move at least once: read q, k, v, r_idx; write o (same size as v here)."""
    return sum(t.numel() * t.element_size() for t in (q, k, v, r_idx)) + v.numel() * v.element_size()


def gathered_bytes(shape: Shape, elem: int) -> int:
    """Size of the official code's gathered K/V tensor [N, S*S, topk, hk*wk, Cqk+Cv]."""
    tokens = (shape.size // shape.n_win) ** 2
    return shape.batch * shape.n_win**2 * shape.topk * tokens * 2 * shape.channels * elem


# --------------------------------------------------------------------------------------------------
# CUDA timing helpers
# --------------------------------------------------------------------------------------------------


def cuda_time_ms(fn: Callable[[], object], warmup: int, iters: int, flush_l2: bool = True) -> float:
    """Median time of ``fn`` in ms over ``iters`` CUDA-event-timed runs (L2 flushed before each)."""
    flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device="cuda") if flush_l2 else None
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if flush is not None:
            flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth (read + write) in GB/s: the practical DRAM ceiling."""
    src = torch.empty(128 * 2**20, dtype=torch.int32, device="cuda")  # 512 MiB, far above any L2
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), warmup=3, iters=10, flush_l2=False)
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def theoretical_bandwidth_gbs() -> float | None:
    """Peak DRAM bandwidth from the device properties, where torch exposes them."""
    props = torch.cuda.get_device_properties(0)
    clock = getattr(props, "memory_clock_rate", None)  # kHz
    bus = getattr(props, "memory_bus_width", None)  # bits
    if not clock or not bus:
        return None
    return 2 * clock * 1e3 * bus / 8 / 1e9


def peak_extra_mib(fn: Callable[[], object]) -> float:
    """Peak device memory allocated during one call, above what was allocated before it (MiB)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


# --------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------


def run_benchmark(args: argparse.Namespace) -> list[dict]:
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    shapes = biformer_tiny_shapes(args.batch, args.stages)
    compiled = None if args.no_compile else torch.compile(official_bra_core, dynamic=False)
    rows = []
    for shape in shapes:
        q, k, v, r_idx = make_inputs(shape, "cuda", dtype)
        kw = dict(num_heads=shape.heads, scale=shape.scale)
        impls: dict[str, Callable[[], object]] = {
            "fused (Triton)": lambda q=q, k=k, v=v, r=r_idx, kw=kw: routed_attention(
                q, k, v, r, validate_indices=False, **kw
            ),
            "official eager": lambda q=q, k=k, v=v, r=r_idx, kw=kw: official_bra_core(q, k, v, r, **kw),
        }
        if compiled is not None:
            impls["official torch.compile"] = lambda q=q, k=k, v=v, r=r_idx, kw=kw: compiled(q, k, v, r, **kw)
        ref = routed_attention_reference(q, k, v, r_idx, **kw)
        moved = compulsory_bytes(q, k, v, r_idx)
        for name, fn in impls.items():
            out = fn()  # also compiles / JITs
            torch.cuda.synchronize()
            err = (out.double() - ref).abs().max().item() / ref.abs().max().item()
            ms = cuda_time_ms(fn, args.warmup, args.iters)
            rows.append(
                dict(
                    shape=shape.name,
                    batch=shape.batch,
                    impl=name,
                    ms=ms,
                    gbs=moved / (ms * 1e-3) / 1e9,
                    peak_mib=peak_extra_mib(fn),
                    rel_err=err,
                    moved_mib=moved / 2**20,
                    gathered_mib=gathered_bytes(shape, q.element_size()) / 2**20,
                )
            )
            print(
                f"{shape.name} b{shape.batch:<3d} {name:<24s} {ms * 1e3:9.1f} us  "
                f"{rows[-1]['gbs']:8.1f} GB/s  peak {rows[-1]['peak_mib']:9.1f} MiB  rel.err {err:.1e}",
                flush=True,
            )
        del q, k, v, r_idx, ref
        torch.cuda.empty_cache()
    return rows


SECTION_HEADING = "## Routed-attention kernel"


def write_section(path: Path, section: str) -> None:
    """Replace the kernel section of a Markdown file (from its heading to the next ``## ``), or append it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(SECTION_HEADING)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = text.find("\n## ", start + len(SECTION_HEADING))
        tail = text[end + 1 :] if end >= 0 else ""
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    path.write_text(text)


def markdown_report(
    rows: list[dict], copy_gbs: float, theo_gbs: float | None, args: argparse.Namespace
) -> str:
    import triton

    props = torch.cuda.get_device_properties(0)
    lines = [
        SECTION_HEADING,
        "",
        f"GPU: {props.name} (sm_{props.major}{props.minor}), {props.total_memory / 2**30:.0f} GiB; "
        f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}; "
        f"{platform.node() or 'host'}; {time.strftime('%Y-%m-%d')}.",
        "",
        f"Measured device copy bandwidth: {copy_gbs:.0f} GB/s"
        + (f" (theoretical DRAM peak {theo_gbs:.0f} GB/s)." if theo_gbs else "."),
        "",
        f"BiFormer-T stage shapes at 224x224, {args.dtype}, n_win 7; median of {args.iters} runs with the L2 "
        "cache flushed before each. Bandwidth = compulsory bytes (q + k + v + r_idx read, o written) / time; "
        "% copy = share of the measured copy bandwidth. Peak = device memory allocated during one call "
        "above the inputs (the output included). Speed-up = this row's time / the fused kernel's time.",
        "",
        "| shape | batch | implementation | time (us) | GB/s | % copy | peak (MiB) | speed-up | rel. err |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    fused = {(r["shape"], r["batch"]): r["ms"] for r in rows if r["impl"].startswith("fused")}
    for r in rows:
        speed = r["ms"] / fused[(r["shape"], r["batch"])]
        share = 100 * r["gbs"] / copy_gbs
        lines.append(
            f"| {r['shape']} | {r['batch']} | {r['impl']} | {r['ms'] * 1e3:.1f} | {r['gbs']:.0f} | "
            f"{share:.0f}% | {r['peak_mib']:.1f} | {speed:.2f}x | {r['rel_err']:.1e} |"
        )
    lines += ["", f"Command: `python scripts/bench_kernel.py {' '.join(sys.argv[1:])}`", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# GPU check: JIT and AOT cubin against the reference
# --------------------------------------------------------------------------------------------------

CHECK_CASES = [  # (n, S, (hq, wq), (hk, wk), c_qk, c_v, heads, topk)
    (2, 7, (8, 8), (8, 8), 64, 64, 2, 1),
    (2, 7, (4, 4), (4, 4), 128, 128, 4, 4),
    (2, 7, (2, 2), (2, 2), 256, 256, 8, 16),
    (1, 2, (3, 5), (3, 5), 48, 80, 2, 3),
    (2, 4, (2, 2), (4, 3), 32, 32, 1, 5),
    (1, 4, (4, 4), (4, 4), 96, 96, 1, 2),
    (1, 1, (16, 16), (16, 16), 128, 128, 1, 1),
    (2, 8, (2, 1), (1, 2), 64, 64, 1, 64),
]


def _case_inputs(case, dtype: torch.dtype, device: str, seed: int):
    n, s, (hq, wq), (hk, wk), c_qk, c_v, _, topk = case
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, s * hq, s * wq, c_qk, generator=gen).to(device=device, dtype=dtype)
    k = torch.randn(n, s * hk, s * wk, c_qk, generator=gen).to(device=device, dtype=dtype)
    v = torch.randn(n, s * hk, s * wk, c_v, generator=gen).to(device=device, dtype=dtype)
    r_idx = torch.randint(0, s * s, (n, s * s, topk), generator=gen, dtype=torch.int32).to(device)
    return q, k, v, r_idx


def _within_contract(o: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> tuple[bool, float]:
    """The op contract's verdict and the measure it judged (max abs for float32, max rel for float16)."""
    from edge_biformer.ops.bra import CONTRACT

    c = CONTRACT.within_contract(o.double(), ref, dtype)
    return c.passed, c.max_abs_diff if "max_abs" in c.limits else c.max_rel_diff


def run_check(args: argparse.Namespace) -> int:
    from edge_biformer.kernels.aot import run_aot
    from edge_biformer.kernels.capi import Launcher, build_launcher

    major, minor = torch.cuda.get_device_capability()
    sm = major * 10 + minor
    failures = 0
    with tempfile.TemporaryDirectory(prefix="eb-check-") as tmp:
        aot_dir = Path(args.aot_dir) if args.aot_dir else Path(tmp) / "aot"
        if not args.aot_dir:
            run_aot(aot_dir, [sm], jobs=args.jobs)
        launcher = Launcher(build_launcher(aot_dir, Path(tmp) / "libbra.so"))
        torch.cuda.init()
        torch.zeros(1, device="cuda")  # the primary context is current on this thread
        status, module = launcher.load()
        if status != 0:
            err = launcher.last_cuda_error()
            print(f"eb_bra_module_load: {launcher.status_string(status)} (CUresult {err})")
            return 1
        arch, is_ptx = launcher.module_arch(module)
        print(f"GPU sm_{sm}: AOT module loaded {'PTX' if is_ptx else 'cubin'} for sm_{arch}")
        stream = torch.cuda.current_stream().cuda_stream
        for dtype, dname in ((torch.float32, "fp32"), (torch.float16, "fp16")):
            for i, case in enumerate(CHECK_CASES):
                n, s, (hq, wq), (hk, wk), c_qk, c_v, heads, topk = case
                q, k, v, r_idx = _case_inputs(case, dtype, "cuda", seed=i)
                scale = c_qk**-0.5
                ref = routed_attention_reference(q, k, v, r_idx, num_heads=heads, scale=scale)
                o_jit = routed_attention(q, k, v, r_idx, num_heads=heads, scale=scale)
                o_aot = torch.empty_like(o_jit)
                p = launcher.params(
                    batch=n,
                    hq=s * hq,
                    wq=s * wq,
                    hk=s * hk,
                    wk=s * wk,
                    c_qk=c_qk,
                    c_v=c_v,
                    n_win=s,
                    num_heads=heads,
                    topk=topk,
                    scale=scale,
                    dtype=dname,
                )
                ptrs = (q.data_ptr(), k.data_ptr(), v.data_ptr(), r_idx.data_ptr(), o_aot.data_ptr())
                st = launcher.launch(module, stream, p, ptrs)
                torch.cuda.synchronize()
                ok_jit, e_jit = _within_contract(o_jit, ref, dtype)
                ok_aot, e_aot = (False, float("nan")) if st != 0 else _within_contract(o_aot, ref, dtype)
                variant = launcher.select_variant(p, True)
                print(
                    f"{dname} case {i} {case}: JIT {'ok' if ok_jit else 'FAIL'} {e_jit:.2e}  "
                    f"AOT[{variant}] {'ok' if ok_aot else 'FAIL'} {e_aot:.2e}"
                    + ("" if st == 0 else f" (status {launcher.status_string(st)})")
                )
                failures += (not ok_jit) + (not ok_aot)
        launcher.unload(module)
    print("GPU check:", "all passed" if failures == 0 else f"{failures} failures")
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------------
# Tile sweep
# --------------------------------------------------------------------------------------------------


def _launch_tile(args: tuple, grid: tuple[int], constexprs: dict[str, int], warps: int, stages: int) -> None:
    from edge_biformer.kernels.bra_triton import bra_fwd_kernel_jit

    bra_fwd_kernel_jit[grid](*args, **constexprs, num_warps=warps, num_stages=stages, enable_fp_fusion=True)


def run_tune(args: argparse.Namespace) -> int:
    from edge_biformer.kernels.routed import plan_for

    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    for shape in biformer_tiny_shapes(args.batch, args.stages):
        q, k, v, r_idx = make_inputs(shape, "cuda", dtype)
        o = torch.empty_like(q)
        plan = plan_for(q, k, v, r_idx, o, num_heads=shape.heads, scale=shape.scale)
        results = []
        for bm in (16, 32, 64, 128):
            for bn in (16, 32, 64, 128):
                for warps in (2, 4, 8):
                    for stages in (1, 2, 3):
                        n_mtiles = -(-(plan.hq * plan.wq) // bm)
                        grid = (shape.batch * shape.n_win**2 * n_mtiles * shape.heads,)
                        scalars = list(plan.scalar_args())
                        scalars[-2] = n_mtiles

                        fn = functools.partial(
                            _launch_tile,
                            (q, k, v, r_idx, o, *scalars),
                            grid,
                            dict(
                                BLOCK_M=bm,
                                BLOCK_N=bn,
                                BLOCK_DQK=plan.variant.block_d,
                                BLOCK_DV=plan.variant.block_d,
                            ),
                            warps,
                            stages,
                        )
                        try:
                            ms = cuda_time_ms(fn, 3, args.iters)
                        except Exception as err:  # out of resources for this tile
                            print(f"  skip m{bm} n{bn} w{warps} s{stages}: {type(err).__name__}")
                            continue
                        results.append((ms, bm, bn, warps, stages))
        results.sort()
        current = plan.variant
        print(f"{shape.name} b{shape.batch}: current {current.name} s{current.num_stages}")
        for ms, bm, bn, warps, stages in results[:5]:
            print(f"  {ms * 1e3:8.1f} us  BLOCK_M={bm} BLOCK_N={bn} num_warps={warps} num_stages={stages}")
    return 0


# --------------------------------------------------------------------------------------------------
# CPU smoke run
# --------------------------------------------------------------------------------------------------


def run_smoke(args: argparse.Namespace) -> int:
    """Tiny shapes through the interpreted kernel and the official core on the CPU."""
    shapes = [Shape("tiny-stage0", 1, 8, 32, 1, 2, 1), Shape("tiny-stage2", 1, 4, 64, 2, 2, 4)]
    failures = 0
    for shape in shapes:
        for dtype in (torch.float32, torch.float16):
            q, k, v, r_idx = make_inputs(shape, "cpu", dtype)
            kw = dict(num_heads=shape.heads, scale=shape.scale)
            ref = routed_attention_reference(q, k, v, r_idx, **kw)
            t0 = time.perf_counter()
            fused = routed_attention(q, k, v, r_idx, **kw)
            t1 = time.perf_counter()
            official = official_bra_core(q.float(), k.float(), v.float(), r_idx, **kw)
            t2 = time.perf_counter()
            ok_f, e_f = _within_contract(fused, ref, dtype)
            ok_o, e_o = _within_contract(official.to(dtype), ref, dtype)
            print(
                f"{shape.name} {str(dtype).split('.')[-1]}: fused (interpreter) {1e3 * (t1 - t0):8.1f} ms "
                f"err {e_f:.1e} {'ok' if ok_f else 'FAIL'}; official eager {1e3 * (t2 - t1):6.1f} ms "
                f"err {e_o:.1e} {'ok' if ok_o else 'FAIL'}"
            )
            failures += (not ok_f) + (not ok_o)
    print("smoke:", "ok" if failures == 0 else f"{failures} failures")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (with --device cpu)")
    p.add_argument("--check", action="store_true", help="JIT + AOT cubin against the reference on the GPU")
    p.add_argument("--tune", action="store_true", help="time alternative tiles on the GPU")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--stages", type=int, nargs="+", choices=[0, 1, 2], default=[0, 1, 2])
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument(
        "--aot-dir", help="pre-generated AOT directory for --check (default: compile for this GPU)"
    )
    p.add_argument("--jobs", type=int, default=None, help="AOT compiler processes for --check")
    p.add_argument("--out", type=Path, help="write the benchmark as Markdown (e.g. docs/benchmarks.md)")
    p.add_argument("--json", type=Path, help="write the raw benchmark rows as JSON")
    args = p.parse_args(argv)

    if args.device == "cpu":
        if not args.smoke:
            p.error("the CPU runs only the --smoke check (the interpreter is not a benchmark)")
        return run_smoke(args)
    if not torch.cuda.is_available():
        print(
            "bench_kernel: no CUDA GPU visible. Run this on a GPU machine, or use "
            "`--device cpu --smoke` for the CPU smoke run.",
            file=sys.stderr,
        )
        return 2
    if args.check:
        return run_check(args)
    if args.tune:
        return run_tune(args)
    copy_gbs = copy_bandwidth_gbs()
    theo = theoretical_bandwidth_gbs()
    print(f"copy bandwidth {copy_gbs:.0f} GB/s" + (f", theoretical {theo:.0f} GB/s" if theo else ""))
    rows = run_benchmark(args)
    if args.json:
        args.json.write_text(json.dumps(dict(copy_gbs=copy_gbs, theoretical_gbs=theo, rows=rows), indent=1))
    report = markdown_report(rows, copy_gbs, theo, args)
    if args.out:
        write_section(args.out, report)
        print(f"wrote the kernel section of {args.out}")
    else:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
