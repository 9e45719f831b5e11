"""Images in, classes out: the preprocessing recorded for a model, its runtime, and the postprocessing.

::

    from edge_biformer.runtime import Predictor

    predictor = Predictor("tiny-int8/model.int8.engine")      # or any .onnx, on the CPU
    for p in predictor.predict(["cat.jpg", "dog.png"]):
        print(p.source, p.top[0].label, p.top[0].probability)

* **Runtime** by the file: a ``.engine`` runs in TensorRT (:class:`~edge_biformer.runtime.engine.Engine`),
  an ``.onnx`` in onnxruntime on the CPU through :func:`~edge_biformer.runtime.cpu.cpu_session`, which
  also runs rewritten graphs (the plugin op in Python) and FP16/INT8 graphs at the right optimisation
  level.
* **Preprocessing** (:class:`~edge_biformer.runtime.preprocessing.Preprocessing`): what the manifests
  record, read by :func:`~edge_biformer.runtime.preprocessing.read_preprocessing` (the one reader of
  that record); without a record, the official evaluation transform our build uses
  (:func:`edge_biformer.calib.preprocess_image`: bicubic resize by ``crop_pct``, center crop, ImageNet
  mean/std) at the input size the manifests record, else the graph's or engine's static input size.
* **Postprocessing** by the model kind: a classifier (an ``N x C`` output, ``num_classes > 0``) gives
  the softmax top-k with names (:func:`~edge_biformer.runtime.labels.resolve_labels`); a backbone
  (``num_classes=0``, or a feature map output) gives its features.

Outputs with NaN or Inf are an error, never a prediction. A :class:`Predictor` is as thread-safe as its
runtime (onnxruntime sessions are; an :class:`Engine` serialises its runs).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.errors import EdgeBiformerError
from edge_biformer.runtime.preprocessing import Preprocessing, read_preprocessing

__all__ = [
    "ClassScore",
    "ImageReadError",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "artifact_manifests",
    "read_image",
]


class ImageReadError(EdgeBiformerError):
    """An image file that cannot be opened or decoded."""


def read_image(path: str | os.PathLike[str]) -> Any:
    """Open and decode an image file (a PIL image); :class:`ImageReadError` names the file otherwise."""
    from edge_biformer.calib.preprocess import require_pillow

    Image = require_pillow()
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except Exception as err:  # PIL raises many kinds for truncated or foreign files
        raise ImageReadError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


def artifact_manifests(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(side-car manifest, build manifest)`` of an artifact (``{}`` where absent)."""
    from edge_biformer.manifest import manifest_path, read_manifest

    path = Path(path)
    own = read_manifest(manifest_path(path)) or {}
    build = read_manifest(path.parent / "manifest.json") or {}
    if build.get("kind") != "build":
        build = {}
    return own, build


@dataclass(frozen=True)
class ClassScore:
    """One of the top-k classes of an image."""

    index: int
    label: str
    probability: float
    logit: float


@dataclass
class Prediction:
    """What the model says about one image: top-k classes (classifier) or features (backbone)."""

    source: str
    top: list[ClassScore] = field(default_factory=list)
    features: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (features as their shape and norm only)."""
        data: dict[str, Any] = {"source": self.source}
        if self.top:
            data["top"] = [
                {"index": c.index, "label": c.label, "probability": c.probability, "logit": c.logit}
                for c in self.top
            ]
        if self.features is not None:
            data["features"] = {
                "shape": list(self.features.shape),
                "l2_norm": float(np.linalg.norm(self.features)),
            }
        return data


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class _OnnxRuntime:
    """An ONNX graph in onnxruntime on the CPU (plugin nodes included), at a static or dynamic batch."""

    def __init__(self, path: Path) -> None:
        from edge_biformer.runtime.cpu import cpu_session

        self.session = cpu_session(path)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        dims = inp.shape[2:]
        self.image_size = (dims[0], dims[1]) if all(isinstance(d, int) for d in dims) else None
        self.kind = "cpu_session" if type(self.session).__name__ == "CpuSession" else "onnxruntime"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.static_batch is None:
            return np.asarray(self.session.run(None, {self.input_name: x})[0])
        n, b = x.shape[0], self.static_batch
        outs = []
        for start in range(0, n, b):
            chunk = x[start : start + b]
            if chunk.shape[0] < b:  # pad a short last chunk to the graph's static batch
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - chunk.shape[0], axis=0)])
            outs.append(np.asarray(self.session.run(None, {self.input_name: chunk})[0]))
        return np.concatenate(outs)[:n]

    def close(self) -> None:
        self.session = None


class _TensorRTRuntime:
    def __init__(self, path: Path, plugin_library: str | os.PathLike[str] | None) -> None:
        from edge_biformer.runtime.engine import Engine

        self.engine = Engine(path, plugin_library)
        self.image_size: tuple[int, int] | None = self.engine.image_size
        self.kind = "tensorrt"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.engine.run(x))

    def close(self) -> None:
        self.engine.close()


class Predictor:
    """Preprocess images, run an engine or ONNX graph, and return top-k classes or features.

    Args:
        model: a ``.engine`` (TensorRT) or ``.onnx`` (onnxruntime on the CPU, plugin graphs included).
        plugin_library: the plugin library for an engine (default: found as :class:`Engine` does).
        labels: a labels file (default :func:`~edge_biformer.runtime.labels.resolve_labels`).
        top_k: how many classes each prediction lists.
        batch_size: images per run (default 8, at most the engine profile's max).
        img_size: the input size, where neither the manifests nor the graph record it.

    Raises:
        EdgeBiformerError: the model file is missing or of an unknown kind, or its runtime cannot run here.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        plugin_library: str | os.PathLike[str] | None = None,
        labels: str | os.PathLike[str] | None = None,
        top_k: int = 5,
        batch_size: int | None = None,
        img_size: tuple[int, int] | None = None,
    ) -> None:
        self.path = Path(model)
        if not self.path.is_file():
            raise EdgeBiformerError(f"{self.path} does not exist: give an .onnx graph or a TensorRT .engine")
        if self.path.suffix == ".onnx":
            self.runtime: Any = _OnnxRuntime(self.path)
        elif self.path.suffix in (".engine", ".plan", ".trt"):
            self.runtime = _TensorRTRuntime(self.path, plugin_library)
        else:
            raise EdgeBiformerError(
                f"{self.path}: unknown model file type {self.path.suffix!r}; give an .onnx graph or a "
                "TensorRT .engine (.plan)"
            )
        self.manifest, self.build_manifest = artifact_manifests(self.path)
        self.preprocessing: Preprocessing = read_preprocessing(
            self.manifest, self.build_manifest, img_size or self.runtime.image_size
        )
        if img_size is not None:
            self.preprocessing = dataclasses.replace(
                self.preprocessing, img_size=(int(img_size[0]), int(img_size[1]))
            )
        self.top_k = int(top_k)
        limit = getattr(getattr(self.runtime, "engine", None), "max_batch", None)
        self.batch_size = int(batch_size or min(8, limit or 8))
        self._labels_arg = labels
        self._labels: list[str] | None = None
        self.labels_source: str | None = None
        config = self.manifest.get("config") or {}
        self.num_classes_config = config.get("num_classes") if isinstance(config, Mapping) else None

    @property
    def backend(self) -> str:
        """``tensorrt``, ``onnxruntime`` or ``cpu_session``."""
        return self.runtime.kind

    def labels(self, num_classes: int) -> list[str]:
        """The class names (resolved once)."""
        if self._labels is None or len(self._labels) != num_classes:
            from edge_biformer.runtime.labels import resolve_labels

            self._labels, self.labels_source = resolve_labels(num_classes, self.manifest, self._labels_arg)
        return self._labels

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Raw outputs for a preprocessed ``N x 3 x H x W`` batch; NaN/Inf is an error."""
        out = np.asarray(self.runtime(np.ascontiguousarray(batch, dtype=np.float32)), dtype=np.float32)
        if not np.isfinite(out).all():
            bad = int((~np.isfinite(out)).sum())
            raise EdgeBiformerError(
                f"{self.path} returned {bad} NaN/Inf values for a batch of {batch.shape[0]}: the model or "
                "its runtime is broken (check it with `edge-biformer check` on its build folder)"
            )
        return out

    def postprocess(self, outputs: np.ndarray, sources: Sequence[str]) -> list[Prediction]:
        """Top-k classes per row (classifier) or the feature rows (backbone)."""
        is_classifier = outputs.ndim == 2 and self.num_classes_config != 0
        if not is_classifier:
            return [Prediction(source=s, features=o) for s, o in zip(sources, outputs, strict=True)]
        names = self.labels(outputs.shape[1])
        probs = softmax(outputs)
        k = min(self.top_k, outputs.shape[1])
        predictions = []
        for s, logit, prob in zip(sources, outputs, probs, strict=True):
            order = np.argsort(-prob, kind="stable")[:k]
            top = [ClassScore(int(i), names[int(i)], float(prob[i]), float(logit[i])) for i in order]
            predictions.append(Prediction(source=s, top=top))
        return predictions

    def predict(self, images: Iterable[Any]) -> list[Prediction]:
        """Predictions for image paths, PIL images or ``H x W x 3`` uint8 arrays (unreadable files raise)."""
        items = list(images)
        sources = [
            str(i) if isinstance(i, (str, os.PathLike)) else f"image[{n}]" for n, i in enumerate(items)
        ]
        tensors = [
            self.preprocessing(read_image(i) if isinstance(i, (str, os.PathLike)) else i) for i in items
        ]
        return self.predict_tensors(np.stack(tensors), sources) if tensors else []

    def predict_tensors(self, batch: np.ndarray, sources: Sequence[str] | None = None) -> list[Prediction]:
        """Predictions for preprocessed tensors, run in batches of :attr:`batch_size`."""
        names = list(sources) if sources is not None else [f"input[{i}]" for i in range(len(batch))]
        outputs = [self.infer(batch[i : i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        return self.postprocess(np.concatenate(outputs), names) if outputs else []

    def predict_files(
        self,
        paths: Sequence[str | os.PathLike[str]],
        on_skip: Callable[[str, str], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
        inputs: list[np.ndarray] | None = None,
    ) -> Iterator[Prediction]:
        """Predictions for image files, a batch at a time; unreadable files are skipped and reported.

        ``on_skip(path, reason)`` is called for each file that cannot be read, ``on_batch(n)`` after each
        batch with the number of files it consumed (for a progress bar). ``inputs``, when given, receives
        each preprocessed tensor (what ``predict --save-input`` writes).
        """
        pending: list[tuple[str, np.ndarray]] = []
        consumed = 0

        def flush() -> Iterator[Prediction]:
            nonlocal consumed
            if pending:
                yield from self.predict_tensors(np.stack([t for _, t in pending]), [s for s, _ in pending])
            if on_batch is not None and consumed:
                on_batch(consumed)
            pending.clear()
            consumed = 0

        for path in paths:
            consumed += 1
            try:
                tensor = self.preprocessing(read_image(path))
            except EdgeBiformerError as err:
                if on_skip is not None:
                    on_skip(str(path), str(err))
            else:
                pending.append((str(path), tensor))
                if inputs is not None:
                    inputs.append(tensor)
            if len(pending) >= self.batch_size:
                yield from flush()
        yield from flush()

    def close(self) -> None:
        """Release the runtime (the engine's GPU memory)."""
        self.runtime.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
