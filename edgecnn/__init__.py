"""edgecnn: classic CNNs from PyTorch to the edge.

Importing ``edgecnn`` itself is cheap and never imports torch: the PyTorch side lives in
``edgecnn.models`` / ``edgecnn.ops``, the exporter in ``edgecnn.export`` and the torch-free
inference wrapper in ``edgecnn.runtime``.
"""

__version__ = "0.1.0"

from edgecnn.errors import BadInput, CheckFailed, EdgecnnError

__all__ = ["__version__", "BadInput", "CheckFailed", "EdgecnnError"]
