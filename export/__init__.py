"""edgecnn.export: PyTorch -> ONNX, quantization and parity comparison (the torch side).

Names are imported on first use, so ``edgecnn quantize`` and ``edgecnn.export.parity`` do not
pay for importing torch and the exporter.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ExportResult": "exporter", "build_model": "build", "export_model": "exporter",
    "to_onnx": "exporter", "ParityMetrics": "parity", "compare": "parity",
    "QuantizeResult": "quantize", "quantize_model": "quantize",
    "check_onnx": "check", "check_parity": "check", "CheckReport": "check_report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
