"""Preprocessing given as settings (``edgecnn run --mean ...``, ``Engine(preprocessing=...)``,
``edgecnn annotate``) turned into validated ``ModelMetadata`` for one graph. Torch-free and
onnx-free: the graph comes as {input name: dims} and the first output's dims.

A file edgecnn did not write has no metadata; what its graph fixes is read from it (the input's
name when there is one, channels, height and width, the layout when only one axis can hold the
channels) and the rest comes from the settings or the defaults: classification, RGB for 3
channels (GRAY otherwise), pixels / 255, ImageNet's mean and std for 3 channels (mean 0, std 1
otherwise; an integer input takes the pixels as they are: scale 1, mean 0, std 1), center-crop
fraction 0.875, segmentation when the first output is 4-D other than (N, classes, 1, 1) (else
classification). Settings given on a file with metadata replace those fields only. Every value
goes through ``ModelMetadata.validate`` and ``check_graph``; messages begin with the setting's
name (``mean must be a list of one number per channel (3), got [0.5]``).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Mapping, Sequence

import numpy as np

from edgecnn.errors import BadInput
from edgecnn.runtime.files import check_input_file
from edgecnn.runtime.model_file import graph_precision
from edgecnn.runtime.postprocess import is_class_vector
from edgecnn.runtime.metadata import (
    COLOR_CHANNELS, MAX_SIDE, InputInfo, ModelMetadata, describe_dims, fixed_size,
)

MAX_LABELS_BYTES = 2**26  # 64 MiB: a million class names of 64 characters
# setting -> the metadata field it sets (messages about the field name the setting)
FIELD_OF_SETTING = {"input_name": "input.name", "input_size": "input.shape",
                    "layout": "input.layout", "color": "input.color", "scale": "input.scale",
                    "mean": "input.mean", "std": "input.std",
                    "crop_fraction": "input.crop_fraction", "task": "task", "labels": "labels"}
SETTINGS = tuple(FIELD_OF_SETTING)
SETTING_OF_FIELD = {field: setting for setting, field in FIELD_OF_SETTING.items()}
IMAGENET_MEAN, IMAGENET_STD = InputInfo().mean, InputInfo().std


def check_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings given (None values dropped); BadInput for a name that is none."""
    given = {name: value for name, value in (settings or {}).items() if value is not None}
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise BadInput(f"preprocessing has no setting {unknown[0]!r} (it takes "
                       f"{', '.join(SETTINGS)})")
    return given


def integer_type(dtype: str | None) -> str | None:
    """``dtype`` (a numpy name, or what describe.value_type says instead) when it is an
    integer type, whose image input takes the pixels as they are; else None."""
    try:
        return dtype if dtype and np.dtype(dtype).kind in "iu" else None
    except TypeError:  # "sequence", "unknown type 40", ...
        return None


def check_raw_pixels(info: InputInfo, dtype: str, source: str = "model") -> None:
    """BadInput unless ``info`` feeds the pixels as they are (scale 1, mean 0, std 1), as an
    image input of ``dtype`` integers needs: normalized values would be cut to integers."""
    if dtype == "int8":
        raise BadInput(f"{source}: input {info.name!r} takes int8, which cannot hold pixels "
                       "0-255; feed it arrays with Engine.run")
    if info.scale == 1 and not any(info.mean) and all(value == 1 for value in info.std):
        return
    raise BadInput(f"{source}: input {info.name!r} takes {dtype} pixels as they are: its "
                   f"preprocessing is scale 1, mean 0 and std 1, not scale {info.scale:g}, mean "
                   f"{info.mean}, std {info.std} (normalized values would be cut to integers)")


def metadata_from_settings(inputs: Mapping[str, Sequence], output: Sequence,
                           settings: Mapping[str, Any] | None, *, base: ModelMetadata | None,
                           model: str, source: str = "model",
                           input_types: Mapping[str, str] | None = None) -> ModelMetadata:
    """Metadata for the graph of the file ``source`` (``inputs``: name -> dims, batch first;
    ``output``: the first output's dims) from ``settings`` (names in SETTINGS), over ``base``
    (the file's metadata, or None: the defaults). ``model`` names the model when there is no
    base, and the graph says what it computes in (``model_file.graph_precision``).
    ``input_types``: {name: numpy dtype name} of the graph's inputs; an image input of integers
    takes the pixels as they are (scale 1, mean 0 and std 1 by default, and nothing else:
    ``check_raw_pixels``)."""
    given = check_settings(settings)
    for setting in ("layout", "color"):  # nhwc, bgr: the metadata's spelling is upper case
        if isinstance(given.get(setting), str):
            given[setting] = given[setting].upper()
    name = _input_name(inputs, given.get("input_name"), base, source)
    dims = list(inputs[name])
    if len(dims) != 4:
        raise BadInput(f"{source}: input {name!r} has rank {len(dims)}, not an image batch "
                       "([N, C, H, W] or [N, H, W, C]); feed arrays to Engine.run instead")
    old = base.input if base is not None and base.input.name == name else None
    layout = given.get("layout") or (old.layout if old else guess_layout(dims))
    channels = _channels(dims, layout, given, old)
    if "layout" in given and channels not in COLOR_CHANNELS.values():
        other = "NCHW" if layout == "NHWC" else "NHWC"
        if (others := _channels(dims, other, given, old)) in COLOR_CHANNELS.values():
            shape = ", ".join("N" if dim is None else str(dim) for dim in dims)
            raise BadInput(f"layout {layout} reads input {name!r} [{shape}] as {channels} "
                           f"channels, which no image has; as {other} it has {others}")
    if not 1 <= channels <= MAX_SIDE:
        raise BadInput(f"{source}: input {name!r} has {channels:,} channels as {layout}; "
                       f"input.shape takes [C, H, W] of integers in [1, {MAX_SIDE}]")
    height, width = _height_width(dims, layout, given.get("input_size"), old, name)
    default_color = "RGB" if channels == 3 else "GRAY"
    if given.get("color") == "GRAY" and channels == 3:  # the metadata allows it (N channels)
        raise BadInput("color must be RGB or BGR for a 3-channel input, got 'GRAY'")
    integer = integer_type((input_types or {}).get(name))
    mean_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 and not integer else (
        [0.0] * channels, [1.0] * channels)
    template = old if old is not None and old.channels == channels else None

    def pick(setting: str, kept: Any, default: Any) -> Any:
        """The setting given, else what the file's metadata says, else the default."""
        return given[setting] if setting in given else kept if kept is not None else default

    info = InputInfo(
        name=name, shape=[channels, height, width], layout=layout,
        color=pick("color", template and template.color, default_color),
        scale=pick("scale", old and old.scale, 1.0 if integer else InputInfo.scale),
        mean=_as_list(pick("mean", template and template.mean, mean_std[0])),
        std=_as_list(pick("std", template and template.std, mean_std[1])),
        crop_fraction=pick("crop_fraction", old and old.crop_fraction, InputInfo.crop_fraction))
    labels = given.get("labels", base.labels if base else None)
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels_file(labels)
    fields = asdict(base) if base is not None else {"model": model,
                                                    "precision": graph_precision(source)}
    fields.update(input=info, labels=_as_list(labels),
                  task=pick("task", fields.get("task"),
                            "segmentation" if len(output) == 4 and not is_class_vector(output)
                            else "classification"))
    metadata = ModelMetadata(**fields)
    metadata.validate(source, SETTING_OF_FIELD)
    metadata.check_graph(inputs, output, source, SETTING_OF_FIELD)
    if integer:
        check_raw_pixels(info, integer, source)
    return metadata


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """One class name per non-blank line (surrounding spaces dropped); BadInput naming
    ``labels``. Lines end in "\\n" (or "\\r\\n") only: a name may hold any other character."""
    path = check_input_file(path, "labels file")
    size = path.stat().st_size
    if size > MAX_LABELS_BYTES:
        raise BadInput(f"labels file {path} is too large ({size:,} bytes; a labels file holds "
                       f"one name per class, at most {MAX_LABELS_BYTES:,} bytes)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"labels file {path} is not readable UTF-8 text ({error})") from None
    return [line.strip() for line in text.split("\n") if line.strip()]


def _as_list(values):
    return list(values) if isinstance(values, (tuple, list)) else values


def _input_name(inputs: Mapping[str, Sequence], wanted: str | None,
                base: ModelMetadata | None, source: str) -> str:
    names = ", ".join(map(repr, inputs))
    if wanted is not None:
        if wanted not in inputs:
            raise BadInput(f"input_name must be one of the graph's inputs ({names}), got "
                           f"{wanted!r}")
        return wanted
    if base is not None:
        if base.input.name not in inputs:
            raise BadInput(f"{source}: the metadata's input {base.input.name!r} is not one of "
                           f"the graph's inputs ({names}); name the image input "
                           f"(input_name={next(iter(inputs), '')!r})")
        return base.input.name
    if len(inputs) != 1:
        raise BadInput(f"input_name is needed: {source} has {len(inputs)} inputs ({names}); "
                       "name the image input")
    return next(iter(inputs))


def guess_layout(dims: Sequence) -> str:
    """NHWC when only the last axis looks like channels (1 or 3, fixed), else NCHW."""
    looks = [fixed_size(dims[axis]) in (1, 3) for axis in (1, 3)]
    return "NHWC" if looks == [False, True] else "NCHW"


def _channels(dims: Sequence, layout: str, given: Mapping[str, Any],
              old: InputInfo | None) -> int:
    axis = 3 if layout == "NHWC" else 1
    fixed = fixed_size(dims[axis])
    if fixed is not None:
        return fixed
    for setting in ("mean", "std"):
        if isinstance(given.get(setting), (list, tuple)):
            return len(given[setting])
    color = given.get("color")
    if isinstance(color, str) and color in COLOR_CHANNELS:
        return COLOR_CHANNELS[color]
    return old.channels if old else 3


def _height_width(dims: Sequence, layout: str, size: Any, old: InputInfo | None,
                  name: str) -> tuple[int, int]:
    axes = (1, 2) if layout == "NHWC" else (2, 3)
    graph = [fixed_size(dims[axis]) for axis in axes]
    if size is None:
        if None not in graph:
            return graph[0], graph[1]
        if old is not None:
            return old.height_width
        raise BadInput(f"input_size is needed: input {name!r} has a dynamic height or width "
                       f"({describe_dims(dims)}); give the size the model expects")
    size = [size] if isinstance(size, int) else list(size) if isinstance(size, (list, tuple)) else size
    if not (isinstance(size, list) and len(size) in (1, 2)
            and all(fixed_size(side) is not None and side <= MAX_SIDE for side in size)):
        raise BadInput(f"input_size must be one size or [H, W], integers in [1, {MAX_SIDE}], "
                       f"got {size!r}")
    height, width = size[0], size[-1]
    for axis_size, wanted, what in ((graph[0], height, "height"), (graph[1], width, "width")):
        if axis_size is not None and axis_size != wanted:
            raise BadInput(f"input_size must match the fixed {what} {axis_size} of input {name!r} "
                           f"({layout} {describe_dims(dims)}), got {height}x{width}")
    return height, width
