"""Creating onnxruntime sessions with clear errors. Torch-free."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from edgecnn.errors import BadInput

ort.set_default_logger_severity(3)  # errors only: onnxruntime's warnings are not for users


def load_session(model: str | os.PathLike | bytes, providers: list | None = None,
                 threads: int | None = None,
                 options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An InferenceSession on ``model`` (a path or serialized bytes); BadInput when unreadable."""
    if not isinstance(model, bytes):
        path = Path(model)
        if not path.is_file():
            raise BadInput(f"model file not found: {path}")
        if path.stat().st_size == 0:
            raise BadInput(f"model file is empty: {path}")
        model = str(path)
    options = options or ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise BadInput(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        source = "model" if isinstance(model, bytes) else model
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BadInput(f"cannot load {source} as an ONNX model: {first_line[:300]}") from None
