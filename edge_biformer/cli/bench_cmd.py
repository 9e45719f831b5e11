"""``edge-biformer bench``: latency and throughput per batch size, on every runtime present.

Rows: PyTorch eager (``--model``), onnxruntime on the CPU for our export (routed K/V gathered by index)
and for the official gather pattern (``Expand`` + ``GatherElements``, same weights), any ``--onnx``
graph (plugin graphs in ``cpu_session``), and TensorRT engines (``--engine``, or every
``model.*.engine`` of ``--build DIR``: end-to-end host-to-host latency and GPU compute time). A row
that cannot run here is listed as skipped, with the reason. Inputs: the built-in demo photographs,
preprocessed at the model's input size and repeated to the batch size.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.cli.args import ImageSizeArgs, ModelArgs, RuntimeArgs, add_groups
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import atomic_output, heartbeat, log


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes such as 1,8, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got {text!r}")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bench``."""
    parser = subparsers.add_parser(
        "bench",
        help="latency (mean, p50, p90, p99) and throughput per batch size: PyTorch, onnxruntime, TensorRT",
        description=(
            "Benchmark PyTorch eager, onnxruntime on the CPU (our export and the official gather pattern, "
            "same weights), given ONNX graphs and TensorRT engines (end-to-end and GPU compute time) per "
            "batch "
            "size, after a warm-up, for a fixed number of iterations or a duration. Prints a Markdown table, "
            "writes JSON, and lists the rows it skipped with the reason."
        ),
    )
    add_groups(
        parser, [ModelArgs(required=False), ImageSizeArgs(help="input size (default 224 for --model)")]
    )
    parser.add_argument(
        "--onnx", action="append", default=[], metavar="O.onnx", help="an ONNX graph (repeatable)"
    )
    parser.add_argument("--engine", action="append", default=[], metavar="E.engine", help="a TensorRT engine")
    parser.add_argument("--build", metavar="DIR", help="a build folder: its model.*.engine files")
    RuntimeArgs(labels=False).add(parser)
    parser.add_argument(
        "--batch", type=_batches, default=(1, 8), metavar="1,8", help="batch sizes (default 1,8)"
    )
    parser.add_argument("--warmup", type=int, default=3, metavar="N", help="warm-up runs per row (default 3)")
    parser.add_argument("--iters", type=int, default=20, metavar="N", help="timed runs per row (default 20)")
    parser.add_argument("--duration", type=float, metavar="S", help="time each row for S seconds instead")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads (torch and onnxruntime)")
    parser.add_argument("--no-official", action="store_true", help="skip the official gather-pattern row")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="write the Markdown table to a file")
    parser.set_defaults(func=run)
    return parser


@dataclass
class Row:
    """One runtime at one batch size: latencies in ms, or why it was skipped."""

    runtime: str
    batch: int
    precision: str = "fp32"
    mean_ms: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None  # images/s
    gpu_ms: float | None = None  # TensorRT: GPU compute time per batch (mean)
    iterations: int = 0
    skipped: str | None = None


@dataclass
class Runner:
    """A runtime to time: ``run(batch)`` and, for engines, ``gpu(batch, n)``."""

    name: str
    precision: str
    run: Callable[[np.ndarray], Any] | None = None
    gpu: Callable[[np.ndarray, int], list[float]] | None = None
    skipped: str | None = None
    close: Callable[[], None] = field(default=lambda: None)
    img_size: tuple[int, int] | None = None
    batches: tuple[int, int] | None = None  # (min, max) batch it accepts; None: any

    def refuses(self, batch: int) -> str | None:
        """Why this runner cannot run ``batch`` (a static-batch graph, an engine profile), else ``None``."""
        if self.batches is None or self.batches[0] <= batch <= self.batches[1]:
            return None
        lo, hi = self.batches
        what = f"a static batch of {lo}" if lo == hi else f"batches {lo}..{hi} (its profile)"
        return f"it takes {what}, not {batch}"


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation, as numpy's default)."""
    return float(np.percentile(np.asarray(values), q))


def time_runner(runner: Runner, x: np.ndarray, warmup: int, iters: int, duration: float | None) -> Row:
    """Time ``runner`` on ``x``: ``warmup`` runs, then ``iters`` runs (or as many as fit in ``duration``)."""
    assert runner.run is not None
    for _ in range(warmup):
        runner.run(x)
    times: list[float] = []
    deadline = time.perf_counter() + duration if duration else None
    while (len(times) < iters) if deadline is None else (time.perf_counter() < deadline or len(times) < 2):
        start = time.perf_counter()
        out = runner.run(x)
        times.append(time.perf_counter() - start)
        if len(times) == 1 and not np.isfinite(np.asarray(out, dtype=np.float32)).all():
            raise EdgeBiformerError(f"bench: {runner.name} returned NaN/Inf at batch {x.shape[0]}")
    ms = [t * 1e3 for t in times]
    mean = statistics.fmean(ms)
    row = Row(
        runner.name, int(x.shape[0]), runner.precision, mean, percentile(ms, 50), percentile(ms, 90),
        percentile(ms, 99), x.shape[0] / (mean / 1e3), iterations=len(ms),
    )  # fmt: skip
    if runner.gpu is not None:
        row.gpu_ms = statistics.fmean(runner.gpu(x, len(ms))) * 1e3
    return row


def _inputs(img_size: tuple[int, int], batch: int) -> np.ndarray:
    """The demo photographs preprocessed at ``img_size``, repeated to ``batch`` images."""
    from edge_biformer.calib import demo_photos
    from edge_biformer.runtime.predictor import Preprocessing, read_image

    prep = Preprocessing(img_size)
    photos = [prep(read_image(p)) for p in demo_photos()]
    return np.stack([photos[i % len(photos)] for i in range(batch)])


def _onnx_runner(path: Path, name: str | None = None, threads: int | None = None) -> Runner:
    import onnx

    from edge_biformer.onnx_io import graph_precision
    from edge_biformer.runtime.cpu import cpu_session, session_options

    options = session_options(onnx.load(str(path), load_external_data=False))
    if threads:
        options.intra_op_num_threads = threads
    session = cpu_session(path, sess_options=options)
    first = session.get_inputs()[0]
    input_name, batch = first.name, first.shape[0]
    kind = "cpu_session" if type(session).__name__ == "CpuSession" else "onnxruntime cpu"
    return Runner(
        name or f"{kind}: {path.name}",
        graph_precision(path),
        run=lambda x: session.run(None, {input_name: x})[0],
        batches=(batch, batch) if isinstance(batch, int) else None,
    )


def _engine_runner(path: Path, plugin_library: str | None) -> Runner:
    from edge_biformer.runtime.engine import Engine

    precision = next((p for p in ("int8", "fp16", "fp32") if f".{p}." in path.name), "?")
    try:
        engine = Engine(path, plugin_library)
    except EdgeBiformerError as err:
        return Runner(f"tensorrt: {path.name}", precision, skipped=str(err))
    return Runner(
        f"tensorrt: {path.name}", precision, run=engine.run, gpu=engine.time_compute, close=engine.close,
        img_size=engine.image_size, batches=(int(engine.profile[0][0]), engine.max_batch),
    )  # fmt: skip


def _model_runners(args: argparse.Namespace, img_size: tuple[int, int], workdir: Path) -> list[Runner]:
    """PyTorch eager and the onnxruntime rows of our export and of the official pattern."""
    import torch

    from edge_biformer import create_model
    from edge_biformer.export import export_onnx

    overrides = ModelArgs.overrides(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = create_model(args.model, weights=args.weights, **overrides)
    runners = [Runner(f"pytorch eager ({args.model})", "fp32", run=_torch_run(model))]
    variants = [("index", "onnxruntime cpu: our export (index gather)")]
    if not args.no_official:
        variants.append(("expand", "onnxruntime cpu: official gather (Expand+GatherElements)"))
    for mode, name in variants:
        m = model
        if mode == "expand":
            m = create_model(args.model, weights=args.weights, gather_mode="expand", **overrides)
            m.load_state_dict(model.state_dict())  # the same weights, random ones included
        path = workdir / f"{args.model}_{mode}.onnx"
        with heartbeat(f"bench: exporting {args.model} ({mode} gather) for onnxruntime"):
            export_onnx(m, path, img_size=img_size, verify=False)
        runners.append(_onnx_runner(path, name, args.threads))
    return runners


def _torch_run(model: Any) -> Callable[[np.ndarray], Any]:
    import torch

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def machine() -> dict[str, Any]:
    """Where the numbers were measured: CPU, cores, versions, date."""
    from edge_biformer.manifest import tool_versions

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "versions": {k: v for k, v in tool_versions().items() if v},
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[Row], info: dict[str, Any]) -> str:
    """The results as a Markdown table (skipped rows listed below it with their reasons)."""
    versions = ", ".join(
        f"{k} {v}" for k, v in info["versions"].items() if k in ("torch", "onnxruntime", "tensorrt")
    )
    lines = [
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores"
        + (f", load average {info['load_average_1min']} at the end" if info.get("load_average_1min") else "")
        + f"), Python {info['python']}, {versions}. {info.get('setup', '')}".rstrip(),
        "",
        "| runtime | precision | batch | mean ms | p50 ms | p90 ms | p99 ms | images/s | GPU compute ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r.skipped is None:
            lines.append(
                f"| {r.runtime} | {r.precision} | {r.batch} | {_fmt(r.mean_ms)} | {_fmt(r.p50_ms)} | "
                f"{_fmt(r.p90_ms)} | {_fmt(r.p99_ms)} | {_fmt(r.throughput, 1)} | {_fmt(r.gpu_ms, 3)} |"
            )
    skipped = {(r.runtime, r.skipped) for r in rows if r.skipped is not None}
    if skipped:
        lines += ["", "Skipped:", ""]
        lines += [f"- {name}: {why}" for name, why in sorted(skipped)]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Run ``bench``."""
    if args.iters < 1 or args.warmup < 0:
        raise EdgeBiformerError("--iters must be at least 1 and --warmup at least 0")
    if args.duration is not None and args.duration <= 0:
        raise EdgeBiformerError(f"--duration must be positive, got {args.duration}")
    engines = [Path(e) for e in args.engine]
    if args.build:
        found = sorted(Path(args.build).glob("model.*.engine"))
        engines += found
    if not (args.model or args.onnx or engines or args.build):
        raise EdgeBiformerError("bench needs --model NAME, --onnx O.onnx, --engine E.engine or --build DIR")
    img_size = args.img_size
    with tempfile.TemporaryDirectory(prefix="edge-biformer-bench-") as tmp:
        runners: list[Runner] = []
        if args.model:
            img_size = img_size or (224, 224)
            runners += _model_runners(args, img_size, Path(tmp))
        for path in map(Path, args.onnx):
            if not path.is_file():
                raise EdgeBiformerError(f"--onnx {path} does not exist")
            runners.append(_onnx_runner(path, threads=args.threads))
            if img_size is None:
                from edge_biformer.onnx_io import image_size

                img_size = image_size(path)
        for path in engines:
            runners.append(_engine_runner(path, args.plugin_library))
        if args.build and not engines:
            runners.append(
                Runner(
                    "tensorrt", "-", skipped=f"no model.*.engine in {args.build} (built on the target GPU)"
                )
            )
        if not engines and not args.build:
            from edge_biformer.engine.tensorrt import missing_reason

            why = missing_reason() or "no --engine or --build given"
            runners.append(Runner("tensorrt", "-", skipped=why))
        if img_size is None:  # engines only: their input size
            img_size = next((r.img_size for r in runners if r.img_size is not None), (224, 224))
        rows: list[Row] = []
        inputs = {b: _inputs(img_size, b) for b in args.batch}
        for runner in runners:
            for b in args.batch:
                refused = runner.skipped or runner.refuses(b)
                if refused is not None:
                    rows.append(Row(runner.name, b, runner.precision, skipped=refused))
                    continue
                try:
                    row = time_runner(runner, inputs[b], args.warmup, args.iters, args.duration)
                except EdgeBiformerError as err:
                    if "NaN/Inf" in str(err):
                        raise
                    rows.append(Row(runner.name, b, runner.precision, skipped=str(err)))
                    continue
                rows.append(row)
                log(
                    f"bench {runner.name:<48s} batch {b:>3d}  mean {row.mean_ms:8.2f} ms  "
                    f"p50 {row.p50_ms:8.2f}  p99 {row.p99_ms:8.2f}  {row.throughput:8.1f} images/s"
                )
            runner.close()
    info = machine()
    info["setup"] = (
        f"Input {img_size[0]}x{img_size[1]} (demo photographs), {args.warmup} warm-up runs, "
        + (f"{args.duration:g} s per row" if args.duration else f"{args.iters} timed runs per row")
        + (
            f", {args.threads} thread{'s' if args.threads > 1 else ''} (torch, onnxruntime)"
            if args.threads
            else ""
        )
        + "."
    )
    table = markdown(rows, info)
    print(table, end="")
    for name, why in dict.fromkeys((r.runtime, r.skipped) for r in rows if r.skipped is not None):
        log(f"skipped {name}: {why}")
    if args.markdown:
        with atomic_output(args.markdown, suffix=".md") as tmp_md:
            tmp_md.write_text(table)
        log(f"table -> {args.markdown}")
    if args.json:
        with atomic_output(args.json, suffix=".json") as tmp_json:
            tmp_json.write_text(
                json.dumps({"machine": info, "rows": [asdict(r) for r in rows]}, indent=2) + "\n"
            )
        log(f"results -> {args.json}")
    return 0
