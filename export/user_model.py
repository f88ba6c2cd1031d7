"""Models that are not in the registry, named the way ``edgecnn export SPEC`` takes them:

- ``package.module:callable`` (e.g. ``torchvision.models:resnet50`` where torchvision is
  installed), imported as Python imports it;
- ``path/to/file.py:callable``, loaded from that file;
- ``path/to/model.pt2``, a program written by ``torch.export.save`` (it carries its weights).

The callable is a function or class that returns an ``nn.Module``; ``model_options`` become its
keyword arguments. ``resolve_spec`` turns the SPEC into a ``ModelSpec`` like a registered
model's (input size, task, normalization from the caller, with documented defaults), so the
exporter and ``check`` run every model through one path.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import importlib.util
import inspect
import io
import itertools
import json
import logging
import numbers
import os
import reprlib
import sys
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

from torch import nn

from edgecnn import models
from edgecnn.errors import BadInput, first_line
from edgecnn.models import ModelSpec
from edgecnn.models._registry import TASKS
from edgecnn.runtime.files import check_input_file

PROGRAM_SUFFIX = ".pt2"
WEIGHTS_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")  # not a SPEC: say so
DEFAULT_TASK = "classification"
FAMILY = "your own model"


def is_user_model(model: str | nn.Module) -> bool:
    """A module, or a SPEC that names a callable or a .pt2 file, rather than a registered model."""
    return isinstance(model, nn.Module) or ":" in model or model.endswith(PROGRAM_SUFFIX)


def _not_a_model_file(model: str) -> None:
    """BadInput for a SPEC that names a file of weights or an ONNX file, with what to do."""
    suffix = Path(model).suffix.lower()
    if suffix in WEIGHTS_SUFFIXES:
        raise BadInput(f"{model} looks like a file of weights, not a model: give the architecture "
                       f"(a registered name or path/file.py:callable) with weights={model} (a "
                       "state_dict), or save a torch.export program as .pt2")
    if suffix == ".onnx":
        raise BadInput(f"{model} is an ONNX file already: `edgecnn quantize`, `check SPEC "
                       f"{model}`, `run`, `bench` and `info` take it as it is")


def model_name(model: str) -> str:
    """The name a SPEC's model goes by (in the metadata and the default output file): the
    registered name, the callable's (``file.py:build`` -> ``build``) or the .pt2 file's stem."""
    if model.endswith(PROGRAM_SUFFIX):
        return Path(model).stem
    return model.rpartition(":")[2].rpartition(".")[2] if ":" in model else model


def _import_source(source: str):
    """The module ``source`` names: a .py file (a path) or an importable dotted name."""
    if source.endswith(".py") or os.sep in source or "/" in source:
        path = Path(source)
        if not path.is_file():
            raise BadInput(f"model file not found: {path}")
        # named after its path by a digest: hash() changes with each process, and the name
        # reaches the ONNX file (its node namespaces), which must be the same every time
        digest = hashlib.sha256(os.fsencode(path.resolve())).hexdigest()[:16]
        name = f"edgecnn_user_model_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise BadInput(f"{path} is not a Python file that can be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise BadInput(f"{path} does not import: {type(error).__name__}: "
                           f"{first_line(error)}") from None
        return module
    try:
        return importlib.import_module(source)
    except Exception as error:  # ImportError, or whatever the module raises at import
        raise BadInput(f"module {source} does not import: {type(error).__name__}: "
                       f"{first_line(error)}") from None


def load_callable(spec: str) -> Callable:
    """The callable ``source:attribute`` names (``attribute`` may be dotted)."""
    source, _, attribute = spec.rpartition(":")
    if not source or not attribute:
        raise BadInput(f"model {spec!r} must be package.module:callable or path/file.py:callable")
    target = _import_source(source)
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise BadInput(f"{source} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise BadInput(f"{spec} is a {type(target).__name__}, not a function or class that "
                       "returns an nn.Module")
    return target


def _returning_a_module(spec: str, factory: Callable) -> Callable:
    """``factory`` checked to return an nn.Module; its own exceptions become one line, except
    a TypeError from a call our options made (that names the options) and KeyboardInterrupt."""

    @functools.wraps(factory)
    def build(**options) -> nn.Module:
        try:
            module = factory(**options)
        except (BadInput, KeyboardInterrupt):
            raise
        except Exception as error:
            raise BadInput(f"{spec} raised {type(error).__name__}: {first_line(error)}") from None
        if not isinstance(module, nn.Module):
            raise BadInput(f"{spec} returned a {type(module).__name__}, not an nn.Module")
        return module

    return build


class ProgramModule(nn.Module):
    """A .pt2 program as a module. The program's own module refuses ``eval()`` (its train or
    eval behaviour was fixed when it was exported), so it is held outside the module tree."""

    def __init__(self, program):
        super().__init__()
        self.__dict__["program"] = program.module()

    def forward(self, x):
        return self.__dict__["program"](x)


def load_program(path: str | os.PathLike):
    """The ExportedProgram in a .pt2 file; BadInput for a missing or unreadable one."""
    import torch

    path = check_input_file(path, "model file", "a .pt2 file")
    refuse_pickles(path)
    logger, held = logging.getLogger("torch.export"), _Held()
    logger.addFilter(held)  # torch logs the cause, with its traceback, then raises a vaguer error
    try:
        return torch.export.load(str(path))
    except Exception as error:  # a zip error, a missing entry, a version the reader refuses
        cause = next((record.exc_info[1] for record in reversed(held.records)
                      if record.exc_info), error)
        raise BadInput(f"{path} is not a program written by torch.export.save: "
                       f"{type(cause).__name__}: {first_line(cause)}") from None
    finally:
        logger.removeFilter(held)


class _Held(logging.Filter):
    """Keeps the records of a logger instead of letting them through to its handlers."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


_CONFIGS = ("data/weights/", "_weights_config.json"), ("data/constants/", "_constants_config.json")
_RAW_CONSTANT_PREFIX = "tensor_"  # torch's TENSOR_CONSTANT_FILENAME_PREFIX: stored raw
_MAX_CONFIG_BYTES = 64 * 2**20
_SAMPLE_INPUTS = "data/sample_inputs/"  # torch's SAMPLE_INPUTS_FILENAME_FORMAT's folder
_MAX_SAMPLE_INPUTS_BYTES = 2**30


def refuse_pickles(path: Path) -> None:
    """BadInput unless every weight and constant of the .pt2 archive at ``path`` is stored as
    raw tensor bytes. torch.export.load unpickles (weights_only=False) what the archive's
    configs mark ``use_pickle``, custom and opaque objects, legacy ``<model>.pt`` state dicts,
    sample inputs the safe loader refuses, and the older (torch 2.7) format, and unpickling
    runs code from the file; what torch.export.save writes for plain tensors needs none of it."""
    def refuse(what: str) -> BadInput:
        return BadInput(f"{path}: {what}, and unpickling runs code from the file; edgecnn "
                        "loads .pt2 programs whose weights are stored as raw tensors (what "
                        "torch.export.save writes for plain tensors)")

    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.split("/", 1)[1]: info for info in archive.infolist()
                       if "/" in (name := info.filename)}  # below the archive's root folder
            if "archive_format" not in members:
                if "version" in archive.namelist():
                    raise refuse("it is in the older .pt2 format, whose state dicts are pickles")
                raise BadInput(f"{path} is not a program written by torch.export.save (it has "
                               "no archive_format)")
            for name, info in members.items():
                if name.startswith(_SAMPLE_INPUTS):
                    _refuse_unsafe_sample_inputs(archive, name, info, refuse)
                    continue
                folder = next((folder for folder, suffix in _CONFIGS if name.startswith(folder)),
                              None)
                if folder is None:
                    continue
                if name.endswith(".pt") and "/" not in name[len(folder):]:
                    raise refuse(f"its {name} is a legacy pickled state dict")
                if not name.endswith(("_weights_config.json", "_constants_config.json")):
                    continue
                if info.file_size > _MAX_CONFIG_BYTES:
                    raise BadInput(f"{path}: {name} is {info.file_size:,} bytes, not a config")
                for entry, payload in json.loads(archive.read(info))["config"].items():
                    if payload.get("use_pickle") or (folder == "data/constants/" and not str(
                            payload.get("path_name", "")).startswith(_RAW_CONSTANT_PREFIX)):
                        raise refuse(f"{entry!r} in {name} is stored as a pickle")
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError, AttributeError,
            RecursionError) as error:
        if isinstance(error, BadInput):
            raise
        raise BadInput(f"{path} is not a program written by torch.export.save: "
                       f"{type(error).__name__}: {first_line(error)}") from None


def _refuse_unsafe_sample_inputs(archive: zipfile.ZipFile, name: str, info: zipfile.ZipInfo,
                                 refuse: Callable[[str], BadInput]) -> None:
    """torch.export.load reads a program's sample inputs with torch.load(weights_only=True)
    and, when that fails, again with weights_only=False: they are loaded here the safe way
    first, so torch's retry never comes."""
    import torch

    if info.file_size > _MAX_SAMPLE_INPUTS_BYTES:
        raise BadInput(f"{archive.filename}: {name} is {info.file_size:,} bytes, more than "
                       "sample inputs hold")
    try:
        torch.load(io.BytesIO(archive.read(info)), weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever the safe loader refuses
        raise refuse(f"its {name} is a pickle of more than tensors ({type(error).__name__})"
                     ) from None


def program_input_dims(program, path) -> list[int | None]:
    """(N, C, H, W) of the program's one image input as it was exported; None for a dynamic
    axis."""
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    shapes = [placeholders[name].meta["val"].shape for name in program.graph_signature.user_inputs]
    if len(shapes) != 1 or len(shapes[0]) != 4:
        raise BadInput(f"{path} takes {len(shapes)} inputs of ranks "
                       f"{[len(shape) for shape in shapes]}; edgecnn exports models with one "
                       "image input (N, C, H, W)")
    return [dim if isinstance(dim, int) else None for dim in shapes[0]]


def _chw(model: str, input_size, in_channels) -> tuple[int, int, int]:
    needs = {"input size": "input_size=224", "channels": "in_channels=3"}
    missing = [what for what, value in zip(needs, (input_size, in_channels)) if value is None]
    if missing:
        example = " ".join(needs[what] for what in missing)
        grayscale = " (in_channels=1 for grayscale)" if in_channels is None else ""
        raise BadInput(f"{model} is not a registered model: give its {' and '.join(missing)}, "
                       f"e.g. {example}{grayscale}")
    height, width = height_width(input_size)
    if height < 1 or width < 1:
        raise BadInput(f"input_size {height}x{width} is too small")
    return in_channels, height, width


def height_width(input_size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) of ``input_size``: one int (a square) or two; BadInput for anything else."""
    if getattr(input_size, "ndim", None) == 0 and hasattr(input_size, "item"):
        input_size = input_size.item()  # a 0-d array or tensor is its number
    if isinstance(input_size, numbers.Number):
        size = (input_size, input_size)
    elif isinstance(input_size, Iterable) and not isinstance(input_size, (str, bytes)):
        size = tuple(itertools.islice(input_size, 3))  # a third is one too many
        size = size * 2 if len(size) == 1 else size
    else:
        size = ()
    if len(size) != 2 or not all((isinstance(v, numbers.Integral) and not isinstance(v, bool))
                                 or (isinstance(v, float) and v.is_integer()) for v in size):
        raise BadInput(f"input_size takes one int or two (H, W), got {reprlib.repr(input_size)}")
    return int(size[0]), int(size[1])


def require_model(model) -> None:
    """BadInput unless ``model`` is something ``resolve_spec`` takes."""
    if not isinstance(model, (str, ModelSpec, nn.Module)):
        raise BadInput("model must be a registered name, a SPEC ('package.module:callable', "
                       "'path/file.py:callable', a .pt2 file) or an nn.Module, got "
                       f"{type(model).__name__}")


def resolve_spec(model: str | ModelSpec | nn.Module, *,
                 input_size: int | Sequence[int] | None = None, in_channels: int | None = None,
                 task: str | None = None) -> ModelSpec:
    """The ModelSpec of a registered name, a ``module:callable``, a ``.pt2`` file or an
    ``nn.Module`` (taken as it is, weights and all; the exporter works on a copy of it).

    A model that is not registered needs ``input_size`` and ``in_channels`` (a .pt2 file
    records them); ``task`` defaults to classification (``export_model`` makes it segmentation
    for an (N, C, H, W) first output). Its normalization defaults to ImageNet's mean/std (their
    average for one channel), as for the zoo.
    """
    if isinstance(model, ModelSpec):
        return model
    require_model(model)
    if not is_user_model(model):
        _not_a_model_file(model)
        spec = models.get_spec(model)
        if task is not None and task != spec.task:
            raise BadInput(f"task: {model} is a {spec.task} model, not {task}")
        return spec
    task = task or DEFAULT_TASK
    if task not in TASKS:
        raise BadInput(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if isinstance(model, nn.Module):
        name = type(model).__name__
        channels, height, width = _chw(f"the {name} module", input_size, in_channels)
        return ModelSpec(name=name, builder=lambda: copy.deepcopy(model), task=task,
                         input_size=(channels, height, width), num_classes=None, params=None,
                         family=FAMILY, source=f"the {name} module", own_weights=True)
    if model.endswith(PROGRAM_SUFFIX):
        program = load_program(model)
        batch, *recorded = program_input_dims(program, model)
        fixed_size = recorded[1] is not None and recorded[2] is not None
        if in_channels not in (None, recorded[0]):
            raise BadInput(f"in_channels must be {recorded[0]}: {model} was exported so")
        # a fixed size is the program's; export_model refuses any other input_size
        channels, height, width = _chw(model, recorded[1:] if fixed_size else input_size,
                                       recorded[0])
        return ModelSpec(name=model_name(model), builder=lambda: ProgramModule(program), task=task,
                         input_size=(channels, height, width), num_classes=None, params=None,
                         family=FAMILY, source=model, fixed_input_size=fixed_size,
                         fixed_batch=batch, own_weights=True)
    factory = load_callable(model)
    channels, height, width = _chw(model, input_size, in_channels)
    return ModelSpec(name=model_name(model), builder=_returning_a_module(model, factory), task=task,
                     input_size=(channels, height, width), num_classes=None, params=None,
                     family=FAMILY, source=model)


def is_program(spec: ModelSpec) -> bool:
    return spec.source is not None and spec.source.endswith(PROGRAM_SUFFIX)


def check_one_input(model: nn.Module, name: str) -> None:
    """BadInput unless ``model.forward`` can take one image (a forward with more required
    arguments failed with a TypeError, shown as an internal error)."""
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a forward without a signature Python can read
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in parameters if p.kind in positional and p.default is p.empty]
    if len(required) > 1:
        raise BadInput(f"{name} takes {len(required)} inputs ({', '.join(required)}); edgecnn "
                       "exports models of one image input (N, C, H, W): wrap it in a module "
                       "whose forward takes the image alone")
