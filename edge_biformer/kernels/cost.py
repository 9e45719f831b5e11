"""Static cost model of the compiled routed-attention kernel (no GPU needed).

The pieces of ``scripts/kernel_cost.py``, which compiles every variant with ``triton.compile`` and
reads what ptxas produced:

- :func:`resources`: registers, spill stack/local memory and static shared memory of a cubin
  (``cuobjdump -res-usage``);
- :func:`disassemble` / :func:`walk`: the SASS of a cubin (``nvdisasm``) and the instruction stream
  one warp executes for one program, given the trip count of each loop (loop-aware: back edges are
  taken ``trips - 1`` times, forward conditional branches are assumed not taken, i.e. the guarded
  code is counted, which over-counts rather than under-counts);
- :func:`occupancy`: resident CTAs and warps per SM from registers, shared memory and warps;
- :func:`roofline`: predicted time of a launch as the larger of its DRAM time and its instruction
  issue time;
- :func:`aten_bytes`: the bytes an eager PyTorch function moves, op by op, traced on meta tensors
  (every non-view ATen op reads its inputs once and writes its outputs once).

Everything here is a model: it ignores latency, bank conflicts, L2 misses of the routed K/V and
launch overhead, and is meant to compare designs, not to replace a measurement.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "GPUS",
    "Gpu",
    "Resources",
    "Sass",
    "aten_bytes",
    "disassemble",
    "occupancy",
    "resources",
    "roofline",
    "walk",
]


@dataclass(frozen=True)
class Gpu:
    """The figures of one GPU that the model uses."""

    name: str
    arch: int
    sms: int
    clock_ghz: float  # boost clock of the SMs
    bandwidth_gbs: float  # DRAM bandwidth the roofline uses (copy bandwidth where known)
    bandwidth_note: str
    max_warps_per_sm: int
    max_ctas_per_sm: int
    smem_per_sm: int  # bytes usable by CTAs
    regs_per_sm: int = 65536
    schedulers: int = 4  # warp schedulers per SM: warp instructions issued per cycle

    @property
    def issue_rate(self) -> float:
        """Warp instructions per second the whole GPU can issue."""
        return self.sms * self.schedulers * self.clock_ghz * 1e9


#: H200 SXM (132 SMs, 1.98 GHz; 4.8 TB/s nominal HBM3e, about 4.3 TB/s in a device copy) and
#: Jetson AGX Orin 64 GB (16 SMs, 1.3 GHz, 204.8 GB/s nominal LPDDR5).
GPUS: dict[str, Gpu] = {
    "H200": Gpu("H200", 90, 132, 1.98, 4300.0, "4.3 TB/s device copy (4.8 TB/s nominal)", 64, 32, 233472),
    "Orin": Gpu("Orin", 87, 16, 1.3, 204.8, "204.8 GB/s nominal", 48, 16, 167936),
}


# --------------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    """``nvdisasm`` / ``cuobjdump``: Triton's bundled copy, else the CUDA toolkit's, else PATH."""
    candidates = []
    try:
        import triton.backends.nvidia as nv

        candidates.append(Path(nv.__file__).parent / "bin" / name)
    except ImportError:
        pass
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            candidates.append(Path(root) / "bin" / name)
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name} not found (Triton's nvidia backend bundles it; or set CUDA_HOME)")


def _run_on_cubin(tool: str, args: Sequence[str], cubin: bytes, tmp: Path) -> str:
    path = tmp / "image.cubin"
    path.write_bytes(cubin)
    proc = subprocess.run([_tool(tool), *args, str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} failed: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Resources:
    """What ptxas allocated for one kernel."""

    registers: int
    stack: int  # bytes of stack frame (spills go here)
    local: int  # bytes of local memory
    static_shared: int  # bytes (the driver's reserved block on sm_80+ shows here)

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0


def resources(cubin: bytes, tmp: Path) -> Resources:
    """Registers, stack, local and static shared memory of the (single) function in ``cubin``."""
    text = _run_on_cubin("cuobjdump", ["-res-usage"], cubin, tmp)
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", text)
    if not m:
        raise RuntimeError(f"cannot read the resource usage: {text[-400:]}")
    reg, stack, shared, local = (int(x) for x in m.groups())
    return Resources(reg, stack, local, shared)


# --------------------------------------------------------------------------------------------------
# SASS
# --------------------------------------------------------------------------------------------------

_INSN = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;?\s*$")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


@dataclass(frozen=True)
class Insn:
    addr: int
    predicated: bool
    opcode: str  # e.g. "HMMA.16816.F32"
    target: int | None  # branch target address


@dataclass
class Sass:
    """The instructions of one function, in address order."""

    insns: list[Insn]

    @property
    def static_count(self) -> int:
        """Instructions up to the last EXIT (the padding and the trap loop after it excluded)."""
        last_exit = max(i for i, x in enumerate(self.insns) if x.opcode.startswith("EXIT"))
        return last_exit + 1

    def loops(self) -> list[tuple[int, int]]:
        """Back edges as ``(target index, branch index)``, outermost first (by nesting, then address)."""
        index = {x.addr: i for i, x in enumerate(self.insns)}
        edges = [
            (index[x.target], i)
            for i, x in enumerate(self.insns)
            if x.target is not None and x.target <= x.addr and index[x.target] != i
        ]

        def depth(e: tuple[int, int]) -> int:
            return sum(1 for o in edges if o != e and o[0] <= e[0] and e[1] <= o[1])

        return sorted(edges, key=lambda e: (depth(e), e[0]))

    def loop_depths(self) -> dict[int, int]:
        """Nesting depth (0 = outermost) of each back edge, by branch index."""
        edges = self.loops()
        return {b: sum(1 for o in edges if o != (t, b) and o[0] <= t and b <= o[1]) for t, b in edges}


def disassemble(cubin: bytes, tmp: Path) -> Sass:
    """The SASS of the kernel in ``cubin`` (``nvdisasm -c``)."""
    text = _run_on_cubin("nvdisasm", ["-c"], cubin, tmp)
    labels: dict[str, int] = {}
    raw: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        lm = _LABEL.match(line)
        if lm:
            pending.append(lm.group(1))
            continue
        im = _INSN.match(line)
        if im:
            addr = int(im.group(1), 16)
            for name in pending:
                labels[name] = addr
            pending = []
            raw.append((addr, im.group(2)))
    end = raw[-1][0] + 16 if raw else 0
    for name in pending:
        labels[name] = end
    insns = []
    for addr, body in raw:
        pred = body.startswith("@")
        op = body.split()[1] if pred else body.split()[0]
        tm = _TARGET.search(body)
        insns.append(Insn(addr, pred, op, labels.get(tm.group(1)) if tm else None))
    return Sass(insns)


#: Instruction classes reported by :func:`walk` (first matching prefix wins).
CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tensor", ("HMMA", "HGMMA", "UTCHMMA", "IMMA", "WARPGROUP")),
    ("ldg", ("LDG", "LDGSTS", "UTMALDG")),
    ("stg", ("STG",)),
    ("shared", ("LDS", "STS", "LDSM")),
    ("barrier", ("BAR",)),
    ("mufu", ("MUFU",)),
    ("int_div", ("I2F.U32.RP", "I2F.RP")),  # one per runtime integer division / remainder
)


def _classify(op: str) -> str | None:
    for name, prefixes in CLASSES:
        if op.startswith(prefixes):
            return name
    return None


def walk(sass: Sass, trips_by_depth: Sequence[int], max_steps: int = 10_000_000) -> Counter[str]:
    """Instructions one warp executes for one program, by class (``"total"`` for all).

    ``trips_by_depth[d]`` is the trip count of every loop at nesting depth ``d`` (a missing depth
    runs once). Unconditional branches are followed, back edges taken ``trips - 1`` times per entry;
    a forward conditional branch over a whole loop (its zero-trip guard) is taken when that loop
    runs 0 times; other forward conditional branches and predicated ``EXIT`` are not taken.
    """
    depths = sass.loop_depths()
    index = {x.addr: i for i, x in enumerate(sass.insns)}
    loops = sass.loops()

    def trips_of(branch: int) -> int:
        d = depths[branch]
        return trips_by_depth[d] if d < len(trips_by_depth) else 1

    # A forward conditional branch that jumps over a whole loop is that loop's zero-trip guard.
    guards: dict[int, int] = {}
    for i, x in enumerate(sass.insns):
        if x.predicated and x.target is not None and x.target > x.addr:
            t = index[x.target]
            over = [b for lt, b in loops if i < lt <= b < t]
            if over:
                guards[i] = min(over, key=lambda b: depths[b])
    left: dict[int, int] = {}
    counts: Counter[str] = Counter()
    pc, steps = 0, 0
    while 0 <= pc < len(sass.insns):
        steps += 1
        if steps > max_steps:
            raise RuntimeError("walk did not terminate (unexpected control flow)")
        x = sass.insns[pc]
        counts["total"] += 1
        cls = _classify(x.opcode)
        if cls:
            counts[cls] += 1
        if x.opcode.startswith("EXIT") and not x.predicated:
            break
        if x.target is not None and x.opcode.startswith(("BRA", "JMP")):
            t = index[x.target]
            if x.target <= x.addr and t != pc:  # back edge
                remaining = left.get(pc, trips_of(pc) - 1)
                if remaining > 0:
                    left[pc] = remaining - 1
                    pc = t
                    continue
                left.pop(pc, None)  # the next entry of this loop starts afresh
            elif not x.predicated or (pc in guards and trips_of(guards[pc]) == 0):
                pc = t
                continue
        pc += 1
    return counts


# --------------------------------------------------------------------------------------------------
# Occupancy and roofline
# --------------------------------------------------------------------------------------------------


def occupancy(gpu: Gpu, registers: int, shared_bytes: int, warps: int) -> int:
    """Resident CTAs per SM (registers allocated per warp in units of 256, 8 per thread)."""
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    warps_by_regs = (gpu.regs_per_sm // gpu.schedulers // regs_per_warp) * gpu.schedulers
    by_regs = warps_by_regs // warps
    by_warps = gpu.max_warps_per_sm // warps
    smem = -(-shared_bytes // 128) * 128
    by_smem = gpu.smem_per_sm // smem if smem else gpu.max_ctas_per_sm
    return max(0, min(by_regs, by_warps, by_smem, gpu.max_ctas_per_sm))


@dataclass(frozen=True)
class Roofline:
    """Predicted time of one launch (seconds) and what bounds it."""

    seconds: float
    memory_s: float
    issue_s: float

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.issue_s else "issue"


def roofline(gpu: Gpu, dram_bytes: float, programs: int, warps: int, insns_per_warp: float) -> Roofline:
    """``max(bytes / bandwidth, issue time)``; the issue time spreads the programs evenly over the
    SMs (whole programs: ``ceil(programs / SMs)`` per SM), each SM issuing one warp instruction per
    scheduler and cycle."""
    memory = dram_bytes / (gpu.bandwidth_gbs * 1e9)
    per_sm = -(-programs // gpu.sms) * warps * insns_per_warp
    issue = per_sm / (gpu.schedulers * gpu.clock_ghz * 1e9)
    return Roofline(max(memory, issue), memory, issue)


# --------------------------------------------------------------------------------------------------
# Bytes of an eager PyTorch function
# --------------------------------------------------------------------------------------------------


@dataclass
class AtenBytes:
    """Bytes moved by each non-view ATen op of a traced call."""

    ops: list[tuple[str, int, int]] = field(default_factory=list)  # (op, read, written)

    @property
    def total(self) -> int:
        return sum(r + w for _, r, w in self.ops)

    @property
    def kernels(self) -> int:
        return len(self.ops)


@functools.cache
def _view_ops() -> frozenset[str]:
    return frozenset(
        {
            "view",
            "_unsafe_view",
            "reshape",
            "permute",
            "expand",
            "split_with_sizes",
            "split",
            "slice",
            "select",
            "transpose",
            "t",
            "unsqueeze",
            "squeeze",
            "as_strided",
            "alias",
            "detach",
        }
    )


def aten_bytes(fn: Callable[..., object], *args: object, **kwargs: object) -> AtenBytes:
    """Trace ``fn(*args, **kwargs)`` (meta tensors are enough) and count the bytes of every op.

    A view op moves nothing. Any other op reads each tensor input once, at most the bytes of its
    storage (an expanded view is read from its small storage), and writes its outputs.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    result = AtenBytes()

    def read_bytes(t: torch.Tensor) -> int:
        storage = t.untyped_storage().nbytes()
        return min(t.numel() * t.element_size(), storage)

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, f_args=(), f_kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*f_args, **(f_kwargs or {}))
            name = func.overloadpacket.__name__
            if name not in _view_ops():
                ins = [t for t in tree_flatten((f_args, f_kwargs))[0] if isinstance(t, torch.Tensor)]
                outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
                result.ops.append(
                    (name, sum(read_bytes(t) for t in ins), sum(t.numel() * t.element_size() for t in outs))
                )
            return out

    with _Mode():
        fn(*args, **kwargs)
    return result
