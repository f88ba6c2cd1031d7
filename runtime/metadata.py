"""The ``edgecnn`` metadata every exported model carries (``metadata_props["edgecnn"]``).

One JSON object describes the model so the runtime can preprocess inputs and label outputs
without any other flags. This module is torch-free and onnx-free: the exporter writes the
object through ``ModelMetadata.to_json`` and the runtime reads it back with ``from_json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from edgecnn.errors import BadInput

METADATA_KEY = "edgecnn"
PRECISIONS = ("fp32", "fp16", "int8")
LOWERINGS = ("native", "decomposed")


@dataclass
class InputInfo:
    """How raw images become the model's input tensor."""

    name: str = "input"
    shape: list[int] = field(default_factory=lambda: [3, 224, 224])  # C, H, W
    layout: str = "NCHW"
    color: str = "RGB"  # "RGB" or "GRAY"
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "ModelMetadata":
        try:
            data = json.loads(text)
            data["input"] = InputInfo(**data["input"])
            known = {name for name in cls.__dataclass_fields__}
            metadata = cls(**{key: value for key, value in data.items() if key in known})
        except (ValueError, TypeError, KeyError) as error:
            raise BadInput(f"{source}: malformed edgecnn metadata ({error})") from None
        if metadata.precision not in PRECISIONS:
            raise BadInput(f"{source}: unknown precision {metadata.precision!r} in metadata")
        return metadata

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> "ModelMetadata | None":
        """Parse the model's metadata_props map; None when it has no edgecnn entry."""
        text = props.get(METADATA_KEY)
        return None if text is None else cls.from_json(text, source)
