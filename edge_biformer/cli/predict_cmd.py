"""``edge-biformer predict``: top-k classes (classifiers) or output statistics (dense outputs) of images
with an engine or an ONNX graph."""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path
from typing import Any

from edge_biformer.cli.args import ImageSizeArgs, RuntimeArgs, add_groups
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.utils import atomic_output, log


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``predict``."""
    parser = subparsers.add_parser(
        "predict",
        help="top-k classes (or output statistics) of images with a TensorRT engine or an ONNX graph (CPU)",
        description=(
            "Preprocess images as the model's build recorded (its --preprocess recipe; without a record, "
            "the official evaluation transform) at its input size, run them through a TensorRT engine or "
            "an ONNX graph (onnxruntime on the CPU, plugin graphs included; the graph's own input name and "
            "channels) and print the top-k classes of a classifier, or for models with dense outputs "
            "(detector heads, maps) the name, shape and min/max/mean of every output. Folders are searched "
            "recursively; unreadable images are skipped with a message. Without SOURCE, the built-in demo "
            "photographs are used."
        ),
    )
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--engine", metavar="E.engine", help="TensorRT engine (needs TensorRT and a GPU)")
    model.add_argument("--onnx", metavar="O.onnx", help="ONNX graph, run on the CPU (plugin graphs too)")
    parser.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="image files, folders (recursive) or globs (quote them); default: the built-in demo photographs",
    )
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per image (default 5)")
    parser.add_argument("--batch", type=int, metavar="N", help="images per run (default 8)")
    parser.add_argument("--json", metavar="PATH", help="also write the predictions as JSON (- for stdout)")
    parser.add_argument(
        "--save-input",
        metavar="PATH.npy",
        help="write the preprocessed N x C x H x W float32 tensors (input of samples/cpp/classify)",
    )
    add_groups(parser, [ImageSizeArgs(help="input size, where no manifest records it"), RuntimeArgs()])
    parser.set_defaults(func=run)
    return parser


def collect_images(sources: list[str]) -> tuple[list[str], list[tuple[str, str]], int]:
    """``(image paths, [(source, why skipped)], non-image files ignored)`` for files, folders and globs."""
    from edge_biformer.calib import IMAGE_EXTENSIONS

    images: list[str] = []
    missing: list[tuple[str, str]] = []
    ignored = 0
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
            for p in found:
                if p.suffix.lower() in IMAGE_EXTENSIONS:
                    images.append(str(p))
                else:
                    ignored += 1
        elif path.is_file():
            images.append(str(path))  # named explicitly: tried whatever its extension
        elif glob.has_magic(source):
            matches = sorted(m for m in glob.glob(source, recursive=True) if Path(m).is_file())
            if not matches:
                missing.append((source, "the pattern matches no file"))
            images.extend(matches)
        else:
            missing.append((source, "no such file or folder"))
    return images, missing, ignored


class _Progress:
    """A progress line on stderr: redrawn in place on a terminal, a line per tenth otherwise."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.tty = sys.stderr.isatty()
        self._last_tenth = 0

    def __call__(self, n: int) -> None:
        self.done += n
        if self.total < 2:
            return
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        text = f"[edge-biformer] predict: {self.done}/{self.total} images ({rate:.1f} images/s)"
        if self.tty:
            end = "\n" if self.done >= self.total else ""
            print(f"\r{text}", end=end, file=sys.stderr, flush=True)
        elif self.done * 10 // self.total > self._last_tenth or self.done >= self.total:
            self._last_tenth = self.done * 10 // self.total
            print(text, file=sys.stderr, flush=True)


def _format(prediction: Any, width: int) -> str:
    """One line per image: its top-k classes, else each output's name, shape and min/max/mean."""
    from edge_biformer.runtime.predictor import summary

    name = prediction.source
    if prediction.top:
        classes = "  ".join(f"{c.probability:6.1%} {c.label}" for c in prediction.top)
        return f"  {name:<{width}s}  {classes}"
    parts = []
    for output, value in prediction.outputs.items():
        s = summary(value)
        parts.append(f"{output} {s['shape']} min {s['min']:.4g} max {s['max']:.4g} mean {s['mean']:.4g}")
    return f"  {name:<{width}s}  " + "  |  ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Run ``predict``."""
    import numpy as np

    from edge_biformer.runtime.predictor import Predictor

    if args.top_k < 1:
        raise EdgeBiformerError(f"--top-k must be at least 1, got {args.top_k}")
    if args.batch is not None and args.batch < 1:
        raise EdgeBiformerError(f"--batch must be at least 1, got {args.batch}")
    sources = list(args.sources)
    demo = not sources
    if demo:
        from edge_biformer.calib import demo_photos

        sources = [str(p) for p in demo_photos()]
        log(
            f"no SOURCE: predicting the built-in demo photographs ({len(sources)}, bundled with scikit-image)"
        )
    images, missing, ignored = collect_images(sources)
    for source, why in missing:
        log(f"skipped {source}: {why}")
    if not images:
        raise EdgeBiformerError(
            f"no image to predict in {' '.join(args.sources)}: give image files (JPEG, PNG, WebP, BMP, "
            "TIFF), folders holding them, or quoted globs"
        )
    model = args.engine or args.onnx
    predictor = Predictor(
        model,
        plugin_library=args.plugin_library,
        labels=args.labels,
        top_k=args.top_k,
        batch_size=args.batch,
        img_size=args.img_size,
    )
    log(
        f"predict: {model} ({predictor.backend}), {len(images)} images, batch {predictor.batch_size}, "
        f"preprocess: {predictor.preprocessing.describe()}"
        + (f", {ignored} non-image files ignored" if ignored else "")
    )
    from edge_biformer.manifest import model_fields

    if model_fields(predictor.manifest).get("random_weights") or predictor.build_manifest.get(
        "random_weights"
    ):
        log(
            f"{model} has RANDOM WEIGHTS (exported without --weights): the classes below are meaningless; "
            "export a trained checkpoint to classify"
        )
    skipped: list[tuple[str, str]] = []
    predictions = []
    progress = _Progress(len(images))
    width = min(max(len(p) for p in images), 60)
    start = time.perf_counter()
    saved: list[Any] | None = [] if args.save_input else None

    def skip(path: str, why: str) -> None:
        skipped.append((path, why))
        log(f"skipped {why}")

    try:
        for prediction in predictor.predict_files(images, on_skip=skip, on_batch=progress, inputs=saved):
            predictions.append(prediction)
            print(_format(prediction, width), flush=True)
    finally:
        predictor.close()
    seconds = time.perf_counter() - start
    if args.save_input and saved:
        with atomic_output(args.save_input, suffix=".npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.stack(saved))
        h, w = saved[0].shape[1:]
        c = saved[0].shape[0]
        log(f"preprocessed inputs -> {args.save_input} ({len(saved)} x {c} x {h} x {w} float32)")
    labels = f", labels: {predictor.labels_source}" if predictor.labels_source else ""
    log(
        f"predicted {len(predictions)} of {len(images)} images in {seconds:.2f} s"
        + (f", {len(skipped)} unreadable skipped" if skipped else "")
        + labels
    )
    if args.json:
        report = {
            "model": str(model),
            "backend": predictor.backend,
            "input": predictor.input_name,
            "preprocess": predictor.preprocessing.to_dict(),
            "labels": predictor.labels_source,
            "predictions": [p.to_dict() for p in predictions],
            "skipped": [{"source": s, "reason": r} for s, r in [*missing, *skipped]],
        }
        text = json.dumps(report, indent=2) + "\n"
        if args.json != "-":
            with atomic_output(args.json, suffix=".json") as tmp:
                tmp.write_text(text)
            log(f"predictions -> {args.json}")
    if not predictions:
        raise EdgeBiformerError(
            f"none of the {len(images)} images could be read (first: {skipped[0][1] if skipped else '?'}); "
            "give JPEG, PNG, WebP, BMP or TIFF files"
        )
    log("next:")
    flag = "--engine" if args.engine else "--onnx"
    print(f"  edge-biformer serve-repo {flag} {model} --output model_repository --ensemble", flush=True)
    print(f"  edge-biformer bench {flag} {model} --batch 1,8", flush=True)
    if args.json == "-":  # last, so that stdout ends with one JSON document
        sys.stdout.write(text)
    return 0
