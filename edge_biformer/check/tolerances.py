"""The tolerance table: every comparison of the library is judged by one named entry of it.

An entry says which numbers must hold for an artifact to match its reference (see
:func:`edge_biformer.check.compare`):

* ``max_abs``: ``max |actual - expected|``;
* ``max_rel``: ``max |actual - expected| / max |expected|`` (relative to the output's range, so
  near-zero elements do not dominate);
* classifier outputs: the minimum per-sample cosine similarity, the top-1 agreement, the top-5
  agreement (the reference's class within the artifact's top 5) and, with labels, the top-1
  accuracy drop in points;
* Polygraphy's comparator (``atol = atol_frac * max |expected|``, ``rtol``, error statistic), for the
  build check's second verdict and the ``polygraphy run`` command that repeats it;
* ``routing_tie``: a BRA routing decision whose FP32 margin (k-th minus (k+1)-th routing logit) is
  at most this fraction of its routing-logit spread is a tie the precision cannot resolve; a
  sample whose routing flipped first at such a tie is left out of the elementwise (Polygraphy)
  rule, and still judged by every other rule (:func:`edge_biformer.check.routing.tie_flips`).

NaN or Inf in either side always fails, whatever the entry says.

The op's own tolerances (a kernel or plugin against a float64 evaluation of the op) are part of its
contract (``edge_biformer/ops/bra/BiLevelRoutingAttention.json``) and are read from there by
:meth:`edge_biformer.ops.contract.OpContract.tolerance`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edge_biformer.errors import EdgeBiformerError

__all__ = ["TOLERANCES", "Tolerance", "tolerance"]


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria of one kind of comparison (unset criteria are not checked)."""

    name: str
    doc: str = ""
    max_abs: float | None = None
    max_rel: float | None = None
    min_cosine: float | None = None
    min_top1_agreement: float | None = None
    min_top5_agreement: float | None = None
    #: top-1 accuracy points the artifact may lose against the reference, when labels are given
    max_accuracy_drop: float | None = None
    #: Polygraphy's ``--atol`` as a fraction of ``max |expected|``, its ``--rtol`` and
    #: ``--check-error-stat``.
    atol_frac: float | None = None
    rtol: float | None = None
    error_stat: str | None = None
    #: Relative routing margin of a tie (module docstring); ``None``: every sample is judged elementwise.
    routing_tie: float | None = None

    @property
    def classification(self) -> bool:
        """Whether the entry judges classifier outputs (cosine, top-k agreement, accuracy)."""
        return any(
            v is not None
            for v in (
                self.min_cosine,
                self.min_top1_agreement,
                self.min_top5_agreement,
                self.max_accuracy_drop,
            )
        )

    def atol(self, scale: float) -> float:
        """Polygraphy's absolute tolerance for outputs of magnitude ``scale`` (3 significant digits)."""
        if self.atol_frac is None:
            raise ValueError(f"tolerance {self.name} has no Polygraphy atol")
        return float(f"{self.atol_frac * max(scale, 1e-6):.3g}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (manifests and reports)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _build(name: str, doc: str, *values: Any, routing_tie: float | None = None) -> Tolerance:
    atol_frac, rtol, stat, cosine, top1, top5, drop = values
    return Tolerance(
        name,
        doc,
        routing_tie=routing_tie,
        atol_frac=atol_frac,
        rtol=rtol,
        error_stat=stat,
        min_cosine=cosine,
        min_top1_agreement=top1,
        min_top5_agreement=top5,
        max_accuracy_drop=drop,
    )


#: Every tolerance of the library, by name. ``docs/build.md`` explains the build entries.
TOLERANCES: dict[str, Tolerance] = {
    t.name: t
    for t in (
        Tolerance(
            "export",
            "the exported float32 graph in onnxruntime against PyTorch (edge-biformer export --tolerance "
            "overrides max_rel)",
            max_rel=1e-4,
        ),
        Tolerance(
            "rewrite.block.float32",
            "one matched block's attention output in the original graph against the op reference computed "
            "from the same q/k/v",
            max_rel=1e-4,
        ),
        Tolerance(
            "rewrite.block.float16",
            "as rewrite.block.float32 for a float16 attention (the original computes in float16, the op in "
            "float32)",
            max_rel=2e-2,
        ),
        Tolerance(
            "rewrite.graph.float32",
            "the rewritten graph (cpu_session) against the original graph (onnxruntime) on the same inputs",
            max_rel=1e-4,
        ),
        Tolerance(
            "rewrite.graph.float16",
            "as rewrite.graph.float32 when a replaced attention is float16",
            max_rel=2e-2,
        ),
        Tolerance(
            "rewrite.inplace.float32",
            "each replaced attention's output inside the rewritten graph (cpu_session) against the same "
            "tensor of the original graph, on its own range",
            max_rel=1e-4,
        ),
        # A float16 graph's attention outputs carry the rounding drift of every block before them
        # (the op computes in float32, the original in float16): measured up to 0.12 of the output's
        # range on BiFormer-T INT8 with random weights, while a wrong rewrite (keys paired with the
        # wrong values, another region) moves them by the whole range.
        Tolerance(
            "rewrite.inplace.float16",
            "as rewrite.inplace.float32 when a replaced attention is float16",
            max_rel=0.3,
        ),
        # fp32: TensorRT FP32 with TF32 disabled differs from PyTorch only by summation order (~1e-6
        # relative); 1e-4 leaves room for the plugin's exp/softmax order. fp16: 11-bit mantissa, errors
        # of ~5e-4 per op accumulate over the depth to ~1e-3..1e-2 of the logit range. int8:
        # quantization noise is not elementwise-small; the mean error, the direction of the logit
        # vector and the predicted class are what a classifier keeps.
        # routing_tie: a routing margin below the precision's resolution of the routing logits is a
        # tie (float32 summation order ~1e-6 of the spread, float16 half an ulp = 4.9e-4 per
        # rounding): which region wins it is not a property of the artifact, and a topk-1 region
        # swapped at a tie moves the logits by far more than the elementwise tolerance (measured
        # 0.128 at FP32 margin 2.7e-4 of the spread, reduced DeBiFormer FP16, docs/routing.md).
        # INT8 is judged by the mean error over every sample, so it needs no tie rule.
        _build(
            "build.fp32",
            "a float32 artifact against FP32 PyTorch",
            1e-4,
            1e-3,
            "elemwise",
            0.99999,
            1.0,
            1.0,
            0.0,
            routing_tie=1e-5,
        ),
        _build(
            "build.fp16",
            "an FP16 artifact against FP32 PyTorch",
            2e-2,
            2e-2,
            "elemwise",
            0.999,
            0.99,
            1.0,
            0.5,
            routing_tie=1e-3,
        ),
        _build(
            "build.int8", "an INT8 artifact against FP32 PyTorch", 5e-2, 0.0, "mean", 0.98, 0.97, 0.99, 1.0
        ),
    )
}


def tolerance(name: str) -> Tolerance:
    """The entry ``name`` of :data:`TOLERANCES`, with a clear error for an unknown name."""
    try:
        return TOLERANCES[name]
    except KeyError:
        raise EdgeBiformerError(
            f"unknown tolerance {name!r}; the table has {', '.join(sorted(TOLERANCES))}"
        ) from None
