"""Images in, outputs out: the preprocessing recorded for a model, its runtime, and the postprocessing.

::

    from edge_biformer.runtime import Predictor

    predictor = Predictor("tiny-int8/model.int8.engine")      # or any .onnx, on the CPU
    for p in predictor.predict(["cat.jpg", "dog.png"]):
        print(p.source, p.top[0].label, p.top[0].probability)  # a classifier
        print({name: v.shape for name, v in p.outputs.items()})  # every output, by name

* **Runtime** by the file: a ``.engine`` runs in TensorRT (:class:`~edge_biformer.runtime.engine.Engine`),
  an ``.onnx`` in onnxruntime on the CPU through :func:`~edge_biformer.runtime.cpu.cpu_session`, which
  also runs rewritten graphs (the plugin op in Python) and FP16/INT8 graphs at the right optimisation
  level. The graph's own input (name, channel count, static batch) is fed, as
  :func:`edge_biformer.onnx_io.graph_interface` reads it, so graphs of one's own (``build --onnx``) run too.
* **Preprocessing** (:class:`~edge_biformer.runtime.preprocessing.Preprocessing`): the build's recorded
  :class:`~edge_biformer.calib.preprocess.Preprocess` recipe (the manifest's ``preprocess``), read by
  :func:`~edge_biformer.runtime.preprocessing.read_preprocessing`; without a record, the ``imagenet``
  preset (the official evaluation transform), at the input size the manifests record, else the graph's or
  engine's static input size.
* **Postprocessing** by the output kind: every output is returned by name (:attr:`Prediction.outputs`);
  the classifier output (the one rank-2 ``N x C`` output, ``num_classes`` not 0) also gives the softmax
  top-k with names (:func:`~edge_biformer.runtime.labels.resolve_labels`); dense outputs (detector heads,
  segmentation maps, feature maps) are left as arrays.

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
    "OutputInfo",
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


@dataclass(frozen=True)
class OutputInfo:
    """One output of the model: its name, shape (``N`` or ``?`` for dynamic dims) and kind.

    ``kind`` is ``classifier`` for a rank-2 ``[N, classes]`` output, else ``dense`` (feature maps,
    detection heads, segmentation maps), as :func:`edge_biformer.onnx_io.output_kind` says and build
    manifests record.
    """

    name: str
    shape: tuple[int | str, ...]
    kind: str


@dataclass
class Prediction:
    """What the model says about one image: every output by name, and the top-k of a classifier.

    ``outputs`` holds this image's slice of each output (``outputs[name]`` has the output's shape
    without the batch dim). ``top`` is filled for the model's classifier output (see
    :attr:`Predictor.classifier_output`), empty otherwise.
    """

    source: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    top: list[ClassScore] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: the top-k, and each output as its shape and min/max/mean."""
        data: dict[str, Any] = {"source": self.source}
        if self.top:
            data["top"] = [
                {"index": c.index, "label": c.label, "probability": c.probability, "logit": c.logit}
                for c in self.top
            ]
        data["outputs"] = {name: summary(value) for name, value in self.outputs.items()}
        return data


def summary(value: np.ndarray) -> dict[str, Any]:
    """``{shape, min, max, mean}`` of an array (what ``predict`` prints for a dense output)."""
    v = np.asarray(value)
    stats = v.astype(np.float64) if v.size else np.zeros(1)
    return {
        "shape": list(v.shape),
        "min": float(stats.min()),
        "max": float(stats.max()),
        "mean": float(stats.mean()),
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _shape(dims: Sequence[Any]) -> tuple[int | str, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else ("N" if i == 0 else "?") for i, d in enumerate(dims))


class _OnnxRuntime:
    """An ONNX graph in onnxruntime on the CPU (plugin nodes included), at a static or dynamic batch."""

    def __init__(self, path: Path) -> None:
        from onnx import TensorProto

        from edge_biformer.onnx_io import graph_interface, output_kind
        from edge_biformer.runtime.cpu import cpu_session

        io = graph_interface(path)
        self.session = cpu_session(path)
        self.input_name = io.input.name
        self.input_dtype = np.float16 if io.input.elem_type == TensorProto.FLOAT16 else np.float32
        self.channels = io.channels
        self.static_batch = io.static_batch
        self.image_size = io.image_size
        self.outputs = [OutputInfo(o.name, _shape(o.dims), output_kind(o)) for o in io.outputs]
        self.kind = "cpu_session" if type(self.session).__name__ == "CpuSession" else "onnxruntime"

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        feed = {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)}
        return [np.asarray(o) for o in self.session.run(None, feed)]

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        if self.static_batch is None:
            return dict(zip(names, self._run(x), strict=True))
        n, b = x.shape[0], self.static_batch
        chunks: list[list[np.ndarray]] = []
        for start in range(0, n, b):
            chunk = x[start : start + b]
            if chunk.shape[0] < b:  # pad a short last chunk to the graph's static batch
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - chunk.shape[0], axis=0)])
            chunks.append(self._run(chunk))
        return {name: np.concatenate([c[i] for c in chunks])[:n] for i, name in enumerate(names)}

    def close(self) -> None:
        self.session = None


class _TensorRTRuntime:
    def __init__(self, path: Path, plugin_library: str | os.PathLike[str] | None) -> None:
        from edge_biformer.runtime.engine import Engine

        self.engine = Engine(path, plugin_library)
        self.image_size: tuple[int, int] | None = self.engine.image_size
        self.channels = int(self.engine.input.shape[1])
        self.input_name = self.engine.input.name
        self.outputs = [
            OutputInfo(t.name, _shape(t.shape), "classifier" if len(t.shape) == 2 else "dense")
            for t in self.engine.outputs
        ]
        self.kind = "tensorrt"

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.engine.run_all(x)

    def close(self) -> None:
        self.engine.close()


class Predictor:
    """Preprocess images, run an engine or ONNX graph, and return every output (and a classifier's top-k).

    The graph's own input name and channel count are fed (a graph of one's own, ``build --onnx``, has
    its own); every output comes back by name. Top-k postprocessing applies to the classifier output:
    the one rank-2 ``[N, classes]`` output (kind ``classifier`` in the build manifest) of a model with
    ``num_classes`` not 0. Dense outputs (detector heads, maps, features) are returned as arrays.

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
            self.manifest,
            self.build_manifest,
            img_size or self.runtime.image_size,
            channels=self.runtime.channels,
            artifact=self.path,
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
        recorded = {
            o.get("name"): o.get("kind")
            for o in self.build_manifest.get("outputs") or []
            if isinstance(o, Mapping)
        }
        #: The model's outputs, in graph order (kinds as the build manifest records them, else by rank).
        self.outputs: list[OutputInfo] = [
            dataclasses.replace(o, kind=recorded.get(o.name) or o.kind) for o in self.runtime.outputs
        ]
        classifiers = [o.name for o in self.outputs if o.kind == "classifier" and len(o.shape) == 2]
        #: The output top-k is computed on (``None``: none, or more than one rank-2 output).
        self.classifier_output: str | None = (
            classifiers[0] if len(classifiers) == 1 and self.num_classes_config != 0 else None
        )

    @property
    def backend(self) -> str:
        """``tensorrt``, ``onnxruntime`` or ``cpu_session``."""
        return self.runtime.kind

    @property
    def input_name(self) -> str:
        """The name of the graph's (engine's) image input."""
        return str(self.runtime.input_name)

    def labels(self, num_classes: int) -> list[str]:
        """The class names (resolved once)."""
        if self._labels is None or len(self._labels) != num_classes:
            from edge_biformer.runtime.labels import resolve_labels

            self._labels, self.labels_source = resolve_labels(num_classes, self.manifest, self._labels_arg)
        return self._labels

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name for a preprocessed ``N x C x H x W`` batch; NaN/Inf is an error."""
        outputs = self.runtime(np.ascontiguousarray(batch, dtype=np.float32))
        for name, out in outputs.items():
            finite = np.isfinite(out) if np.issubdtype(out.dtype, np.inexact) else np.ones(1, bool)
            if not finite.all():
                bad = int((~finite).sum())
                raise EdgeBiformerError(
                    f"{self.path} returned {bad} NaN/Inf values in its output '{name}' for a batch of "
                    f"{batch.shape[0]}: the model or its runtime is broken (check it with "
                    "`edge-biformer check` on its build folder)"
                )
        return outputs

    def postprocess(self, outputs: Mapping[str, np.ndarray], sources: Sequence[str]) -> list[Prediction]:
        """One :class:`Prediction` per image: its slice of every output, top-k of the classifier output."""
        predictions = [
            Prediction(source=s, outputs={name: value[i] for name, value in outputs.items()})
            for i, s in enumerate(sources)
        ]
        if self.classifier_output is None:
            return predictions
        logits = np.asarray(outputs[self.classifier_output], dtype=np.float32)
        names = self.labels(logits.shape[1])
        probs = softmax(logits)
        k = min(self.top_k, logits.shape[1])
        for p, logit, prob in zip(predictions, logits, probs, strict=True):
            order = np.argsort(-prob, kind="stable")[:k]
            p.top = [ClassScore(int(i), names[int(i)], float(prob[i]), float(logit[i])) for i in order]
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
        runs = [self.infer(batch[i : i + self.batch_size]) for i in range(0, len(batch), self.batch_size)]
        if not runs:
            return []
        outputs = {name: np.concatenate([r[name] for r in runs]) for name in runs[0]}
        return self.postprocess(outputs, names)

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
