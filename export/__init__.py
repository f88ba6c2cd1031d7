"""edgecnn.export: PyTorch -> ONNX, quantization and parity comparison (the torch side)."""

from edgecnn.export.exporter import ExportResult, build_model, export_model, to_onnx
from edgecnn.export.parity import ParityMetrics, compare
from edgecnn.export.quantize import QuantizeResult, quantize_model

__all__ = ["ExportResult", "ParityMetrics", "QuantizeResult", "build_model", "compare",
           "export_model", "quantize_model", "to_onnx"]
