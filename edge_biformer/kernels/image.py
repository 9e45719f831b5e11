"""One compiled kernel image: what :mod:`.compile` produces per (variant, arch) and :mod:`.cgen` embeds."""

from __future__ import annotations

from dataclasses import dataclass

from edge_biformer.errors import EdgeBiformerError

__all__ = ["AotError", "Image"]


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
