#!/usr/bin/env python3
"""Benchmark, GPU check and tile sweep of the fused routed-attention kernel (``edge_biformer.kernels``).

Benchmark (CUDA): the fused Triton kernel against the official BiFormer attention core (expand +
gather of K/V, matmul, softmax, matmul; eager and ``torch.compile``) on the BRA stages of BiFormer-T/S
and -B at 224x224 and on the dense-prediction stages (512x512, n_win 8; 800x1344, n_win 16), fp16,
largest batch first. Every call is timed by replaying a CUDA graph of many calls over rotating input
copies (several times the L2, so each call reads from DRAM), or by a loop of many calls where a call
cannot be captured. Each row is appended to ``--jsonl`` as soon as it is measured::

    python scripts/bench_kernel.py --out docs/benchmarks.md --jsonl bench.jsonl

GPU check (CUDA): the JIT kernel and the AOT cubins (compiled for this GPU by
``python -m edge_biformer.kernels.aot``, built with the C launcher and called through ctypes) against
the float64 reference of the op contract, outputs filled with NaN first, fp16 and fp32, every stage
shape and the contract's odd shapes; ``--big`` adds one batch whose image offsets pass 2**31 elements::

    python scripts/bench_kernel.py --check --big --json check.json

Tile sweep (CUDA): a bounded set of alternative tiles per stage shape (``num_warps`` 1-4,
``num_stages`` 1-2, ``BLOCK_N``, heads per tile), each checked against the reference, timed like the
benchmark::

    python scripts/bench_kernel.py --tune --tune-max 12

CPU (no GPU; Triton's interpreter, tiny shapes, the mock CUDA driver for the AOT launcher; times are
not measurements): ``--device cpu`` with ``--smoke``, ``--check`` or ``--tune``, or alone for the
benchmark's row format.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from edge_biformer.kernels import official_bra_core, routed_attention, routed_attention_reference  # noqa: E402
from edge_biformer.kernels.markdown import replace_section, table_head  # noqa: E402
from edge_biformer.kernels.shapes import MODELS, TASKS, StageShape, stage_shapes  # noqa: E402

#: Tiny stand-ins of the three stages (n_win 2: 4x4, 2x2 and 1x1 regions) for CPU runs.
TINY = [
    StageShape("tiny", "cpu", 1, 8, 8, 32, 1, 2, 1),
    StageShape("tiny", "cpu", 2, 4, 4, 64, 2, 2, 2),
    StageShape("tiny", "cpu", 3, 2, 2, 64, 2, 2, 4),
]


def make_inputs(shape: StageShape, batch: int, device: str, dtype: torch.dtype, seed: int = 0):
    """q, k, v and a TopK routing of their region means, like the official router."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    h, w, c, s = shape.h, shape.w, shape.channels, shape.n_win
    q, k, v = (torch.randn(batch, h, w, c, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    rh, rw = shape.region
    q_win = q.float().reshape(batch, s, rh, s, rw, c).mean((2, 4)).reshape(batch, s * s, c)
    k_win = k.float().reshape(batch, s, rh, s, rw, c).mean((2, 4)).reshape(batch, s * s, c)
    logits = (q_win * shape.scale) @ k_win.transpose(-1, -2)
    r_idx = torch.topk(logits, k=shape.topk, dim=-1).indices.to(torch.int32).contiguous()
    return q, k, v, r_idx


def within_contract(o: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> tuple[bool, float]:
    """The op contract's verdict (NaN fails) and the measure it judged (max abs fp32, max rel fp16)."""
    from edge_biformer.ops.bra import CONTRACT

    c = CONTRACT.within_contract(o.double().cpu(), ref.cpu(), dtype)
    return c.passed, c.max_abs_diff if "max_abs" in c.limits else c.max_rel_diff


class Rows:
    """Result rows: appended to a JSON-lines file (flushed) as soon as each is measured."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        if self.path:
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------

#: Calls per timed CUDA graph / loop, and timed repetitions (the median is reported).
CALLS, REPEATS = 20, 7


def _timed_events(run: Callable[[], None], calls: int) -> float:
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(1e3 * start.elapsed_time(end) / calls)
    return statistics.median(times)


def time_call(fn: Callable[..., object], arg_sets: Sequence[tuple], device: str) -> tuple[float, str]:
    """Microseconds per call of ``fn(*args)`` over the rotating ``arg_sets``, and how it was timed."""
    if device == "cpu":
        t0 = time.perf_counter()
        fn(*arg_sets[0])
        return 1e6 * (time.perf_counter() - t0), "cpu, one call (not a measurement)"
    for args in arg_sets[:3]:
        fn(*args)
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(CALLS):  # warm the capture stream (allocator, lazy init)
                fn(*arg_sets[i % len(arg_sets)])
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            for i in range(CALLS):
                fn(*arg_sets[i % len(arg_sets)])
        graph.replay()
        torch.cuda.synchronize()
        us = _timed_events(graph.replay, CALLS)
        del graph
        return us, f"CUDA graph of {CALLS} calls"
    except RuntimeError as err:  # not capturable (a host sync, a CPU fallback): time a call loop
        torch.cuda.synchronize()
        note = str(err).splitlines()[0][:80]

    def loop() -> None:
        for i in range(CALLS):
            fn(*arg_sets[i % len(arg_sets)])

    return _timed_events(loop, CALLS), f"loop of {CALLS} calls (graph capture failed: {note})"


def rotating_copies(inputs: tuple, device: str) -> list[tuple]:
    """``inputs`` plus clones, enough that one pass over them is 3x the L2 (or 1 on the CPU)."""
    if device == "cpu":
        return [inputs]
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 * 2**20)
    nbytes = sum(t.numel() * t.element_size() for t in inputs)
    copies = min(64, max(1, math.ceil(3 * l2 / nbytes)))
    return [inputs] + [tuple(t.clone() for t in inputs) for _ in range(copies - 1)]


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth (read + write) in GB/s: the practical DRAM ceiling."""
    src = torch.empty(256 * 2**20, dtype=torch.int32, device="cuda")  # 1 GiB, far above any L2
    dst = torch.empty_like(src)
    us = _timed_events(lambda: dst.copy_(src), 1)
    return 2 * src.numel() * 4 / (us * 1e-6) / 1e9


def nominal_bandwidth_gbs() -> float | None:
    """The DRAM's nominal bandwidth from the device properties (memory clock x bus width), if known."""
    props = torch.cuda.get_device_properties(0)
    clock = getattr(props, "memory_clock_rate", None)  # kHz
    bus = getattr(props, "memory_bus_width", None)  # bits
    if not clock or not bus:
        return None
    return 2 * clock * 1e3 * bus / 8 / 1e9


def peak_extra_mib(fn: Callable[[], object], device: str) -> float | None:
    """Peak device memory allocated during one call above what was allocated before it (MiB)."""
    if device == "cpu":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / 2**20


def nan_filled_like(o: torch.Tensor) -> torch.Tensor:
    """An output buffer full of NaN: a launch that writes nothing cannot pass on stale memory."""
    return torch.full_like(o, float("nan"))


# --------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------


def compiled_official() -> Callable[..., torch.Tensor]:
    """``torch.compile`` of the official core that recompiles for every benchmarked shape: the
    recompile limits are raised and hitting one is an error, never a silent eager fallback."""
    import torch._dynamo as dynamo

    for name in ("recompile_limit", "accumulated_recompile_limit", "cache_size_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, 1024)
    for name in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, True)
    return torch.compile(official_bra_core, dynamic=False)


def bench_shapes(args: argparse.Namespace) -> list[tuple[StageShape, int]]:
    """(shape, batch) pairs, largest batch first."""
    if args.device == "cpu":
        return [(sh, 1) for sh in TINY]
    out = []
    for batch in sorted(args.batch, reverse=True):
        for sh in stage_shapes(args.tasks, args.models):
            if sh.task != "cls224" and batch > args.dense_max_batch:
                continue
            out.append((sh, batch))
    return out


def run_benchmark(
    args: argparse.Namespace, rows: Rows, copy_gbs: float | None, nominal: float | None
) -> None:
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    compiled = None if args.no_compile or args.device == "cpu" else compiled_official()
    for sh, batch in bench_shapes(args):
        base = dict(model=sh.model, task=sh.task, stage=sh.stage, batch=batch, dtype=args.dtype)
        base.update(region="x".join(map(str, sh.region)), topk=sh.topk, heads=sh.heads, channels=sh.channels)
        try:
            inputs = make_inputs(sh, batch, args.device, dtype)
            ref = routed_attention_reference(*inputs, num_heads=sh.heads, scale=sh.scale)
            copies = rotating_copies(inputs, args.device)
        except RuntimeError as err:  # e.g. out of memory for this shape: record it and go on
            rows.add({**base, "impl": "inputs", "error": f"{type(err).__name__}: {str(err)[:300]}"})
            continue
        moved = sh.compulsory_bytes(batch, inputs[0].element_size())
        kw = dict(num_heads=sh.heads, scale=sh.scale)
        impls: dict[str, Callable[..., object]] = {
            "fused (Triton)": lambda q, k, v, r, kw=kw: routed_attention(q, k, v, r, **kw),
            "official eager": lambda q, k, v, r, kw=kw: official_bra_core(q, k, v, r, **kw),
        }
        if compiled is not None:
            impls["official torch.compile"] = lambda q, k, v, r, kw=kw: compiled(q, k, v, r, **kw)
        fused_us = None
        for name, fn in impls.items():
            row = {**base, "impl": name}
            try:
                out = fn(*inputs)  # also compiles / JITs
                if args.device == "cuda":
                    torch.cuda.synchronize()
                ok, err = within_contract(out, ref, dtype)
                del out
                us, how = time_call(fn, copies, args.device)
                gbs = moved / (us * 1e-6) / 1e9
                row.update(us=round(us, 2), method=how, gbs=round(gbs, 1), ok=ok, err=err)
                row["pct_copy"] = round(100 * gbs / copy_gbs, 1) if copy_gbs else None
                row["pct_nominal"] = round(100 * gbs / nominal, 1) if nominal else None
                row["peak_mib"] = peak_extra_mib(lambda fn=fn, a=inputs: fn(*a), args.device)
                row["moved_mib"] = round(moved / 2**20, 2)
                row["gathered_mib"] = round(sh.gathered_bytes(batch, inputs[0].element_size()) / 2**20, 2)
                if name.startswith("fused"):
                    fused_us = us
                if fused_us:
                    row["x_vs_fused"] = round(us / fused_us, 2)
            except (RuntimeError, ValueError, AssertionError) as err:
                row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                if args.device == "cuda":
                    torch.cuda.synchronize()
            rows.add(row)
        del inputs, ref, copies
        if args.device == "cuda":
            torch.cuda.empty_cache()


SECTION_HEADING = "## Routed-attention kernel"


def markdown_report(rows: list[dict], copy_gbs: float | None, nominal: float | None) -> str:
    import triton

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = f"{props.name} (sm_{props.major}{props.minor}), {props.total_memory / 2**30:.0f} GiB"
    else:
        gpu = "no GPU (CPU run: the times are not measurements)"
    lines = [
        SECTION_HEADING,
        "",
        f"GPU: {gpu}; torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}; "
        f"{platform.node() or 'host'}; {time.strftime('%Y-%m-%d')}.",
        "",
        "Bandwidth = compulsory bytes (q + k + v + r_idx read, o written) / time. `% copy` is the share of "
        + (f"the measured device-to-device copy bandwidth ({copy_gbs:.0f} GB/s)" if copy_gbs else "-")
        + "; `% nominal` the share of the DRAM's nominal bandwidth"
        + (
            f" ({nominal:.0f} GB/s, memory clock x bus width)."
            if nominal
            else " (not reported by this torch)."
        ),
        "Times: median per call of a CUDA graph of many calls (or a call loop, as the method column says)",
        "over input copies totalling 3x the L2. Peak = device memory allocated during one call above its",
        "inputs (the output included). `x fused` = this row's time / the fused kernel's. `ok`: within the",
        "op contract's tolerance against a float64 reference.",
        "",
        *table_head(
            "model|task|stage:|region|topk:|batch:|implementation|time (us):|GB/s:|% copy:|% nominal:|"
            "peak (MiB):|x fused:|ok|method"
        ),
    ]

    def cell(r: dict, key: str, fmt: str = "{}") -> str:
        return "-" if r.get(key) is None else fmt.format(r[key])

    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['task']} | {r['stage']} | {r.get('region', '')} | "
                f"{r.get('topk', '')} | {r['batch']} | {r['impl']} | error: {r['error'][:80]} | | | | | | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['task']} | {r['stage']} | {r['region']} | {r['topk']} | {r['batch']} | "
            f"{r['impl']} | {r['us']:.1f} | {r['gbs']:.0f} | {cell(r, 'pct_copy', '{:.0f}%')} | "
            f"{cell(r, 'pct_nominal', '{:.0f}%')} | {cell(r, 'peak_mib', '{:.1f}')} | "
            f"{cell(r, 'x_vs_fused', '{:.2f}x')} | {'yes' if r['ok'] else 'NO'} | {r['method']} |"
        )
    lines += ["", f"Command: `python scripts/bench_kernel.py {' '.join(sys.argv[1:])}`", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# GPU check: JIT and AOT launcher against the reference
# --------------------------------------------------------------------------------------------------

CHECK_CASES = [  # (n, S, (hq, wq), (hk, wk), c_qk, c_v, heads, topk): odd shapes of the contract
    (1, 2, (3, 5), (3, 5), 48, 80, 2, 3),
    (2, 4, (2, 2), (4, 3), 32, 32, 1, 5),
    (1, 4, (4, 4), (4, 4), 96, 96, 1, 2),
    (1, 1, (16, 16), (16, 16), 128, 128, 1, 1),
    (2, 8, (2, 1), (1, 2), 64, 64, 1, 64),
    (1, 7, (1, 1), (1, 1), 96, 96, 3, 49),
    (1, 3, (5, 5), (5, 5), 24, 24, 3, 4),
]


def _case_inputs(case, dtype: torch.dtype, device: str, seed: int):
    n, s, (hq, wq), (hk, wk), c_qk, c_v, _, topk = case
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, s * hq, s * wq, c_qk, generator=gen).to(device=device, dtype=dtype)
    k = torch.randn(n, s * hk, s * wk, c_qk, generator=gen).to(device=device, dtype=dtype)
    v = torch.randn(n, s * hk, s * wk, c_v, generator=gen).to(device=device, dtype=dtype)
    r_idx = torch.randint(0, s * s, (n, s * s, topk), generator=gen, dtype=torch.int32).to(device)
    return q, k, v, r_idx


def check_cases(args: argparse.Namespace) -> list[tuple[str, tuple, int, float]]:
    """(name, inputs-factory arguments, heads, scale) of every checked call."""
    out = []
    shapes = TINY if args.device == "cpu" else stage_shapes(args.tasks, args.models)
    for sh in shapes:
        out.append((sh.name, ("stage", sh, 1 if sh.task != "cls224" else 2), sh.heads, sh.scale))
    cases = CHECK_CASES[:2] if args.device == "cpu" else CHECK_CASES
    for i, case in enumerate(cases):
        out.append((f"case {case}", ("case", case, i), case[6], case[4] ** -0.5))
    return out


def _inputs_for(spec: tuple, dtype: torch.dtype, device: str):
    kind, what, n = spec
    if kind == "stage":
        return make_inputs(what, n, device, dtype)
    return _case_inputs(what, dtype, device, seed=n)


class _Aot:
    """The AOT cubins of this GPU through the C launcher (ctypes), or on the CPU through the mock
    CUDA driver (the launch is recorded, nothing runs)."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        from edge_biformer.kernels.aot import run_aot
        from edge_biformer.kernels.capi import Launcher, build_launcher

        self.mock = args.device == "cpu"
        if self.mock:
            sm = 90
        else:
            major, minor = torch.cuda.get_device_capability()
            sm = major * 10 + minor
        gen = Path(args.aot_dir) if args.aot_dir else tmp / "aot"
        if not args.aot_dir:
            dtypes = ["fp16", "fp32"]
            run_aot(gen, [sm], dtypes=dtypes, jobs=args.jobs or os.cpu_count() or 1)
        extra = [REPO / "plugins" / "tests" / "mock_cuda_driver.c"] if self.mock else None
        self.launcher = Launcher(
            build_launcher(gen, tmp / "libbra.so", link_cuda=not self.mock, extra_sources=extra)
        )
        lib = self.launcher.lib
        if self.mock:
            manifest = json.loads((gen / "manifest.json").read_text())
            codes = {"ptr": "p", "*i32": "p", "i32": "i", "fp32": "f"}
            layout = "".join(codes[p["type"]] for p in manifest["params"]).encode()
            lib.mock_cuda_reset()
            lib.mock_cuda_set_device(9, 0, 232448)
            lib.mock_cuda_set_param_layout(layout)
        else:
            torch.zeros(1, device="cuda")  # the primary context is current on this thread
        status, self.module = self.launcher.load()
        if status != 0:
            raise RuntimeError(
                f"eb_bra_module_load: {self.launcher.status_string(status)} "
                f"(CUresult {self.launcher.last_cuda_error()})"
            )
        self.arch = self.launcher.module_arch(self.module)

    def run(self, q, k, v, r_idx, heads: int, scale: float, o: torch.Tensor) -> tuple[int, str | None]:
        n, hq, wq, c_qk = q.shape
        p = self.launcher.params(
            batch=n, hq=hq, wq=wq, hk=k.shape[1], wk=k.shape[2], c_qk=c_qk, c_v=v.shape[3],
            n_win=math.isqrt(r_idx.shape[1]), num_heads=heads, topk=r_idx.shape[2], scale=scale,
            dtype="fp16" if q.dtype == torch.float16 else "fp32",
        )  # fmt: skip
        stream = 0 if self.mock else torch.cuda.current_stream().cuda_stream
        ptrs = (q.data_ptr(), k.data_ptr(), v.data_ptr(), r_idx.data_ptr(), o.data_ptr())
        aligned = all(x % 16 == 0 for x in ptrs[:3] + ptrs[4:])
        status = self.launcher.launch(self.module, stream, p, ptrs)
        if not self.mock:
            torch.cuda.synchronize()
        return status, self.launcher.select_variant(p, aligned)

    def close(self) -> None:
        self.launcher.unload(self.module)


def run_check(args: argparse.Namespace, rows: Rows) -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="eb-check-") as tmp:
        aot = None if args.no_aot else _Aot(args, Path(tmp))
        if aot:
            print(
                f"AOT module: {'PTX' if aot.arch[1] else 'cubin'} for sm_{aot.arch[0]}"
                + (" (mock driver: launches recorded, nothing runs)" if aot.mock else ""),
                flush=True,
            )
        for dtype in (torch.float16, torch.float32):
            for name, spec, heads, scale in check_cases(args):
                row: dict[str, Any] = dict(check=name, dtype=str(dtype).split(".")[-1])
                try:
                    q, k, v, r_idx = _inputs_for(spec, dtype, args.device)
                    ref = routed_attention_reference(q, k, v, r_idx, num_heads=heads, scale=scale)
                    o_jit = routed_attention(
                        q, k, v, r_idx, num_heads=heads, scale=scale, validate_indices=True
                    )
                    row["jit_ok"], row["jit_err"] = within_contract(o_jit, ref, dtype)
                    if aot:
                        o_aot = nan_filled_like(o_jit)
                        status, row["variant"] = aot.run(q, k, v, r_idx, heads, scale, o_aot)
                        row["aot_status"] = aot.launcher.status_string(status)
                        if aot.mock:
                            row["aot_ok"] = status == 0  # the mock only records the launch
                        else:
                            row["aot_ok"], row["aot_err"] = (
                                within_contract(o_aot, ref, dtype) if status == 0 else (False, float("nan"))
                            )
                except (RuntimeError, ValueError) as err:
                    row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
                failures += int(not row.get("jit_ok", False))
                failures += int(aot is not None and not row.get("aot_ok", False))
                rows.add(row)
        if args.big:
            failures += check_big(args, rows, aot)
        if aot:
            aot.close()
    print("RESULT check:", "all passed" if failures == 0 else f"{failures} failures", flush=True)
    return 1 if failures else 0


def check_big(args: argparse.Namespace, rows: Rows, aot: _Aot | None) -> int:
    """BiFormer-T stage 3 in fp16 with a batch whose image offsets pass 2**31 elements (int64 bases)."""
    sh = TINY[2] if args.device == "cpu" else stage_shapes(["cls224"], ["T/S"])[2]
    per_image = sh.h * sh.w * sh.channels
    n = 3 if args.device == "cpu" else 2**31 // per_image + 3
    failures = 0
    row: dict[str, Any] = dict(
        check=f"big batch {n}: last image at element {(n - 1) * per_image}", dtype="float16"
    )
    try:
        q, k, v, r_idx = make_inputs(sh, 1, args.device, torch.float16)
        q, k, v, r_idx = (t.expand(n, *t.shape[1:]).contiguous() for t in (q, k, v, r_idx))
        o = routed_attention(q, k, v, r_idx, num_heads=sh.heads, scale=sh.scale)
        o_aot = nan_filled_like(o) if aot else None
        if aot:
            status, row["variant"] = aot.run(q, k, v, r_idx, sh.heads, sh.scale, o_aot)
            row["aot_status"] = aot.launcher.status_string(status)
        ref = routed_attention_reference(q[:1], k[:1], v[:1], r_idx[:1], num_heads=sh.heads, scale=sh.scale)
        for i in (0, n - 2, n - 1):  # every image is the same one: each must equal the reference
            ok, err = within_contract(o[i : i + 1], ref, torch.float16)
            row[f"jit_image_{i}"] = ok
            failures += not ok
            if aot and not aot.mock:
                ok, err = within_contract(o_aot[i : i + 1], ref, torch.float16)
                row[f"aot_image_{i}"] = ok
                failures += not ok
    except (RuntimeError, ValueError) as err:
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
        failures += 1
    rows.add(row)
    return failures


# --------------------------------------------------------------------------------------------------
# Tile sweep
# --------------------------------------------------------------------------------------------------


def tune_candidates(plan, limit: int) -> list:
    """The policy's variant first, then alternatives one step away (``num_warps`` 1/2/4,
    ``num_stages`` 1/2, ``BLOCK_N`` halved or doubled, heads per tile 1..4), at most ``limit``."""
    v = plan.variant
    seen = {v}
    out = [v]
    warps = sorted({1, 2, 4} | {v.num_warps})
    blocks_n = sorted({max(16, v.block_n // 2), v.block_n, min(128, v.block_n * 2)})
    heads = sorted({1, v.heads_per_tile} | ({2, 4} if plan.hq * plan.wq <= 8 else set()))
    for w in warps:
        for s in (1, 2):
            for bn in blocks_n:
                for g in heads:
                    if g * v.block_d > 128 or v.block_m // g < 1:
                        continue
                    alt = dataclasses.replace(v, num_warps=w, num_stages=s, block_n=bn, heads_per_tile=g)
                    if alt not in seen:
                        seen.add(alt)
                        out.append(alt)

    # nearest first: fewest changed fields
    def distance(x) -> int:
        return sum(
            getattr(x, f) != getattr(v, f) for f in ("num_warps", "num_stages", "block_n", "heads_per_tile")
        )

    return sorted(out, key=distance)[:limit]


def _launch_variant(plan, inputs, o, device: str) -> None:
    from edge_biformer.kernels.routed import _launch

    _launch(plan, *inputs, o, interpret=device == "cpu")


def run_tune(args: argparse.Namespace, rows: Rows) -> int:
    from edge_biformer.kernels.launch import UnsupportedError, plan_launch
    from edge_biformer.kernels.routed import plan_for

    try:
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import OutOfResources
    except ImportError:  # older Triton layouts
        CompilationError = OutOfResources = RuntimeError

    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    shapes = TINY if args.device == "cpu" else stage_shapes(["cls224"], args.models)
    batch = 1 if args.device == "cpu" else args.tune_batch
    bad = 0
    for sh in shapes:
        inputs = make_inputs(sh, batch, args.device, dtype)
        ref = routed_attention_reference(*inputs, num_heads=sh.heads, scale=sh.scale)
        o = torch.empty((*inputs[0].shape[:3], sh.channels), dtype=dtype, device=args.device)
        base = plan_for(*inputs, o, num_heads=sh.heads, scale=sh.scale)
        copies = [(*c, torch.empty_like(o)) for c in rotating_copies(inputs, args.device)]
        results = []
        for var in tune_candidates(base, args.tune_max):
            try:
                pointers = (inputs[0].data_ptr(), inputs[1].data_ptr(), inputs[2].data_ptr(), o.data_ptr())
                plan = plan_launch(
                    sh.geometry(batch), args.dtype, sh.scale, base.strides, pointers, variant=var
                )
                out = nan_filled_like(o)
                _launch_variant(plan, inputs, out, args.device)
                ok, err = within_contract(out, ref, dtype)
                if not ok:
                    bad += 1
                    rows.add(dict(tune=sh.name, variant=var.name, stages=var.num_stages, ok=False, err=err))
                    continue
                us, how = time_call(
                    lambda q, k, v, r, out, plan=plan: _launch_variant(plan, (q, k, v, r), out, args.device),
                    copies, args.device,
                )  # fmt: skip
                row = dict(tune=sh.name, batch=batch, variant=var.name, stages=var.num_stages, ok=True,
                           err=err, us=round(us, 2), method=how, policy=var == base.variant)  # fmt: skip
                results.append(row)
                rows.add(row)
            except (CompilationError, OutOfResources, UnsupportedError, RuntimeError, ValueError) as err:
                rows.add(dict(tune=sh.name, variant=var.name, stages=var.num_stages,
                              error=f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"))  # fmt: skip
        results.sort(key=lambda r: r["us"])
        print(f"{sh.name} batch {batch}: policy {base.variant.name}; fastest:", flush=True)
        for r in results[:5]:
            print(f"  {r['us']:9.1f} us  {r['variant']} num_stages={r['stages']}", flush=True)
    print(
        "RESULT tune:", "all outputs within the contract" if bad == 0 else f"{bad} configs FAILED the check"
    )
    return 1 if bad else 0


# --------------------------------------------------------------------------------------------------
# CPU smoke run
# --------------------------------------------------------------------------------------------------


def run_smoke() -> int:
    """Tiny shapes through the interpreted kernel and the official core on the CPU."""
    failures = 0
    for sh in (TINY[0], TINY[2]):
        for dtype in (torch.float32, torch.float16):
            q, k, v, r_idx = make_inputs(sh, 1, "cpu", dtype)
            kw = dict(num_heads=sh.heads, scale=sh.scale)
            ref = routed_attention_reference(q, k, v, r_idx, **kw)
            t0 = time.perf_counter()
            fused = routed_attention(q, k, v, r_idx, **kw)
            t1 = time.perf_counter()
            official = official_bra_core(q.float(), k.float(), v.float(), r_idx, **kw)
            t2 = time.perf_counter()
            ok_f, e_f = within_contract(fused, ref, dtype)
            ok_o, e_o = within_contract(official.to(dtype), ref, dtype)
            print(
                f"{sh.name} {str(dtype).split('.')[-1]}: fused (interpreter) {1e3 * (t1 - t0):8.1f} ms "
                f"err {e_f:.1e} {'ok' if ok_f else 'FAIL'}; official eager {1e3 * (t2 - t1):6.1f} ms "
                f"err {e_o:.1e} {'ok' if ok_o else 'FAIL'}"
            )
            failures += (not ok_f) + (not ok_o)
    print("smoke:", "ok" if failures == 0 else f"{failures} failures")
    return 1 if failures else 0


def run_ncu_target(args: argparse.Namespace) -> int:
    """The three BiFormer-T/S stages at the largest batch, two calls each: what Nsight Compute profiles."""
    shapes = TINY if args.device == "cpu" else stage_shapes(["cls224"], ["T/S"])
    batch = 1 if args.device == "cpu" else max(args.batch)
    for sh in shapes:
        inputs = make_inputs(sh, batch, args.device, torch.float16)
        for _ in range(2):
            routed_attention(*inputs, num_heads=sh.heads, scale=sh.scale)
        if args.device == "cuda":
            torch.cuda.synchronize()
    print(f"RESULT ncu target: {len(shapes)} stages x 2 calls at batch {batch}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (with --device cpu)")
    p.add_argument("--check", action="store_true", help="JIT + AOT launcher against the reference")
    p.add_argument("--big", action="store_true", help="with --check: a batch past 2**31 elements (~17 GB)")
    p.add_argument("--no-aot", action="store_true", help="with --check: the JIT kernel only")
    p.add_argument("--tune", action="store_true", help="time alternative tiles (checked) per stage shape")
    p.add_argument("--tune-max", type=int, default=12, help="tiles tried per shape (policy's first)")
    p.add_argument("--tune-batch", type=int, default=64)
    p.add_argument("--ncu-target", action="store_true", help="run each BiFormer-T stage twice (for ncu)")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--batch", type=int, nargs="+", default=[64, 8, 1])
    p.add_argument(
        "--dense-max-batch", type=int, default=8, help="largest batch of the dense-prediction shapes"
    )
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument(
        "--aot-dir", help="pre-generated AOT directory for --check (default: compile for this GPU)"
    )
    p.add_argument("--jobs", type=int, default=None, help="AOT compiler processes for --check")
    p.add_argument("--out", type=Path, help="write the benchmark as Markdown (e.g. docs/benchmarks.md)")
    p.add_argument("--jsonl", type=Path, help="append every result row to this JSON-lines file as measured")
    p.add_argument("--json", type=Path, help="write all result rows as one JSON file at the end")
    args = p.parse_args(argv)

    if args.device == "cpu" and args.smoke:
        return run_smoke()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "bench_kernel: no CUDA GPU visible. Run this on a GPU machine, or use "
            "`--device cpu --smoke` for the CPU smoke run.",
            file=sys.stderr,
        )
        return 2
    rows = Rows(args.jsonl)
    status = 0
    if args.ncu_target:
        status = run_ncu_target(args)
    elif args.check:
        status = run_check(args, rows)
    elif args.tune:
        status = run_tune(args, rows)
    else:
        copy_gbs = copy_bandwidth_gbs() if args.device == "cuda" else None
        nominal = nominal_bandwidth_gbs() if args.device == "cuda" else None
        if copy_gbs:
            print(
                f"copy bandwidth {copy_gbs:.0f} GB/s" + (f", nominal {nominal:.0f} GB/s" if nominal else "")
            )
        run_benchmark(args, rows, copy_gbs, nominal)
        report = markdown_report(rows.rows, copy_gbs, nominal)
        if args.out:
            replace_section(args.out, SECTION_HEADING, report)
            print(f"wrote the kernel section of {args.out}")
        else:
            print(report)
        print(f"RESULT bench: {len(rows.rows)} rows, {sum('error' in r for r in rows.rows)} errors")
    if args.json:
        args.json.write_text(json.dumps(rows.rows, indent=1) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
