#!/usr/bin/env python3
"""Static cost report of the fused routed-attention kernel: runs on a CPU, no GPU needed.

Compiles every kernel variant with ``triton.compile`` for sm_90 (H200) and sm_87 (Jetson Orin),
reads registers, spills and shared memory (``cuobjdump``), disassembles the SASS (``nvdisasm``) and
counts the instructions one warp executes per program with the loop trip counts of each shape
(:mod:`edge_biformer.kernels.cost`). For the BiFormer-T/S/B stages at 224x224 and the dense
prediction shapes (512x512 with n_win 8, 800x1344 with n_win 16 and padding) it prints:

- per variant and arch: registers, spills, shared memory, occupancy, tensor-core instructions;
- per shape: the variant, programs per image, SASS instructions per warp and per program
  (loop-aware), tensor-core and integer-division instructions;
- a bytes model per image: compulsory (q, k, v, r_idx read, o written), what the fused kernel
  reads from L2 (routed K/V per query tile), and what the official gather implementation moves
  (eager: every ATen op of ``official_bra_core`` traced on meta tensors; torch.compile: a lower
  bound with the gathered K/V written and read once);
- the predicted time per stage and batch from a roofline (``max(bytes / bandwidth, issue time)``;
  H200: 4.3 TB/s copy bandwidth, Orin: 204.8 GB/s), with the speed-up over the official core.

Every number is a prediction of the model, not a measurement::

    python scripts/kernel_cost.py                          # tables on stdout
    python scripts/kernel_cost.py --out docs/benchmarks.md # replace its section there
    python scripts/kernel_cost.py --json cost.json         # raw numbers
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edge_biformer.kernels import cost  # noqa: E402
from edge_biformer.kernels.config import all_variants, policy  # noqa: E402
from edge_biformer.kernels.launch import plan_launch  # noqa: E402
from edge_biformer.kernels.markdown import replace_section, table_head  # noqa: E402
from edge_biformer.kernels.shapes import MODELS, TASKS, StageShape, stage_shapes  # noqa: E402

BATCHES = (1, 8, 64)
ARCHS = {90: "H200", 87: "Orin"}


def compulsory_bytes(sh: StageShape) -> int:
    """q, k, v read, o written, r_idx read: per image."""
    return sh.compulsory_bytes(1)


def fused_l2_bytes(sh: StageShape, plan, elem: int = 2) -> int:
    """What the fused kernel reads and writes through L2 per image: q and o once, r_idx, and for every
    query tile the routed K/V of its heads (``topk`` regions)."""
    rh, rw = sh.region
    m_tiles = getattr(plan, "n_mtiles", 1)
    kv = sh.n_win**2 * m_tiles * sh.topk * rh * rw * 2 * sh.channels * elem
    return 2 * sh.h * sh.w * sh.channels * elem + kv + sh.n_win**2 * sh.topk * 4


def official_bytes(sh: StageShape) -> tuple[int, int]:
    """(bytes, kernels) of one image through the official core, eager, traced op by op."""
    import torch

    from edge_biformer.kernels.reference import official_bra_core

    g = sh.geometry(1)
    q = torch.empty(1, g.hq, g.wq, g.c_qk, device="meta", dtype=torch.float16)
    r = torch.empty(1, sh.n_win**2, sh.topk, device="meta", dtype=torch.int32)
    traced = cost.aten_bytes(official_bra_core, q, q, q, r, num_heads=sh.heads, scale=sh.channels**-0.5)
    return traced.total, traced.kernels


def compiled_bytes(sh: StageShape) -> int:
    """A lower bound for torch.compile of the official core: everything fused except the gathered
    ``[S*S, topk, tokens, Cqk + Cv]`` K/V feeding the matmuls, written once and read once."""
    return sh.compulsory_bytes(1) + 2 * sh.gathered_bytes(1)


def loop_trips(plan) -> tuple[int, ...]:
    """Trip counts of the kernel's loops by nesting depth (outermost first)."""
    if hasattr(plan, "loop_trips"):
        return tuple(plan.loop_trips())
    keys = plan.topk * plan.hk * plan.wk
    return (-(-keys // plan.variant.block_n),)


def compile_images(variants, archs: list[int], cache_dir: str) -> dict[tuple[str, int], object]:
    from edge_biformer.kernels.compile import compile_all

    images, _ = compile_all(variants, archs, 1, cache_dir)
    return {(img.variant, img.arch): img for img in images}


def analyse(args: argparse.Namespace) -> dict:
    shapes = stage_shapes(args.tasks, args.models)
    plans = {}
    for sh in shapes:
        plans[sh] = plan_launch(sh.geometry(1), "fp16", sh.channels**-0.5, pointers=(256, 512, 768, 1024))
    variants = all_variants()
    if args.only_used:
        used = {p.variant.name for p in plans.values()}
        variants = [v for v in variants if v.name in used]
    archs = sorted(args.arch, reverse=True)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="eb-kernel-cost-")
    images = compile_images(variants, archs, cache_dir)

    tmp = Path(tempfile.mkdtemp(prefix="eb-kernel-cost-sass-"))
    classes: dict[str, list[str]] = {}
    for (_, _, _, region), v in policy().items():
        classes.setdefault(v.name, []).append(region)
    var_rows, sass = [], {}
    for v in variants:
        for arch in archs:
            img = images[(v.name, arch)]
            res = cost.resources(img.cubin, tmp)
            code = cost.disassemble(img.cubin, tmp)
            sass[(v.name, arch)] = code
            gpu = cost.GPUS[ARCHS[arch]]
            smem = img.shared + res.static_shared
            ctas = cost.occupancy(gpu, res.registers, smem, v.num_warps)
            ops = cost.walk(code, [1] * 4)
            row = dict(variant=v.name, arch=arch, region="/".join(classes.get(v.name, ["?"])))
            row.update(heads_per_tile=v.heads_per_tile, warps=v.num_warps, stages=v.num_stages)
            row.update(registers=res.registers, spills=res.spills, stack=res.stack, shared=smem)
            row.update(ctas_per_sm=ctas, warps_per_sm=ctas * v.num_warps)
            row.update(occupancy=ctas * v.num_warps / gpu.max_warps_per_sm, tensor_kind=_tensor_kind(code))
            row.update(tensor_per_trip=ops["tensor"], static_sass=code.static_count)
            var_rows.append(row)
    shape_rows = []
    for sh in shapes:
        plan = plans[sh]
        v = plan.variant
        trips = loop_trips(plan)
        off_bytes, off_kernels = official_bytes(sh)
        row = dict(
            model=sh.model,
            task=sh.task,
            stage=sh.stage,
            map=f"{sh.h}x{sh.w}",
            region=f"{sh.region[0]}x{sh.region[1]}",
            topk=sh.topk,
            heads=sh.heads,
            channels=sh.channels,
            variant=v.name,
            warps=v.num_warps,
            programs_per_image=plan.grid,
            trips=list(trips),
            compulsory=compulsory_bytes(sh),
            fused_l2=fused_l2_bytes(sh, plan),
            official_eager=off_bytes,
            official_kernels=off_kernels,
            official_compiled=compiled_bytes(sh),
            arch={},
        )
        for arch in archs:
            gpu = cost.GPUS[ARCHS[arch]]
            ops = cost.walk(sass[(v.name, arch)], trips)
            per_arch = dict(
                insns_per_warp=ops["total"],
                insns_per_program=ops["total"] * v.num_warps,
                tensor=ops["tensor"],
                int_div=ops["int_div"],
                barriers=ops["barrier"],
                ldg=ops["ldg"],
                predicted={},
            )
            for b in args.batch:
                fused = cost.roofline(gpu, row["compulsory"] * b, plan.grid * b, v.num_warps, ops["total"])
                eager = row["official_eager"] * b / (gpu.bandwidth_gbs * 1e9)
                comp = row["official_compiled"] * b / (gpu.bandwidth_gbs * 1e9)
                per_arch["predicted"][str(b)] = dict(
                    fused_us=fused.seconds * 1e6,
                    memory_us=fused.memory_s * 1e6,
                    issue_us=fused.issue_s * 1e6,
                    bound=fused.bound,
                    pct_bandwidth=100 * fused.memory_s / fused.seconds,
                    official_eager_us=eager * 1e6,
                    official_compiled_us=comp * 1e6,
                    x_eager=eager / fused.seconds,
                    x_compiled=comp / fused.seconds,
                )
            row["arch"][str(arch)] = per_arch
        shape_rows.append(row)
    return dict(
        gpus={name: dataclasses.asdict(g) for name, g in cost.GPUS.items()},
        variants=var_rows,
        shapes=shape_rows,
        batches=list(args.batch),
    )


def _tensor_kind(code: cost.Sass) -> str:
    kinds = sorted({x.opcode.split(".")[0] for x in code.insns if x.opcode.startswith(("HMMA", "HGMMA"))})
    return "+".join(kinds) or "none"


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

SECTION_HEADING = "## Routed-attention kernel: predicted cost (static model)"


def _mb(x: float) -> str:
    return f"{x / 1e6:.2f}"


def markdown(data: dict) -> str:
    batches = data["batches"]
    big = str(max(batches))
    lines = [
        SECTION_HEADING,
        "",
        "**Predicted, not measured**: `python scripts/kernel_cost.py` compiles every variant for sm_90 and",
        "sm_87 on a CPU and models the GPU. Instructions are counted in the SASS one warp executes per",
        "program, loop trips of the shape included (forward branches assumed not taken); times are",
        "`max(DRAM bytes / bandwidth, issue time)` with the compulsory bytes as the fused kernel's DRAM",
        "traffic (routed K/V re-reads served by L2) and `ceil(programs / SMs) x warps x instructions / (4 x",
        "clock)` as the issue time; the official core's times are its bytes over the bandwidth (a lower",
        "bound: no launch, GEMM or softmax inefficiency). No launch overhead either (a few us per",
        "launch, which dominates at batch 1), no latency or occupancy limit beyond the issue slots.",
        f"H200: {cost.GPUS['H200'].bandwidth_note}, 132 SMs at 1.98 GHz; Orin: "
        f"{cost.GPUS['Orin'].bandwidth_note}, 16 SMs at 1.3 GHz; `% bandwidth` is of these figures.",
        "fp16, 16-byte aligned inputs, head dim 32.",
        "",
        "### Variants",
        "",
        *table_head(
            "variant|arch:|region classes|warps:|stages:|regs:|spills|smem (B):|CTAs/SM (warps)|tensor cores"
        ),
    ]
    for r in data["variants"]:
        lines.append(
            f"| {r['variant']} | sm_{r['arch']} | {r['region']} | {r['warps']} | {r['stages']} | "
            f"{r['registers']} | {'yes' if r['spills'] else 'no'} | {r['shared']} | "
            f"{r['ctas_per_sm']} ({r['warps_per_sm']}) | {r['tensor_kind']} |"
        )
    lines += [
        "",
        "### Instructions per stage (SASS, per program)",
        "",
        *table_head(
            "model|task|stage:|map|region|topk:|variant|programs/image:|sm_90 insns/warp:|"
            "sm_90 insns/program:|sm_90 tensor:|sm_90 int div:|sm_87 insns/warp:|sm_87 tensor:|sm_87 int div:"
        ),
    ]
    for r in data["shapes"]:
        a90, a87 = r["arch"].get("90"), r["arch"].get("87")
        c90 = (
            f"{a90['insns_per_warp']} | {a90['insns_per_program']} | {a90['tensor']} | {a90['int_div']}"
            if a90
            else "- | - | - | -"
        )
        c87 = f"{a87['insns_per_warp']} | {a87['tensor']} | {a87['int_div']}" if a87 else "- | - | -"
        lines.append(
            f"| {r['model']} | {r['task']} | {r['stage']} | {r['map']} | {r['region']} | {r['topk']} | "
            f"{r['variant']} | {r['programs_per_image']} | {c90} | {c87} |"
        )
    lines += [
        "",
        "### Bytes per image (MB)",
        "",
        *table_head(
            "model|task|stage:|compulsory:|fused through L2:|official eager (ATen ops):|"
            "official torch.compile (lower bound):"
        ),
    ]
    for r in data["shapes"]:
        lines.append(
            f"| {r['model']} | {r['task']} | {r['stage']} | {_mb(r['compulsory'])} | {_mb(r['fused_l2'])} | "
            f"{_mb(r['official_eager'])} ({r['official_kernels']} ops) | {_mb(r['official_compiled'])} |"
        )
    for arch, gpu in ((90, "H200"), (87, "Orin")):
        if not any(str(arch) in r["arch"] for r in data["shapes"]):
            continue
        lines += [
            "",
            f"### Predicted time on {gpu} (us)",
            "",
            *table_head(
                "model|task|stage:|"
                + "|".join(f"fused b{b}:" for b in batches)
                + f"|bound b{big}|% bandwidth b{big}:|official eager b{big}:|official compiled b{big}:|"
                "x eager:|x compiled:"
            ),
        ]
        for r in data["shapes"]:
            p = r["arch"][str(arch)]["predicted"]
            pb = p[big]
            lines.append(
                f"| {r['model']} | {r['task']} | {r['stage']} | "
                + " | ".join(f"{p[str(b)]['fused_us']:.1f}" for b in batches)
                + f" | {pb['bound']} | {pb['pct_bandwidth']:.0f}% | {pb['official_eager_us']:.1f} | "
                f"{pb['official_compiled_us']:.1f} | {pb['x_eager']:.1f}x | {pb['x_compiled']:.1f}x |"
            )
    lines += ["", "Command: `python scripts/kernel_cost.py --out docs/benchmarks.md`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS))
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--batch", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--only-used", action="store_true", help="compile only the variants the shapes use")
    p.add_argument("--cache-dir", help="Triton cache to reuse (default: a fresh temporary one)")
    p.add_argument("--json", type=Path, help="write the raw numbers as JSON")
    p.add_argument("--out", type=Path, help="replace the section of this Markdown file (docs/benchmarks.md)")
    args = p.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    data = analyse(args)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    report = markdown(data)
    if args.out:
        replace_section(args.out, SECTION_HEADING, report)
        print(f"wrote the predicted-cost section of {args.out}")
    else:
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
