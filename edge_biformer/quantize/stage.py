"""The quantize stage: a plain float32 export -> mixed FP16, or explicit INT8 (Q/DQ) calibrated on the CPU.

:func:`run` is what ``edge-biformer quantize`` and ``edge-biformer build`` run; it prints its stage
line and writes the graph's side-car manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from edge_biformer import manifest as manifests
from edge_biformer.calib import DataSpec, load_data
from edge_biformer.calib.dataset import default_calibration
from edge_biformer.calib.preprocess import recorded_preprocess
from edge_biformer.onnx_io import graph_interface, save_model
from edge_biformer.quantize.fp16 import quantize_fp16
from edge_biformer.quantize.int8 import quantize_int8
from edge_biformer.quantize.policy import DEFAULT_ROUTING_PROTECTION
from edge_biformer.quantize.toolkit import QuantizationError, QuantizeResult
from edge_biformer.utils import stage

__all__ = ["QuantizeOptions", "run"]


@dataclass
class QuantizeOptions:
    """The conversion of ``source`` (a plain export) into ``output`` at ``precision``.

    ``calib``: the calibration set (a :class:`edge_biformer.calib.CalibrationData` or
    :class:`~edge_biformer.calib.DataSpec`; int8 only; ``None``: the built-in demo photographs, said loudly);
    ``method``: ``entropy`` or ``max``; ``exclude``: node-name regular expressions kept out of INT8
    (kept in FP32 by the FP16 conversion); ``high_precision``: what the non-INT8 ops of an int8 graph
    become (``fp16`` or ``fp32``); ``cache``: the calibration cache (default ``<output>.calib.cache``
    beside the output, i.e. ``model.int8.calib.cache``); ``img_size``: the calibration image size
    of a graph whose H and W are dynamic; ``routing_protection``: ``path``, ``top1`` (default) or ``inputs``
    (:mod:`edge_biformer.quantize.policy`).
    """

    precision: str
    source: Path | None = None
    output: Path | None = None
    calib: Any = None
    method: str = "entropy"
    exclude: Sequence[str] = field(default_factory=tuple)
    high_precision: str = "fp16"
    cache: Path | None = None
    img_size: tuple[int, int] | None = None
    routing_protection: str = DEFAULT_ROUTING_PROTECTION


def run(options: QuantizeOptions) -> QuantizeResult:
    """Convert ``options.source``; one log line; the output and its manifest are written atomically.

    ``options.calib`` may be a :class:`edge_biformer.calib.DataSpec`: it is then loaded at the
    graph's input size.
    """
    if options.source is None or options.output is None:
        raise ValueError("the quantize stage needs options.source and options.output")
    source, output = Path(options.source), Path(options.output)
    if options.precision == "fp16":
        with stage("quantize fp16") as st:
            result = quantize_fp16(source, output, keep_fp32=options.exclude)
            st.output = output
            st.details.append(f"{result.fp32_nodes} nodes kept in fp32")
        graph = "fp16"
    elif options.precision == "int8":
        calib = options.calib if options.calib is not None else default_calibration()
        if isinstance(calib, DataSpec):
            iface = graph_interface(source, error=QuantizationError)
            chain = {"source": manifests.source_record(source)}  # the source's manifest chain
            # Dynamic H/W: --img-size, else the size the export was made and verified at.
            size = iface.image_size or options.img_size or manifests.exported_img_size(chain)
            if size is None:
                raise QuantizationError(
                    f"{source} has a dynamic H/W input: pass --img-size for the calibration images"
                )
            recipe = calib.preprocess or recorded_preprocess(chain)
            calib = load_data(
                replace(calib, preprocess=recipe, channels=iface.channels), size, "calibration data"
            )
        cache = Path(options.cache) if options.cache else output.with_suffix(".calib.cache")
        with stage(f"quantize int8 ({options.method})") as st:
            result = quantize_int8(
                source,
                output,
                calib,
                method=options.method,
                exclude=options.exclude,
                high_precision=options.high_precision,
                cache=cache,
                routing_protection=options.routing_protection,
            )
            st.output = output
            st.details.append(
                f"{result.quantized_nodes} nodes int8, {result.qdq_pairs} Q/DQ, calibration cache "
                f"{'reused' if result.calib_cache_reused else 'written'}: {cache}"
            )
        graph = "qdq"
    else:
        raise QuantizationError(f"--precision must be fp16 or int8 for quantize, got {options.precision!r}")
    record = manifests.make_manifest(
        output,
        kind="onnx",
        stage="quantize",
        source=manifests.source_record(source),
        options=options,
        precision=options.precision,
        graph=graph,
        quantize=result.to_dict(),
    )
    save_model(onnx.load(str(output)), output, provenance=manifests.provenance(record))
    manifests.write_manifest(manifests.manifest_path(output), record)
    return result
