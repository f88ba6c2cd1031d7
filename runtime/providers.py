"""Which onnxruntime execution providers an Engine asks for, with their options. Torch-free.

``resolve_providers("auto")`` picks among the installed providers by ``auto_order``:
TensorRT -> CUDA -> CPU on a GPU machine; elsewhere OpenVINO for an int8 model without
deformable convolutions, the CPU provider for the rest (``openvino``, ``openvino:GPU``,
``openvino:bf16`` ask for OpenVINO by name; see ``edgecnn.runtime.openvino``).
An explicit provider that is not installed is an error naming the installed ones, or, with
``fallback=True``, a warning saying what is used instead. CPU always ends the chain, because
onnxruntime runs the nodes an accelerator does not support on the next provider in the list.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Sequence, Union

import onnxruntime as ort

from edgecnn.errors import BadInput
from edgecnn.runtime import openvino

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
OPENVINO = openvino.PROVIDER
SHORT_NAMES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT,
               "openvino": OPENVINO}
GPU_ORDER = (TENSORRT, CUDA, CPU)
# What each provider falls back to for the nodes it cannot run (in this order).
FALLBACK_CHAIN = {TENSORRT: (CUDA, CPU), CUDA: (CPU,), CPU: (), OPENVINO: (CPU,)}
# How to get a provider that is not installed.
INSTALL_HINTS = {OPENVINO: openvino.INSTALL}

THREADS_PER_CORE = 4

ProviderEntry = tuple[str, dict]
ProviderRequest = Union[str, Sequence[Union[str, ProviderEntry]]]


class ProviderFallbackWarning(UserWarning):
    """An explicitly requested provider is not available; another one is used."""


def short_name(provider: str) -> str:
    """'CUDAExecutionProvider' -> 'cuda' (for messages and reports)."""
    for short, full in SHORT_NAMES.items():
        if full == provider and short != "trt":
            return short
    return provider.removesuffix("ExecutionProvider").lower()


def full_name(provider: str) -> str:
    """'cuda' or 'CUDAExecutionProvider' -> 'CUDAExecutionProvider'; BadInput when unknown."""
    if provider.lower() in SHORT_NAMES:
        return SHORT_NAMES[provider.lower()]
    if provider.endswith("ExecutionProvider"):
        return provider
    raise BadInput(f"unknown provider {provider!r} (use auto, "
                   f"{', '.join(name for name in SHORT_NAMES if name != 'trt')} or an "
                   "onnxruntime provider name such as CUDAExecutionProvider)")


def provider_options(provider: str, *, device_id: int = 0, fp16: bool = False,
                     cache_dir: str | os.PathLike | None = None, tf32: bool = True) -> dict:
    """onnxruntime options for ``provider``: the GPU id, TensorRT fp16, and ``cache_dir``, where
    the providers that compile keep what they built (TensorRT's engines, which take minutes to
    build; OpenVINO's compiled models) for the next process.

    ``tf32=False`` turns off CUDA's TF32 math (on by default in onnxruntime), which rounds the
    inputs of convolutions and matrix products to a 10-bit mantissa: parity checks measure the
    export in full fp32 (docs/gpu.md).
    """
    if provider == CUDA:
        return {"device_id": device_id} if tf32 else {"device_id": device_id, "use_tf32": 0}
    if provider == TENSORRT:
        options = {"device_id": device_id, "trt_fp16_enable": fp16}
        if cache_dir is not None:
            os.makedirs(cache_dir, exist_ok=True)
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
        return options
    if provider == OPENVINO and cache_dir is not None:
        return {"cache_dir": str(cache_dir)}  # checked when the session is made
    return {}


def max_threads() -> int:
    """The most intra-op threads a session may ask for: a few per core. More only adds
    contention (and a huge count from a typo or a file would start that many threads)."""
    return THREADS_PER_CORE * (os.cpu_count() or 1)


def check_threads(threads: int) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise BadInput(f"threads must be an integer, got {threads!r}")
    if not 1 <= threads <= max_threads():
        raise BadInput(f"threads must be between 1 and {max_threads()} ({THREADS_PER_CORE} per "
                       f"core on this machine), got {threads}")
    return threads


def installed_providers() -> list[str]:
    """onnxruntime's providers, and OpenVINO when its plugin package is there. The plugin is
    registered only when a session asks for it (openvino.add_to_session): registering loads
    OpenVINO (0.1 s and 20 MB of RSS on a 2-core Xeon), which a CPU session must not pay."""
    installed = [name for name in ort.get_available_providers() if not name.startswith(OPENVINO)]
    return installed + [OPENVINO] if openvino.plugin_installed() else installed


def _entry(name: str, options: dict) -> ProviderEntry:
    """(full name, options) from 'cuda', 'openvino:GPU:f16', ... and the options given."""
    name, _, suffix = name.partition(":")
    name = full_name(name)
    if name == OPENVINO:
        return name, openvino.check_options({**openvino.parse_options(suffix), **options})
    if suffix:
        raise BadInput(f"provider {short_name(name)} takes no ':' options, got {suffix!r}")
    return name, options


@functools.cache
def cpu_has_int8_units() -> bool:
    """Whether this CPU has the int8 dot-product units OpenVINO's int8 speed was measured with
    (AVX-512 VNNI, AVX-VNNI or AMX; Linux's /proc/cpuinfo flags, False where unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line.split(":", 1)[1].split() for line in info
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))


def auto_order(installed: Sequence[str], precision: str | None = None,
               deformable: bool = False) -> tuple[str, ...]:
    """What "auto" tries, in order, for a model of ``precision`` (its metadata's; None when
    unknown) that does or does not use the deformable-conv op. The rule follows
    benchmarks/providers.py (docs/openvino.md; 2-core Xeon with AMX, 2 threads):

    - a GPU provider installed: TensorRT -> CUDA -> CPU;
    - OpenVINO installed, an int8 model of plain convolutions and a CPU with int8 dot-product
      units (``cpu_has_int8_units()``; the figures were measured on one): OpenVINO (resnet18
      int8 at 0.31-0.45 of the CPU provider's latency);
    - otherwise the CPU provider: OpenVINO's f32 is no faster (1.00-1.06x on resnet18), the
      deformable ResNet is slower on OpenVINO at every precision (1.1-1.5x), and on CPUs without
      those units OpenVINO's int8 has not been measured.
    """
    if TENSORRT in installed or CUDA in installed:
        return GPU_ORDER
    if OPENVINO in installed and precision == "int8" and not deformable and cpu_has_int8_units():
        return (OPENVINO, CPU)
    return (CPU,)


def _requested(provider: ProviderRequest, installed: Sequence[str], precision: str | None,
               deformable: bool) -> tuple[list[ProviderEntry], bool]:
    """(providers with user options, is_auto) from a name, 'auto' or a list."""
    if isinstance(provider, str):
        if provider.lower() == "auto":
            order = auto_order(installed, precision, deformable)
            return [_entry(short_name(name), {}) for name in order], True
        provider = [provider]
    entries = []
    for item in provider:
        name, options = (item, {}) if isinstance(item, str) else item
        entries.append(_entry(name, dict(options)))
    if not entries:
        raise BadInput("provider list is empty")
    if any(name == OPENVINO for name, _ in entries[1:]):
        raise BadInput("openvino must be the first provider asked for (onnxruntime adds a "
                       "plugin provider through the session's options; the CPU one follows it)")
    return entries, False


def drop_openvino_without_device(installed: list[str]) -> str | None:
    """Take OpenVINO out of ``installed`` when its plugin offers no device here (e.g. on an AMD
    CPU); the reason, or None. Registers the plugin, so only where OpenVINO is wanted."""
    if OPENVINO not in installed:
        return None
    reason = openvino.no_device_reason()
    if reason is not None:
        installed.remove(OPENVINO)
    return reason


def _missing_message(missing: list[str], installed: list[str], no_device: str | None) -> str:
    """Why the providers ``missing`` cannot be used: not installed, or (OpenVINO) installed
    but without a device here."""
    absent = [name for name in missing if not (name == OPENVINO and no_device)]
    hints = "".join(f"; {INSTALL_HINTS[name]}" for name in absent if name in INSTALL_HINTS)
    parts = [f"provider {', '.join(map(short_name, absent))} is not installed (installed: "
             f"{', '.join(installed) or 'none'}{hints})"] if absent else []
    if no_device and OPENVINO in missing:
        parts.append(f"provider openvino {no_device}")
    return "; ".join(parts)


def resolve_providers(provider: ProviderRequest = "auto", *, fallback: bool = True,
                      device_id: int = 0, fp16: bool = False,
                      cache_dir: str | os.PathLike | None = None, tf32: bool = True,
                      installed: Sequence[str] | None = None, precision: str | None = None,
                      deformable: bool = False) -> list[ProviderEntry]:
    """The (name, options) list to create a session with, most preferred first.

    ``provider`` is "auto", "cpu", "cuda", "tensorrt", an onnxruntime provider name, or a list
    of names / (name, options) pairs; options given in a list win over the generated ones.
    ``tf32=False``: CUDA computes convolutions in full fp32 (see ``provider_options``).
    ``precision``, ``deformable``: what "auto" knows of the model (see ``auto_order``).
    """
    probe = installed is None  # a given list is taken as it is (tests)
    installed = list(installed_providers() if installed is None else installed)
    entries, auto = _requested(provider, installed, precision, deformable)
    wanted = OPENVINO in (name for name, _ in entries)
    no_device = drop_openvino_without_device(installed) if probe and wanted else None
    missing = [name for name, _ in entries if name not in installed]
    not_installed = _missing_message(missing, installed, no_device)
    if missing and not auto and not fallback:
        raise BadInput(f"{not_installed}; pass fallback=True to use what is installed")
    chosen = {name: {**provider_options(name, device_id=device_id, fp16=fp16,
                                        cache_dir=cache_dir, tf32=tf32), **options}
              for name, options in entries if name in installed}
    # Each accelerator hands the nodes it does not support to the next one; CPU ends the chain.
    # A missing provider's chain is what fallback uses instead of it.
    for name, _ in entries:
        for backup in FALLBACK_CHAIN.get(name, (CPU,)):
            if backup in installed and backup not in chosen:
                chosen[backup] = provider_options(backup, device_id=device_id, tf32=tf32)
    if not chosen:
        raise BadInput(f"no usable provider; installed: {', '.join(installed) or 'none'}")
    if missing and not auto:
        warnings.warn(f"{not_installed}; using {', '.join(map(short_name, chosen))}",
                      ProviderFallbackWarning, stacklevel=3)
    return list(chosen.items())
