"""edgecnn.runtime: run exported models with numpy + onnxruntime only (never torch).

This package is what ships to a device. It must not import torch, edgecnn.models or
edgecnn.export, directly or indirectly; a test enforces it.

    from edgecnn.runtime import Engine
    print(Engine("resnet18.onnx").predict("cat.jpg", top_k=5))
"""

from edgecnn.runtime.engine import Engine, TensorSpec
from edgecnn.runtime.metadata import METADATA_KEY, InputInfo, ModelMetadata
from edgecnn.runtime.session import load_session

# Imported on first use: Pillow is only needed for images, and bench only by `edgecnn bench`.
_LAZY = {"preprocess_images": "edgecnn.runtime.preprocess",
         "benchmark": "edgecnn.runtime.bench"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgecnn.runtime' has no attribute {name!r}")


__all__ = ["METADATA_KEY", "Engine", "InputInfo", "ModelMetadata", "TensorSpec", "benchmark",
           "load_session", "preprocess_images"]
