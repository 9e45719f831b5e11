"""``routed_attention``: the Python entry point of the fused routed-attention kernel.

CUDA tensors launch the Triton kernel (JIT-compiled by Triton on first use, cached afterwards).
CPU tensors run the very same kernel function under Triton's interpreter
(:class:`triton.runtime.interpreter.InterpretedFunction`), which executes the kernel program with
numpy, one program at a time: exact but slow (milliseconds per program), meant for verification.

The interpreter form is built directly from the kernel's Python function, so CPU calls work whether
or not ``TRITON_INTERPRET`` is set, and nothing here sets or changes that variable. Triton's own
switch keeps its meaning: with ``TRITON_INTERPRET=1`` in the environment before ``triton`` is
imported, ``triton.jit`` itself returns interpreted kernels and CUDA tensors are interpreted too
(copied to the host and back by Triton).

The values of ``r_idx`` are checked only where that costs no device-to-host synchronisation (CPU
tensors), in the debug mode (``EDGE_BIFORMER_VALIDATE_INDICES=1``) or when asked
(``validate_indices=True``): the CUDA fast path never synchronises and can be captured into a CUDA
graph. Unchecked out-of-range values are clamped by the kernel (never a memory fault).
"""

from __future__ import annotations

import math
import numbers
import os
import re
import threading
from typing import TYPE_CHECKING, Any

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.kernels.launch import (
    ContractError,
    Geometry,
    LaunchPlan,
    UnsupportedError,
    check_geometry,
    plan_launch,
)

if TYPE_CHECKING:
    import torch

__all__ = ["VALIDATE_ENV", "KernelInputError", "KernelUnavailableError", "routed_attention"]

#: Debug switch: with ``EDGE_BIFORMER_VALIDATE_INDICES=1`` the default ``validate_indices=None``
#: also checks CUDA tensors (one device-to-host sync per call; not capturable into a CUDA graph).
VALIDATE_ENV = "EDGE_BIFORMER_VALIDATE_INDICES"


class KernelInputError(EdgeBiformerError, ValueError):
    """Tensors or attributes that break the op contract or lie outside the compiled variants."""


class KernelUnavailableError(EdgeBiformerError, ImportError):
    """Triton (the optional ``kernels`` extra) is not installed."""


_TRITON_MISSING = (
    "routed_attention needs Triton, which is not installed. Install the kernels extra with "
    "`pip install 'edge-biformer[kernels]'` (or `pip install 'triton>=3.2,<3.10'`); Triton runs the "
    "kernel on CUDA GPUs and, through its interpreter, on the CPU."
)

_lock = threading.Lock()
_kernels: dict[str, Any] = {}


def _kernel(kind: str) -> Any:
    """The JIT (``"jit"``) or interpreted (``"interp"``) form of the kernel, built once."""
    with _lock:
        if kind not in _kernels:
            try:
                from edge_biformer.kernels import bra_triton
            except ImportError as err:  # triton missing or broken
                raise KernelUnavailableError(f"{_TRITON_MISSING} ({err})") from err
            if kind == "jit":
                _kernels[kind] = bra_triton.bra_fwd_kernel_jit
            else:
                _check_interpreter_numpy()
                _kernels[kind] = bra_triton.interpreted_kernel()
        return _kernels[kind]


def _version(text: str) -> tuple[int, int]:
    major, minor = ([int(p) for p in re.findall(r"\d+", text)[:2]] + [0, 0])[:2]
    return major, minor


def _check_interpreter_numpy() -> None:
    """Triton's interpreter before 3.7 cannot run loops with run-time bounds under numpy >= 2.4."""
    import numpy
    import triton

    if _version(triton.__version__) < (3, 7) and _version(numpy.__version__) >= (2, 4):
        raise KernelUnavailableError(
            f"routed_attention on CPU tensors runs the kernel under Triton's interpreter, which in "
            f"Triton {triton.__version__} fails with numpy {numpy.__version__} (it converts 1-element "
            f"arrays with int(), an error since numpy 2.4). Upgrade Triton (`pip install "
            f"'triton>=3.7,<3.10'`) or use numpy < 2.4."
        )


def _fail(msg: str) -> KernelInputError:
    return KernelInputError(f"routed_attention: {msg}")


def _check_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor) -> None:
    """Type, dtype, rank and device checks."""
    import torch

    for name, t in (("q", q), ("k", k), ("v", v), ("r_idx", r_idx)):
        if not isinstance(t, torch.Tensor):
            raise _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if q.dtype not in (torch.float16, torch.float32):
        raise _fail(
            f"q has dtype {q.dtype}; the op takes float32 or float16 (q, k and v alike). "
            f"Convert with .half() or .float()."
        )
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise _fail(f"{name} has dtype {t.dtype} but q has {q.dtype}; q, k and v must share one dtype.")
    if r_idx.dtype != torch.int32:
        raise _fail(
            f"r_idx has dtype {r_idx.dtype}; the op takes int32 region indices (TopK returns int64: "
            f"pass r_idx.int())."
        )
    for name, t, want in (
        ("q", q, "[N, Hq, Wq, Cqk]"),
        ("k", k, "[N, Hk, Wk, Cqk]"),
        ("v", v, "[N, Hk, Wk, Cv]"),
        ("r_idx", r_idx, "[N, S*S, topk]"),
    ):
        if t.dim() != (3 if name == "r_idx" else 4):
            raise _fail(f"{name} has shape {list(t.shape)}; expected {want} (NHWC maps).")
    devices = {t.device for t in (q, k, v, r_idx)}
    if len(devices) != 1:
        raise _fail(f"q, k, v and r_idx must be on one device, got {sorted(str(d) for d in devices)}.")
    if q.device.type not in ("cpu", "cuda"):
        raise _fail(f"tensors on {q.device} are not supported; use CUDA tensors or CPU tensors.")


def _geometry(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r_idx: torch.Tensor, num_heads: int
) -> Geometry:
    n, hq, wq, c_qk = q.shape
    nk, hk, wk, ck = k.shape
    nv, hv, wv, c_v = v.shape
    nr, n_reg, topk = r_idx.shape
    if not (n == nk == nv == nr):
        raise _fail(f"batch sizes differ: q {n}, k {nk}, v {nv}, r_idx {nr}; all four share the batch dim N.")
    if ck != c_qk:
        raise _fail(f"k has {ck} channels but q has {c_qk}; q and k share the channel count Cqk.")
    if (hv, wv) != (hk, wk):
        raise _fail(f"v is {hv}x{wv} but k is {hk}x{wk}; k and v must cover the same map.")
    s = math.isqrt(n_reg)
    if s < 1 or s * s != n_reg:
        raise _fail(
            f"r_idx has shape {list(r_idx.shape)}: its dim 1 must be S*S (the number of regions, "
            f"n_win**2), but {n_reg} is not a positive perfect square."
        )
    if isinstance(num_heads, bool) or not isinstance(num_heads, numbers.Integral):
        raise _fail(f"num_heads must be an int, got {num_heads!r}.")
    return Geometry(
        batch=n,
        hq=hq,
        wq=wq,
        hk=hk,
        wk=wk,
        c_qk=c_qk,
        c_v=c_v,
        n_win=s,
        num_heads=int(num_heads),
        topk=topk,
    )


def _nhwc_strides(t: torch.Tensor) -> tuple[int, int, int]:
    return (t.stride(0), t.stride(1), t.stride(2))


def plan_for(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r_idx: torch.Tensor,
    o: torch.Tensor,
    *,
    num_heads: int,
    scale: float,
) -> LaunchPlan:
    """The launch plan for these (already validated, channel-contiguous) tensors."""
    g = _geometry(q, k, v, r_idx, num_heads)
    strides = (*_nhwc_strides(q), *_nhwc_strides(k), *_nhwc_strides(v), *_nhwc_strides(o))
    dtype = "fp16" if q.dtype.itemsize == 2 else "fp32"
    pointers = (q.data_ptr(), k.data_ptr(), v.data_ptr(), o.data_ptr())
    try:
        return plan_launch(g, dtype, scale, strides, pointers)
    except (ContractError, UnsupportedError) as err:
        raise _fail(f"{err}.") from err


def routed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r_idx: torch.Tensor,
    *,
    num_heads: int,
    scale: float,
    validate_indices: bool | None = None,
) -> torch.Tensor:
    """``o = BiLevelRoutingAttention(q, k, v, r_idx)``, exactly the op contract of ``plugins/bra``.

    Args:
        q: ``[N, Hq, Wq, Cqk]`` NHWC queries, float32 or float16.
        k: ``[N, Hk, Wk, Cqk]`` NHWC keys, same dtype.
        v: ``[N, Hk, Wk, Cv]`` NHWC values, same dtype.
        r_idx: ``[N, S*S, topk]`` int32 routed region indices in ``[0, S*S)``; ``S`` (``n_win``) is
            read from its shape. Repeated indices are attended as many times as they appear.
        num_heads: heads; ``Cqk`` and ``Cv`` are split head-major into ``num_heads`` heads.
        scale: logit scale (BiFormer: ``qk_dim ** -0.5`` of the whole block).
        validate_indices: check that every ``r_idx`` value lies in ``[0, S*S)`` and raise
            :class:`KernelInputError` naming the range found. ``None`` (default): check where it
            costs no device sync, i.e. CPU tensors, and on CUDA only in the debug mode
            (environment ``EDGE_BIFORMER_VALIDATE_INDICES=1``); the CUDA fast path never
            synchronises with the host and can be captured into a CUDA graph. ``True``: always
            check (on CUDA one device-to-host sync per call; refused while a CUDA graph is being
            captured). ``False``: never check. Unchecked out-of-range values are clamped into
            ``[0, S*S)`` inside the kernel: never a memory fault, but not a meaningful result.

    Returns:
        ``[N, Hq, Wq, Cv]`` NHWC output in the dtype of ``q``; the only allocation of the call.

    Inputs may be strided views (e.g. channel slices of a fused qkv tensor) as long as the channel
    dimension is contiguous; a tensor whose channel stride is not 1 is copied once. Raises
    :class:`KernelInputError` (an :class:`~edge_biformer.errors.EdgeBiformerError` and
    ``ValueError``) for input that breaks the contract or lies outside the compiled variants (head
    dims above 128), and :class:`KernelUnavailableError` if Triton is not installed.
    """
    import torch

    _check_tensors(q, k, v, r_idx)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise _fail(f"scale must be a finite float, got {scale!r}.")
    q, k, v = (t if t.stride(3) == 1 or t.shape[3] <= 1 else t.contiguous() for t in (q, k, v))
    r_idx = r_idx.contiguous()
    g = _geometry(q, k, v, r_idx, num_heads)
    try:
        check_geometry(g)
    except ContractError as err:
        raise _fail(f"{err}.") from err
    o = torch.empty((g.batch, g.hq, g.wq, g.c_v), dtype=q.dtype, device=q.device)
    if g.batch == 0:
        return o
    if _should_validate(validate_indices, q.device.type):
        if q.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise _fail(
                "checking the values of r_idx needs a device-to-host copy, which a CUDA graph "
                f"capture cannot contain; pass validate_indices=False (or unset {VALIDATE_ENV}) while "
                "capturing: the kernel clamps out-of-range indices."
            )
        lo, hi = torch.stack(torch.aminmax(r_idx)).tolist()  # one device-to-host copy
        if lo < 0 or hi >= g.n_win**2:
            raise _fail(
                f"r_idx holds values in [{lo}, {hi}] but region indices must lie in "
                f"[0, S*S) = [0, {g.n_win**2}) (S = {g.n_win} from r_idx.shape[1] = {g.n_win**2})."
            )
    plan = plan_for(q, k, v, r_idx, o, num_heads=num_heads, scale=float(scale))
    _launch(plan, q, k, v, r_idx, o, interpret=q.device.type == "cpu")
    return o


def _should_validate(validate_indices: bool | None, device_type: str) -> bool:
    """Whether this call checks the values of ``r_idx`` (see ``routed_attention``'s docstring)."""
    if validate_indices is not None:
        return bool(validate_indices)
    return device_type != "cuda" or os.environ.get(VALIDATE_ENV, "") not in ("", "0")


def _launch(
    plan: LaunchPlan,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    r_idx: torch.Tensor,
    o: torch.Tensor,
    *,
    interpret: bool,
) -> None:
    """Run the kernel for ``plan`` (JIT on CUDA, interpreter on CPU)."""
    args = (q, k, v, r_idx, o, *plan.scalar_args())
    var = plan.variant
    if interpret:
        kernel = _kernel("interp")
        with _lock:  # the interpreter patches triton.language while it runs
            kernel[(plan.grid,)](*args, **var.constexprs)
        return
    import torch

    kernel = _kernel("jit")
    with torch.cuda.device(q.device):
        kernel[(plan.grid,)](
            *args,
            **var.constexprs,
            num_warps=var.num_warps,
            num_stages=var.num_stages,
            enable_fp_fusion=True,
        )
