"""Creating onnxruntime sessions with clear errors. Torch-free."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import onnxruntime as ort

from edgecnn.errors import BadInput
from edgecnn.runtime import deform
from edgecnn.runtime.model_file import opset_domains

# Fatal messages only: onnxruntime also logs errors it recovers from (a provider library that
# does not load, a cuDNN plan it skips), and edgecnn reports what matters itself: failures as
# BadInput, a requested provider that did not start as a warning or BadInput with the reason.
ort.set_default_logger_severity(4)

# onnxruntime's notice when a provider fails and it retries with the rest of the list:
# "EP Error <source>:<line> <function>(<args>) <reason>" (the reason is what a user can act on).
_EP_ERROR = re.compile(r"^EP Error (?:\S+:\d+ [^(]*\([^)]*\) )?(?P<reason>.+)$")


def load_session(model: str | os.PathLike | bytes, providers: list | None = None,
                 threads: int | None = None, options: ort.SessionOptions | None = None,
                 provider_errors: list[str] | None = None) -> ort.InferenceSession:
    """An InferenceSession on ``model`` (a path or serialized bytes); BadInput when unreadable.

    A file that uses the ai.edgecnn::DeformConv2d op gets its decomposed lowering when this
    onnxruntime has no DeformConv kernel (``model_source``). When a provider fails to start
    and onnxruntime falls back to the others, its reason is appended to ``provider_errors``
    (given a list) instead of onnxruntime's multi-line notice on stdout.
    """
    if not isinstance(model, bytes):
        path = Path(model)
        if not path.is_file():
            raise BadInput(f"model file not found: {path}")
        if path.stat().st_size == 0:
            raise BadInput(f"model file is empty: {path}")
        model, _ = model_source(path)
    options = options or ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise BadInput(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    notice = io.StringIO()  # onnxruntime prints its provider fallback notice (see _EP_ERROR)
    try:
        with contextlib.redirect_stdout(notice):
            session = ort.InferenceSession(model, options,
                                           providers=providers or ["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        source = "model" if isinstance(model, bytes) else model
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BadInput(f"cannot load {source} as an ONNX model: {first_line[:300]}") from None
    if provider_errors is not None:
        provider_errors.extend(match["reason"][:300] for line in notice.getvalue().splitlines()
                               if (match := _EP_ERROR.match(line.strip())))
    return session


def model_source(path: str | os.PathLike) -> tuple[str | bytes, bool]:
    """What to create the session from: the path, or bytes with the DeformConv lowering swapped.

    Models that use the ai.edgecnn::DeformConv2d custom op carry a function body built on the
    standard DeformConv; an onnxruntime without a DeformConv kernel gets the decomposed body
    (older standard ops only) instead. Returns (source, swapped).
    """
    if deform.DOMAIN not in opset_domains(path):
        return str(path), False  # load_session reports missing and unreadable files
    if deform.onnxruntime_has_deformconv():
        return str(path), False
    try:
        import onnx
    except ImportError:
        raise BadInput(f"{path} uses the {deform.DOMAIN}::{deform.OP_TYPE} op and this onnxruntime "
                       "has no DeformConv kernel; install the onnx package so edgecnn can "
                       "switch it to the decomposed lowering") from None
    model = deform.set_deform_lowering(onnx.load(str(path)), "decomposed")
    return model.SerializeToString(), True
