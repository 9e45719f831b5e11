"""edge-biformer: BiFormer and DeBiFormer from PyTorch to TensorRT.

Public API::

    import edge_biformer
    model = edge_biformer.create_model("biformer_tiny", weights="biformer_tiny_best.pth")
    edge_biformer.list_models()  # ['biformer_base', ..., 'debiformer_tiny']
    session = edge_biformer.cpu_session("model.plugin.onnx")  # onnxruntime, plugin nodes included
    edge_biformer.build(my_yolo, torch.rand(1, 3, 640, 640), precision="int8", output="out",
                        calib_data="images/", preprocess="yolo")  # a module of one's own, end to end
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "build", "cpu_session", "create_model", "list_models"]

if TYPE_CHECKING:
    from edge_biformer.api import build
    from edge_biformer.models import create_model, list_models
    from edge_biformer.runtime import cpu_session


def __getattr__(name: str) -> Any:
    # Lazy: `import edge_biformer` stays cheap (no torch import) for the CLI's --help and tools.
    if name in ("create_model", "list_models"):
        from edge_biformer import models

        return getattr(models, name)
    if name == "build":
        from edge_biformer.api import build

        return build
    if name == "cpu_session":
        from edge_biformer.runtime import cpu_session

        return cpu_session
    raise AttributeError(f"module 'edge_biformer' has no attribute {name!r}")
