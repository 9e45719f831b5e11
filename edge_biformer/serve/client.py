"""A ``tritonclient`` client of the repositories ``serve-repo`` writes, over HTTP or gRPC.

::

    from edge_biformer.serve.client import TritonClassifier

    client = TritonClassifier("127.0.0.1:8000", "biformer_ensemble")              # HTTP
    client = TritonClassifier("127.0.0.1:8001", "biformer", protocol="grpc")      # gRPC
    logits = client.infer_tensors(batch)            # N x 3 x H x W float32 (the model itself)
    logits = client.infer_images(["cat.jpg"])       # encoded files (the ensemble)
    top = client.classify_images(["cat.jpg"], k=5)  # Triton's classification extension: labels.txt

Command line (prints the top-5 of each image)::

    python -m edge_biformer.serve.client --url 127.0.0.1:8000 --model biformer_ensemble cat.jpg dog.png
    python -m edge_biformer.serve.client --url 127.0.0.1:8001 --grpc --model biformer --random
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_biformer.errors import EdgeBiformerError

__all__ = ["TritonClassifier", "main"]


def _client_module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as err:
        raise EdgeBiformerError(
            f"the Triton client needs tritonclient ({err}): pip install 'tritonclient[grpc,http]' "
            "(the [serve] "
            "extra of edge-biformer)"
        ) from None
    return module


class TritonClassifier:
    """One connection to a served model (not shared between threads: make one client per thread)."""

    def __init__(self, url: str, model: str, protocol: str = "http", timeout: float = 60.0) -> None:
        if protocol not in ("http", "grpc"):
            raise EdgeBiformerError(f"protocol must be http or grpc, got {protocol!r}")
        self.module = _client_module(protocol)
        self.protocol, self.model, self.timeout = protocol, model, timeout
        if protocol == "http":
            self.client = self.module.InferenceServerClient(
                url, connection_timeout=timeout, network_timeout=timeout
            )
        else:
            self.client = self.module.InferenceServerClient(url)
        try:
            metadata = self.client.get_model_metadata(model)
        except Exception as err:
            raise EdgeBiformerError(
                f"model {model!r} is not available at {url} ({protocol}): {err}"
            ) from None
        if protocol == "grpc":
            self.inputs = [(t.name, t.datatype) for t in metadata.inputs]
            self.outputs = [t.name for t in metadata.outputs]
        else:
            self.inputs = [(t["name"], t["datatype"]) for t in metadata["inputs"]]
            self.outputs = [t["name"] for t in metadata["outputs"]]

    def _infer(self, array: np.ndarray, datatype: str, class_count: int = 0) -> np.ndarray:
        name = self.inputs[0][0]
        tensor = self.module.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        wanted = self.module.InferRequestedOutput(self.outputs[0], class_count=class_count)
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        result = self.client.infer(self.model, [tensor], outputs=[wanted], **kwargs)
        return result.as_numpy(self.outputs[0])

    def infer_tensors(self, batch: np.ndarray) -> np.ndarray:
        """Outputs for preprocessed ``N x 3 x H x W`` float32 tensors (a model that takes tensors)."""
        return np.asarray(
            self._infer(np.ascontiguousarray(batch, dtype=np.float32), "FP32"), dtype=np.float32
        )

    @staticmethod
    def _encoded(images: Sequence[str | Path | bytes]) -> np.ndarray:
        data = [item if isinstance(item, bytes) else Path(item).read_bytes() for item in images]
        return np.array(data, dtype=np.object_).reshape(len(data), 1)

    def infer_images(self, images: Sequence[str | Path | bytes]) -> np.ndarray:
        """Outputs for encoded image files or bytes (the ``_ensemble`` model, which preprocesses them)."""
        return np.asarray(self._infer(self._encoded(images), "BYTES"), dtype=np.float32)

    def classify_images(
        self, images: Sequence[str | Path | bytes], k: int = 5
    ) -> list[list[tuple[float, int, str]]]:
        """Top-``k`` ``(score, index, label)`` per image, from Triton's classification extension."""
        raw = self._infer(self._encoded(images), "BYTES", class_count=k)
        rows = []
        for row in raw.reshape(len(images), -1):
            entries = []
            for item in row:
                score, index, *label = (item.decode() if isinstance(item, bytes) else str(item)).split(":", 2)
                entries.append((float(score), int(index), label[0] if label else str(index)))
            rows.append(entries)
        return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Print the top-k of images (or of a random tensor with ``--random``) from a served model."""
    parser = argparse.ArgumentParser(
        prog="python -m edge_biformer.serve.client",
        description="Query a model served from a serve-repo repository (HTTP or gRPC).",
    )
    parser.add_argument("images", nargs="*", help="image files (for an _ensemble model)")
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port (HTTP 8000, gRPC 8001 by default)")
    parser.add_argument("--model", required=True, help="model name (NAME_ensemble takes encoded images)")
    parser.add_argument("--grpc", action="store_true", help="use gRPC instead of HTTP")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument(
        "--random", action="store_true", help="send one seeded random tensor to a tensor model"
    )
    args = parser.parse_args(argv)
    try:
        client = TritonClassifier(args.url, args.model, "grpc" if args.grpc else "http")
        if args.random or not args.images:
            if client.inputs[0][1] == "BYTES":
                raise EdgeBiformerError(f"{args.model} takes encoded images: give image files")
            meta = client.client.get_model_metadata(args.model)
            shape = meta.inputs[0].shape if args.grpc else meta["inputs"][0]["shape"]
            x = np.random.default_rng(0).standard_normal((1, *[int(d) for d in shape[1:]])).astype(np.float32)
            out = client.infer_tensors(x)
            order = np.argsort(-out[0])[: args.top_k]
            print("random input: " + "  ".join(f"{int(i)}:{out[0][i]:.3f}" for i in order))
            return 0
        for image, top in zip(args.images, client.classify_images(args.images, args.top_k), strict=True):
            print(f"{image}: " + "  ".join(f"{score:.3f} {label}" for score, _, label in top))
    except EdgeBiformerError as err:
        print(f"edge-biformer client: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"edge-biformer client: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
