"""Triton Python-backend models that ``serve-repo`` copies into a repository as ``<model>/1/model.py``.

They run inside Triton's Python backend stub, not in this package: each imports only numpy,
onnxruntime and Pillow (and ``edge_biformer.runtime.cpu`` for graphs with plugin nodes), and reads its
settings from the ``parameters`` of its ``config.pbtxt``.
"""

from pathlib import Path

#: The folder of the model files (``classifier.py``, ``preprocess.py``).
FOLDER = Path(__file__).resolve().parent
