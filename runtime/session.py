"""The one way edgecnn opens an onnxruntime session. Torch-free.

``open_session`` resolves the providers, applies the deformable-conv lowering swap, creates the
session with clear errors, and verifies that the provider asked for really started (one
fallback message). The Engine, ``edgecnn check``, ``bench`` and the quantizer all go through it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from typing import Iterator

import onnxruntime as ort

from edgecnn.errors import BadInput, first_line
from edgecnn.runtime import deform, openvino
from edgecnn.runtime import providers as provider_lib
from edgecnn.runtime.external_data import check_external_data
from edgecnn.runtime.function_calls import check_function_calls
from edgecnn.runtime.metadata import METADATA_KEY
from edgecnn.runtime.model_file import check_model_file, metadata_value, opset_domains

# Fatal messages only: onnxruntime also logs errors it recovers from (a provider library that
# does not load, a cuDNN plan it skips), and edgecnn reports what matters itself: failures as
# BadInput, a requested provider that did not start as a warning or BadInput with the reason.
LOG_SEVERITY = 4

# onnxruntime's notice when a provider fails and it retries with the rest of the list:
# "EP Error <source>:<line> <function>(<args>) <reason>" (the reason is what a user can act on).
_EP_ERROR = re.compile(r"^EP Error (?:\S+:\d+ [^(]*\([^)]*\) )?(?P<reason>.+)$")


@dataclass
class OpenedSession:
    session: ort.InferenceSession
    requested: list[provider_lib.ProviderEntry]  # what was asked of onnxruntime, in order
    deform_lowering_swapped: bool  # the DeformConv2d body was switched to the decomposed one

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()


def open_session(model: str | os.PathLike | bytes,
                 provider: provider_lib.ProviderRequest = "cpu", *, threads: int | None = None,
                 fallback: bool = True, options: ort.SessionOptions | None = None,
                 name: str | os.PathLike | None = None, **provider_options) -> OpenedSession:
    """A session on ``model`` (a path or serialized bytes) with ``provider``; ``name``: what
    an error calls the model (default its path, or "model" for bytes).

    provider: "auto", "cpu", "cuda", "tensorrt", "openvino" (``openvino:GPU``,
        ``openvino:bf16``: see edgecnn.runtime.openvino), an onnxruntime provider name, or a
        list of names / (name, options) pairs (see ``resolve_providers``; its keyword options
        device_id, fp16, cache_dir and tf32 pass through ``provider_options``).
    fallback: a provider asked for by name that is missing or does not start is a warning
        (True) or BadInput naming the reason (False).
    A file that uses the ai.edgecnn::DeformConv2d op gets its decomposed lowering when this
    onnxruntime has no DeformConv kernel.
    """
    auto = isinstance(provider, str) and provider.lower() == "auto"
    requested = provider_lib.resolve_providers(provider, fallback=fallback,
                                               **(model_traits(model) if auto else {}),
                                               **provider_options)
    if isinstance(model, bytes):
        check_external_data(model)  # refused: bytes have no folder to find it in
    source, swapped = (model, False) if isinstance(model, bytes) else model_source(model)
    options = options or ort.SessionOptions()
    if options.log_severity_level < 0:  # not set by the caller
        options.log_severity_level = LOG_SEVERITY
    if threads is not None:
        options.intra_op_num_threads = provider_lib.check_threads(threads)
    plugin = requested[0][0] == provider_lib.OPENVINO
    if plugin:  # a plugin provider comes through the options (providers=[...] would drop it)
        openvino.add_to_session(options, threads=threads, **requested[0][1])
    notice = io.StringIO()  # onnxruntime prints its provider fallback notice (see _EP_ERROR)
    try:
        with contextlib.redirect_stdout(notice), _native_stderr_kept_on_success():
            session = (ort.InferenceSession(source, options) if plugin else
                       ort.InferenceSession(source, options, providers=requested))
    except Exception as error:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        where = name if name is not None else "model" if isinstance(model, bytes) else model
        if plugin and "EP_FAIL" in str(error):
            raise BadInput(f"OpenVINO cannot compile {where}: "
                           f"{_last_line(error)}") from None
        raise BadInput(f"cannot load {where} as an ONNX model: {first_line(error)}") from None
    reasons = [match["reason"][:300] for line in notice.getvalue().splitlines()
               if (match := _EP_ERROR.match(line.strip()))]
    check_started(requested[0][0], session.get_providers(), explicit=not auto,
                  fallback=fallback, reasons=reasons)
    return OpenedSession(session, requested, swapped)


_KEPT_LOG_BYTES = 64 * 2**10  # of what onnxruntime's native code wrote while a session opened
# Descriptor 2 is the process's: two threads swapping it at once could leave it pointing at a
# deleted file, so sessions open one at a time.
_STDERR_SWAP = threading.Lock()


@contextlib.contextmanager
def _native_stderr_kept_on_success() -> Iterator[None]:
    """Hold what native code writes to file descriptor 2 while the block runs; pass it on to
    stderr (its last 64 KiB) when the block succeeds, drop it when it raises. onnxruntime
    logs some load failures (a tensor of 2**62 elements) through its process-wide logger,
    which no session option silences, in colour, before raising: the raised error is reported
    in its own one line, the log would be a second."""
    with _STDERR_SWAP, tempfile.TemporaryFile() as held:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no usable descriptor 2: nothing to hold
            yield
            return
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        size = held.seek(0, os.SEEK_END)
        held.seek(max(0, size - _KEPT_LOG_BYTES))
        log = held.read()
    if log:
        os.write(2, log)


def model_traits(model: str | os.PathLike | bytes) -> dict:
    """What the "auto" provider rule reads of a model (see providers.auto_order): its precision
    from the edgecnn metadata (None without it) and whether it uses the deformable-conv op.
    Read from the file's top-level fields; nothing is loaded."""
    if not isinstance(model, bytes):
        check_model_file(model)  # a FIFO would block the read
    metadata = metadata_value(model, METADATA_KEY)
    try:
        precision = json.loads(metadata).get("precision") if metadata else None
    except (ValueError, AttributeError, RecursionError):  # malformed: the Engine reports it
        precision = None
    return {"precision": precision if isinstance(precision, str) else None,
            "deformable": deform.DOMAIN in opset_domains(model)}


def _last_line(error: Exception) -> str:
    """OpenVINO's reason: the last line of its stack of "Exception from file:line" lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def load_session(model: str | os.PathLike | bytes,
                 providers: provider_lib.ProviderRequest | None = None,
                 **options) -> ort.InferenceSession:
    """``open_session(model, providers, **options).session``: the bare InferenceSession (CPU
    unless ``providers``)."""
    return open_session(model, "cpu" if providers is None else providers, **options).session


def check_started(wanted: str, active: list[str], *, explicit: bool, fallback: bool,
                  reasons: list[str] = ()) -> None:
    """A provider can be installed yet fail to start (no GPU, missing CUDA/TensorRT libraries);
    ``reasons``: what onnxruntime said about it."""
    if wanted in active or not explicit:
        return
    why = reasons[0] if reasons else "no device or missing libraries?"
    message = (f"provider {provider_lib.short_name(wanted)!r} is installed but did not start "
               f"({why}); running on {', '.join(active)}")
    if not fallback:
        raise BadInput(message)
    warnings.warn(message, provider_lib.ProviderFallbackWarning, stacklevel=4)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name's bytes that os.fsdecode kept as surrogates
        return False
    return True


def model_source(path: str | os.PathLike) -> tuple[str | bytes, bool]:
    """What to create the session from: the path, or bytes with the DeformConv lowering swapped.

    Models that use the ai.edgecnn::DeformConv2d custom op carry a function body built on the
    standard DeformConv; an onnxruntime without a DeformConv kernel gets the decomposed body
    (older standard ops only) instead. Returns (source, swapped). External data is vetted
    first (``check_external_data``): onnxruntime reads whatever its locations name.
    """
    path = check_model_file(path)
    external = check_external_data(path)
    check_function_calls(path)  # before onnxruntime inlines them
    as_is = deform.DOMAIN not in opset_domains(path) or deform.onnxruntime_has_deformconv()
    if as_is and _utf8(str(path)):
        return str(path), False
    if as_is:  # onnxruntime takes paths as UTF-8 only: the file's bytes, read here, instead
        if external:
            raise BadInput(f"onnxruntime cannot open {path}: its path is not UTF-8, and its "
                           "external data is found by path; rename the folder or file")
        return path.read_bytes(), False
    try:
        import onnx
    except ImportError:
        raise BadInput(f"{path} uses the {deform.DOMAIN}::{deform.OP_TYPE} op and this onnxruntime "
                       "has no DeformConv kernel; install the onnx package so edgecnn can "
                       "switch it to the decomposed lowering") from None
    model = deform.set_deform_lowering(onnx.load(str(path)), "decomposed")
    return model.SerializeToString(), True
