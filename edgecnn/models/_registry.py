"""The model registry: every architecture is one decorated builder function.

    @register_model(task="classification", input_size=(3, 224, 224), num_classes=1000,
                    params=11_689_512, family="ResNet (torchvision)", test_input=(64, 64))
    def resnet18(num_classes: int = 1000, in_channels: int = 3, **kwargs) -> nn.Module: ...

The CLI, the parity matrix, the tests and ``edgecnn list`` all iterate this registry; no other
module keeps a list of model names.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import numbers
from dataclasses import dataclass, field
from typing import Callable

from edgecnn.errors import BadInput, first_line, require_count

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TASKS = ("classification", "segmentation")
OUTPUT_NAMES = {"classification": "logits", "segmentation": "masks"}
# num_classes: past ImageNet-21k's 21,841; vgg's last layer then holds 2 GiB (2**20: 17 GiB)
MAX_CLASSES = 2**17


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of edgecnn needs to know about an architecture without building it."""

    name: str
    builder: Callable = field(repr=False, compare=False)
    task: str
    input_size: tuple[int, int, int]  # (C, H, W) of the default config
    num_classes: int | None  # None: read from the output (a model that is not registered)
    params: int | None  # parameter count of the default config (None: not fixed by a source)
    family: str
    mean: tuple[float, ...] = IMAGENET_MEAN  # 0-1 scale, RGB (or the single grey channel)
    std: tuple[float, ...] = IMAGENET_STD
    # Smallest (H, W) the tests export at; keeps the CI parity matrix fast.
    test_input: tuple[int, int] | None = None
    # Below this (H, W) the architecture is degenerate or fails; checked before building.
    min_input_size: tuple[int, int] = (1, 1)
    # The model only works at exactly its default H x W (e.g. a Flatten into a fixed Linear).
    fixed_input_size: bool = False
    # Overrides of the ONNX-vs-eager rel_l2 bounds per precision, e.g. {"fp16": 2e-2} (defaults
    # in edgecnn.export.parity); a looser bound needs a written, measured reason.
    tolerances: dict = field(default_factory=dict, compare=False)
    tolerance_reason: str | None = None
    # Center-crop share used when preprocessing images (see edgecnn.runtime.metadata.InputInfo).
    crop_fraction: float = 0.875
    # Lowest ONNX opset the exported graph needs whatever the export options. Deformable
    # models keep 18 (the decomposed lowering runs there); the exporter raises the default
    # to 19 when they are exported with the native DeformConv lowering.
    min_opset: int = 18
    description: str = ""
    # What a model that is not registered was named by (``package.module:callable``, a .py
    # file's ``path:callable`` or a .pt2 file; edgecnn.export.user_model); None when registered.
    source: str | None = None
    fixed_batch: int | None = None  # the batch size a .pt2 program was exported with, if fixed
    # The builder returns the model with its weights (a .pt2 program, or a module passed in):
    # no random initialization and no weights file.
    own_weights: bool = False

    @property
    def output_name(self) -> str:
        return OUTPUT_NAMES[self.task]

    @property
    def ci_input_size(self) -> tuple[int, int]:
        return self.test_input or self.input_size[1:]

    def normalization(self, in_channels: int | None = None) -> tuple[list[float], list[float]]:
        """mean/std for ``in_channels`` (the spec's own when it matches, else their average)."""
        channels = in_channels or self.input_size[0]
        if channels == len(self.mean):
            return list(self.mean), list(self.std)
        mean = sum(self.mean) / len(self.mean)
        std = sum(self.std) / len(self.std)
        return [mean] * channels, [std] * channels


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(**spec_fields) -> Callable[[Callable], Callable]:
    """Decorator registering a builder under its function name with the given spec fields."""

    def decorate(builder: Callable) -> Callable:
        name = spec_fields.pop("name", builder.__name__)
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        if spec_fields.get("task") not in TASKS:
            raise RuntimeError(f"model {name!r}: task must be one of {TASKS}")
        doc = (builder.__doc__ or "").strip().splitlines()
        spec_fields.setdefault("description", doc[0] if doc else "")
        if spec_fields.get("tolerances") and not spec_fields.get("tolerance_reason"):
            raise RuntimeError(f"model {name!r}: looser tolerances need a tolerance_reason")
        _REGISTRY[name] = ModelSpec(name=name, builder=builder, **spec_fields)
        return builder

    return decorate


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered model; BadInput (with close names) for an unknown one."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `edgecnn list`"
        hint += "; your own model: package.module:callable, path/file.py:callable or a .pt2 file"
        raise BadInput(f"unknown model {name!r}{hint}") from None


def create(name: str | ModelSpec, num_classes: int | None = None, **kwargs):
    """Build a registered model in eval mode: ``create("resnet18", num_classes=10)`` (or the
    model of a ModelSpec, e.g. one of edgecnn.export.user_model).

    ``kwargs`` go to the builder (``in_channels``, architecture options such as ``upsample``).
    An option whose default is a bool, int or float must be one too (an int will do for a
    float); a builder's ValueError (e.g. a dropout outside [0, 1]) is BadInput. A TypeError
    raised inside a builder is a bug in it and propagates as one.
    """
    spec = name if isinstance(name, ModelSpec) else get_spec(name)
    name = spec.name
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        bound = inspect.signature(spec.builder).bind(**kwargs)
    except TypeError as error:  # an option this builder does not take
        raise BadInput(f"{name}: {error}") from None
    parameters = bound.signature.parameters
    for key, value in kwargs.items():
        if key in parameters:  # not a **kwargs catch-all
            _check_option_type(name, key, value, parameters[key].default)
    require_count("num_classes", kwargs.get("num_classes"), at_most=MAX_CLASSES)
    require_count("in_channels", kwargs.get("in_channels"))
    try:
        model = spec.builder(**kwargs)
    except BadInput:
        raise
    except ValueError as error:
        raise BadInput(f"{name}: {first_line(error)}") from None
    return model.eval()


def _check_option_type(name: str, key: str, value, default) -> None:
    """BadInput unless ``value`` has the type of the builder's ``default`` for ``key``."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise BadInput(f"{name}: {key} must be true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise BadInput(f"{name}: {key} must be an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise BadInput(f"{name}: {key} must be a number, got {value!r}")
