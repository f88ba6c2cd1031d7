"""edgecnn.export: PyTorch -> ONNX, quantization and parity comparison (the torch side)."""

from edgecnn.export.exporter import ExportResult, build_model, export_model, to_onnx
from edgecnn.export.parity import ParityMetrics, compare

__all__ = ["ExportResult", "ParityMetrics", "build_model", "compare", "export_model", "to_onnx"]
