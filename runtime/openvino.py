"""The OpenVINO execution provider: an onnxruntime plugin (the ``onnxruntime-ep-openvino`` wheel,
which bundles OpenVINO). Torch-free.

onnxruntime runs plugin providers differently from the built-in ones: the library is registered
once per process (``register``), and a session gets the provider through its options for one of
the devices the plugin enumerates (``add_to_session``), not through ``providers=[...]`` (a name
given there is ignored: the session silently runs on the CPU provider). The plugin's own options
go through ``load_config``, per OpenVINO device:

- ``INFERENCE_PRECISION_HINT``: f32 unless asked otherwise. OpenVINO's default on a CPU with AMX
  is bf16, so an "fp32" session there differs from the CPU provider by rel_l2 ~4e-3 on resnet18;
  with f32 it matches to ~1e-7.
- ``INFERENCE_NUM_THREADS``: the thread count (the plugin ignores onnxruntime's thread options).
- ``CACHE_DIR``: where OpenVINO keeps compiled models between processes.

Nodes OpenVINO cannot run fall back to onnxruntime's CPU provider, which every session has.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import tempfile

import onnxruntime as ort

from edgecnn.errors import BadInput, first_line

PROVIDER = "OpenVINOExecutionProvider"
PACKAGE = "onnxruntime_ep_openvino"
DISTRIBUTION = "onnxruntime-ep-openvino"  # the wheel's name
INSTALL = "pip install 'edgecnn[openvino]'"
# The plugin-provider API (register_execution_provider_library, add_provider_for_devices).
PLUGIN_API = ("register_execution_provider_library", "get_ep_devices")
DEFAULT_DEVICE = "CPU"
# What a user may write -> OpenVINO's INFERENCE_PRECISION_HINT value.
PRECISION_HINTS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
DEFAULT_PRECISION = "f32"
OPTIONS = ("device", "precision", "cache_dir")  # what edgecnn takes for this provider
# The parity precision an fp32 file computes in under each hint (export/parity.py's bounds).
COMPUTE_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def plugin_installed() -> bool:
    try:
        return importlib.util.find_spec(PACKAGE) is not None
    except ValueError:  # a module set to None in sys.modules (how a test removes it)
        return False


@functools.cache
def register() -> bool:
    """Register the plugin library with onnxruntime (once per process); False when the wheel
    is not installed. Afterwards onnxruntime lists the provider as available."""
    if not plugin_installed():
        return False
    if not all(hasattr(ort, name) for name in PLUGIN_API):
        raise BadInput(f"the OpenVINO plugin needs an onnxruntime with plugin providers "
                       f"(installed: {ort.__version__}): {INSTALL}")
    import onnxruntime_ep_openvino as plugin

    try:
        ort.register_execution_provider_library("openvino", plugin.get_library_path())
    except Exception as error:  # onnxruntime's Fail, e.g. registered by the user's own code
        if "already registered" not in str(error):
            raise BadInput(f"the OpenVINO plugin ({PACKAGE}) does not load into onnxruntime "
                           f"{ort.__version__}: {first_line(error)}") from None
    return True


def devices() -> dict[str, object]:
    """OpenVINO device name ("CPU", "GPU", "NPU", ...) -> onnxruntime's OrtEpDevice for it
    (OpenVINO's meta devices such as AUTO are left out)."""
    if not register():
        return {}
    return {device.ep_metadata.get("ov_device"): device for device in ort.get_ep_devices()
            if device.ep_name == PROVIDER and "ov_meta_device" not in device.ep_metadata}


def parse_options(text: str) -> dict:
    """The options in ``openvino:GPU`` / ``openvino:bf16`` / ``openvino:GPU:f16`` (after the
    provider's name): each part is a precision or else a device name."""
    options = {}
    for part in filter(None, text.split(":")):
        key = "precision" if part.lower() in PRECISION_HINTS else "device"
        if key in options:
            raise BadInput(f"provider openvino:{text} names two {key}s ({options[key]}, {part})")
        options[key] = part.lower() if key == "precision" else part.upper()
    return options


def check_options(options: dict) -> dict:
    """``options`` with the defaults filled in; BadInput for anything edgecnn does not take."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise BadInput(f"unknown OpenVINO option {', '.join(unknown)} (use {', '.join(OPTIONS)})")
    precision = str(options.get("precision", DEFAULT_PRECISION)).lower()
    if precision not in PRECISION_HINTS:
        raise BadInput(f"OpenVINO precision must be one of {', '.join(PRECISION_HINTS)}, "
                       f"got {options['precision']!r}")
    checked = {"device": str(options.get("device", DEFAULT_DEVICE)).upper(), "precision": precision}
    return checked if options.get("cache_dir") is None else {**checked, "cache_dir": options["cache_dir"]}


def compute_precision(options: dict) -> str:
    """"fp32", "bf16" or "fp16": what an fp32 model computes in with these (checked) options."""
    return COMPUTE_PRECISION[PRECISION_HINTS[options["precision"]]]


def _writable_directory(path: str | os.PathLike) -> str:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise BadInput(f"OpenVINO cache directory {path} cannot be written: "
                       f"{error.strerror or first_line(error)}") from None
    return str(path)


def no_device_reason() -> str | None:
    """None when the plugin offers a device on this machine; else why it offers none, as the
    end of "provider openvino ...". Registers the plugin (0.1 s, once per process)."""
    if not plugin_installed():
        return f"is not installed ({INSTALL})"
    if devices():
        return None
    vendors = sorted({device.device.vendor for device in ort.get_ep_devices()
                      if device.device.type == ort.OrtHardwareDeviceType.CPU})
    return (f"is installed but offers no device on this machine ({DISTRIBUTION} "
            f"{_plugin_version()} offers Intel devices only; this CPU: "
            f"{', '.join(vendors) or 'unknown'})")


def _plugin_version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def add_to_session(options: ort.SessionOptions, *, device: str = DEFAULT_DEVICE,
                   precision: str = DEFAULT_PRECISION, cache_dir: str | os.PathLike | None = None,
                   threads: int | None = None) -> None:
    """Give the session ``options`` the OpenVINO provider on ``device``; BadInput naming the
    devices there are when ``device`` is not one of them."""
    available = devices()
    if not available:
        raise BadInput(f"provider openvino {no_device_reason()}")
    if device not in available:
        raise BadInput(f"OpenVINO device {device} is not on this machine (devices: "
                       f"{', '.join(available)}; precisions: {', '.join(PRECISION_HINTS)})")
    config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    if cache_dir is not None:
        config["CACHE_DIR"] = _writable_directory(cache_dir)
    options.add_provider_for_devices([available[device]], {"load_config": json.dumps({device: config})})
