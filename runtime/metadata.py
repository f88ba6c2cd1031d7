"""The ``edgecnn`` metadata every exported model carries (``metadata_props["edgecnn"]``).

One JSON object describes the model so the runtime can preprocess inputs and label outputs
without any other flags. This module is torch-free and onnx-free: the exporter writes the
object through ``ModelMetadata.to_json`` and the runtime reads it back with ``from_json``.

The file is untrusted input: ``from_json`` checks every field's type and range
(``ModelMetadata.validate``) and ``check_graph`` checks the metadata against the graph it
describes, so a shape of [3, 100000, 100000] is one BadInput naming ``input.shape`` instead of
an allocation of many gigabytes.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from edgecnn.errors import BadInput

METADATA_KEY = "edgecnn"
FILE_PRECISIONS = ("fp32", "fp16", "int8")  # what a file holds
# What a file may be judged in (parity.PRECISIONS): its own precision, or bf16 (the fp32 file
# run with OpenVINO's bf16 hint, export/parity.py).
TOLERANCE_KEYS = ("fp32", "fp16", "bf16", "int8")
LOWERINGS = ("native", "decomposed")
LAYOUTS = ("NCHW", "NHWC")
# The channels an image of each color gives (BGR: RGB images with the channels reversed, as
# OpenCV-trained models take them).
COLOR_CHANNELS = {"RGB": 3, "BGR": 3, "GRAY": 1}
COLORS = tuple(COLOR_CHANNELS)
# Far above any CNN input, far below what breaks a machine: one fp32 image of MAX_ELEMENTS is
# 512 MB, and preprocessing or calibration holds a few of them.
MAX_SIDE = 16384
# What a model's first output is (edgecnn.models' registry says the same for the zoo).
TASKS = ("classification", "segmentation")
MAX_ELEMENTS = 2 ** 27
FLOAT32_MAX, FLOAT32_TINY = 3.4028234663852886e38, 1.1754943508222875e-38  # largest, smallest normal
# The smallest center-crop share: the image is resized to 1 / crop_fraction of the input size
# first (20x at this bound); real ones are 0.875 to 1.
MIN_CROP_FRACTION = 0.05
MAX_JSON_NESTING = 16  # JSON levels: what edgecnn writes has 3; deeper is a hostile file

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 60, 60, 6, 6


@dataclass
class InputInfo:
    """How raw images become the model's input tensor."""

    name: str = "input"
    shape: list[int] = field(default_factory=lambda: [3, 224, 224])  # C, H, W
    layout: str = "NCHW"
    color: str = "RGB"  # "RGB", "BGR" or "GRAY"
    scale: float = 255  # pixel values are divided by this before mean/std
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # Share of the resized image the model sees: images are resized to cover (H, W) /
    # crop_fraction, then center-cropped (0.875 = ImageNet's Resize(256) + CenterCrop(224));
    # 1.0 for full-frame inputs such as MNIST-style digits.
    crop_fraction: float = 0.875

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def height_width(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    @property
    def sample_shape(self) -> list[int]:
        """One sample's shape in the model's layout: [C, H, W] (NCHW) or [H, W, C] (NHWC)."""
        channels, height, width = (int(v) for v in self.shape)
        return ([height, width, channels] if self.layout.upper() == "NHWC"
                else [channels, height, width])


@dataclass
class ModelMetadata:
    model: str
    task: str  # "classification" | "segmentation"
    input: InputInfo
    labels: list[str] | None = None
    precision: str = "fp32"
    opset: int = 18
    edgecnn_version: str = ""
    deform_lowering: str | None = None
    # Quantization details (method, calibration source and size); None for float models.
    quantization: dict[str, Any] | None = None
    # The model's own parity bounds written at export: precision -> rel_l2 bound.
    tolerances: dict[str, float] | None = None
    # Where the weights came from, e.g. "random (seed 0)" or "<file> sha256:<hex>".
    weights: str | None = None
    # The builder's own options the model was exported with (export --option), for check.
    options: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "ModelMetadata":
        """Parse and ``validate``; BadInput naming ``source`` and the field when malformed."""
        too_deep = BadInput(f"{source}: edgecnn metadata is nested more than {MAX_JSON_NESTING} "
                            "levels deep")
        try:
            data = json.loads(text)
        except ValueError as error:
            raise BadInput(f"{source}: edgecnn metadata is not valid JSON ({error})") from None
        except RecursionError:  # '[' * 100000
            raise too_deep from None
        if _nesting(data) > MAX_JSON_NESTING:  # asdict and printing would recurse
            raise too_deep
        check = _Fields(source)
        check.expect(isinstance(data, dict), "", "a JSON object", data)
        missing = [name for name in ("model", "task", "input") if name not in data]
        if missing:
            raise BadInput(f"{source}: edgecnn metadata has no field {missing[0]!r}")
        check.expect(isinstance(data["input"], dict), "input", "a JSON object", data["input"])
        inputs = {key: value for key, value in data["input"].items()
                  if key in InputInfo.__dataclass_fields__}
        known = {key: value for key, value in data.items()
                 if key in cls.__dataclass_fields__ and key != "input"}
        metadata = cls(input=InputInfo(**inputs), **known)  # unknown keys: newer writers
        metadata.validate(source)
        return metadata

    def validate(self, source: str = "model", parameters: Mapping[str, str] | None = None) -> None:
        """Each field's type and range; BadInput "<source>: edgecnn metadata field ...".

        ``parameters`` maps field names ("input.mean") to the API parameters they were given as
        ("mean"): a message about such a field then begins with the parameter's name ("mean
        must be ..."), as the API's messages do (the CLI shows the flag)."""
        check = _Fields(source, parameters)
        check.string("model", self.model)
        check.expect(self.task in TASKS, "task", f"one of {', '.join(TASKS)}", self.task)
        check.choice("precision", self.precision, FILE_PRECISIONS)
        check.integer("opset", self.opset, 1, 10_000)
        check.string("edgecnn_version", self.edgecnn_version)
        if self.deform_lowering is not None:
            check.choice("deform_lowering", self.deform_lowering, LOWERINGS)
        check.expect(self.quantization is None or isinstance(self.quantization, dict),
                     "quantization", "an object or null", self.quantization)
        if self.labels is not None:
            check.expect(isinstance(self.labels, list)
                         and all(isinstance(label, str) for label in self.labels),
                         "labels", "a list of strings", self.labels)
        if self.tolerances is not None:
            check.expect(isinstance(self.tolerances, dict)
                         and set(self.tolerances) <= set(TOLERANCE_KEYS), "tolerances",
                         f"an object keyed by {', '.join(TOLERANCE_KEYS)}", self.tolerances)
            for precision, bound in self.tolerances.items():
                check.positive(f"tolerances.{precision}", bound)
        if self.weights is not None:
            check.string("weights", self.weights)
        check.expect(self.options is None or (isinstance(self.options, dict) and all(
            isinstance(value, (bool, int, float, str)) for value in self.options.values())),
            "options", "an object of numbers, booleans and strings, or null", self.options)
        _validate_input(self.input, check)

    def check_graph(self, inputs: Mapping[str, Sequence], output: Sequence,
                    source: str = "model", parameters: Mapping[str, str] | None = None) -> None:
        """The metadata agrees with the graph: ``inputs`` maps each graph input's name to its dims
        (batch first; an int for a fixed axis, None or a name for a dynamic one), ``output`` is
        the first output's dims, whose axis 1 is the class count the labels must match;
        ``parameters`` as in ``validate``."""
        check = _Fields(source, parameters)
        info = self.input
        check.expect(info.name in inputs, "input.name",
                     f"one of the graph's inputs ({', '.join(map(repr, inputs))})", info.name)
        graph = [fixed_size(size) for size in inputs[info.name]]
        check.expect(len(graph) == 4, "input.shape", f"[C, H, W] of an image batch, but the "
                     f"graph's input {info.name!r} has rank {len(graph)}", info.shape)
        channels, height, width = info.shape
        expected = [channels, height, width] if info.layout == "NCHW" else [height, width, channels]
        agrees = all(size is None or size == want for size, want in zip(graph[1:], expected))
        check.expect(agrees, "input.shape", f"[C, H, W] matching the graph's {info.layout} "
                     f"input {describe_dims(graph)}", info.shape)
        check.expect(self.task != "segmentation" or len(output) == 4, "task",
                     f"classification for the graph's first output {describe_dims(output)} "
                     "(a segmentation model's is a class map [N, classes, H, W])", self.task)
        classes = fixed_size(output[1]) if len(output) > 1 else None
        if self.labels is not None and classes is not None:
            check.expect(len(self.labels) == classes, "labels",
                         f"one per class ({classes}, the graph's output axis 1)", self.labels,
                         got=f"{len(self.labels)} labels")

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> "ModelMetadata | None":
        """Parse the model's metadata_props map; None when it has no edgecnn entry."""
        text = props.get(METADATA_KEY)
        return None if text is None else cls.from_json(text, source)


def _validate_input(info: InputInfo, check: "_Fields") -> None:
    check.string("input.name", info.name)
    check.expect(isinstance(info.shape, list) and len(info.shape) == 3, "input.shape",
                 "a list [C, H, W]", info.shape)
    check.expect(all(_is_int(size) and 1 <= size <= MAX_SIDE for size in info.shape),
                 "input.shape", f"[C, H, W] of integers in [1, {MAX_SIDE}]", info.shape)
    channels, height, width = info.shape
    check.expect(channels * height * width <= MAX_ELEMENTS, "input.shape",
                 f"at most {MAX_ELEMENTS:,} values (C*H*W)", info.shape)
    check.choice("input.layout", info.layout, LAYOUTS)
    check.choice("input.color", info.color, COLORS)
    # RGB and BGR images have 3 channels; GRAY also describes the non-image N-channel inputs of
    # `export --in-channels N` (Engine.run takes them; preprocessing refuses them).
    check.expect(info.color == "GRAY" or channels == 3, "input.color",
                 f"GRAY for a {channels}-channel input (RGB and BGR have 3)", info.color)
    # Preprocessing computes in float32: 1e300 or 1e-50 are numbers, but not float32's.
    check.float32("input.scale", info.scale, positive=True)
    for name, values in (("input.mean", info.mean), ("input.std", info.std)):
        check.expect(isinstance(values, list) and len(values) == channels, name,
                     f"a list of one number per channel ({channels})", values)
        for value in values:
            check.float32(name, value, positive=name == "input.std")
    check.number("input.crop_fraction", info.crop_fraction)
    check.expect(MIN_CROP_FRACTION <= info.crop_fraction <= 1, "input.crop_fraction",
                 f"in [{MIN_CROP_FRACTION}, 1]",
                 info.crop_fraction)


class _Fields:
    """The checks ``validate`` and ``check_graph`` make, each raising one BadInput line."""

    def __init__(self, source: str, parameters: Mapping[str, str] | None = None):
        self.source, self.parameters = source, parameters or {}

    def expect(self, condition: bool, name: str, requirement: str, value: Any,
               got: str | None = None) -> None:
        if condition:
            return
        got = got or _short.repr(value)
        if name in self.parameters:
            raise BadInput(f"{self.parameters[name]} must be {requirement}, got {got}")
        where = f"field {name!r}" if name else "entry"
        raise BadInput(f"{self.source}: edgecnn metadata {where} must be {requirement}, got {got}")

    def string(self, name: str, value: Any) -> None:
        self.expect(isinstance(value, str), name, "a string", value)

    def choice(self, name: str, value: Any, choices: Sequence[str]) -> None:
        self.expect(isinstance(value, str) and value in choices, name,
                    f"one of {', '.join(choices)}", value)

    def integer(self, name: str, value: Any, low: int, high: int) -> None:
        self.expect(_is_int(value) and low <= value <= high, name,
                    f"an integer in [{low}, {high}]", value)

    def number(self, name: str, value: Any) -> None:
        self.expect(_is_finite_number(value), name, "a finite number", value)

    def positive(self, name: str, value: Any) -> None:
        self.number(name, value)
        self.expect(value > 0, name, "> 0", value)

    def float32(self, name: str, value: Any, positive: bool = False) -> None:
        """A finite number float32 holds (for ``positive``: > 0 and not rounded to 0)."""
        if positive:
            self.positive(name, value)
            self.expect(FLOAT32_TINY <= value <= FLOAT32_MAX, name,
                        "a number float32 can hold (1.2e-38 to 3.4e38)", value)
        else:
            self.number(name, value)
            self.expect(abs(value) <= FLOAT32_MAX, name,
                        "a number float32 can hold (magnitude up to 3.4e38)", value)


def _nesting(data: Any) -> int:
    """How many levels of lists and objects ``data`` has (counted without recursion)."""
    deepest, pending = 0, [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_NESTING:
                pending.extend((item, depth + 1) for item in
                               (value.values() if isinstance(value, dict) else value))
    return deepest


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no size


def _is_finite_number(value: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float (JSON allows any digit count)
        return False


def fixed_size(size: Any) -> int | None:
    """A graph axis as an int when fixed; None for a named (dynamic) or unknown axis."""
    return size if _is_int(size) and size > 0 else None


def describe_dims(dims: Sequence) -> str:
    """[1, 3, ?, ?]: fixed axes as numbers, dynamic (named, None) ones as '?'."""
    return "[" + ", ".join(str(fixed_size(size) or "?") for size in dims) + "]"
