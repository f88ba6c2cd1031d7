"""edgecnn.runtime: run exported models with numpy + onnxruntime only (never torch).

This package is what ships to a device. It must not import torch, edgecnn.models or
edgecnn.export, directly or indirectly; a test enforces it.
"""

from edgecnn.runtime.metadata import METADATA_KEY, InputInfo, ModelMetadata
from edgecnn.runtime.session import load_session

__all__ = ["METADATA_KEY", "InputInfo", "ModelMetadata", "load_session"]
