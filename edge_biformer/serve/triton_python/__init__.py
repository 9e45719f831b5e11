"""Triton Python-backend models that ``serve-repo`` copies into a repository as ``<model>/1/model.py``.

They run inside Triton's Python backend stub, not in this package: ``classifier.py`` imports numpy and
onnxruntime (and ``edge_biformer.runtime.cpu`` for graphs with plugin nodes), ``preprocess.py`` Pillow
and ``edge_biformer.calib.preprocess`` (the recipe code itself, not a copy); each reads its settings
from the ``parameters`` of its ``config.pbtxt``.
"""

from pathlib import Path

#: The folder of the model files (``classifier.py``, ``preprocess.py``).
FOLDER = Path(__file__).resolve().parent
