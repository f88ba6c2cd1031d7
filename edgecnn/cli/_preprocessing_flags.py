"""The preprocessing flags of a file without edgecnn metadata (`run`, `evaluate`, `quantize`,
`annotate`; `bench` takes the shape ones): declared once, validated by
edgecnn.runtime.preprocess_settings, whose defaults the help texts state."""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Optional

import typer

from edgecnn.cli._parsing import parse_input_size, parse_numbers


def preprocessing_settings(input_size: str | None = None, mean: str | None = None,
                           std: str | None = None, **flags) -> dict:
    """The preprocessing flags (`run`, `bench`, `annotate`) as edgecnn.runtime.preprocess_settings
    takes them: numbers parsed, the --labels file left to the runtime to read, flags not given
    left out."""
    settings = {"input_size": parse_input_size(input_size), "mean": parse_numbers(mean, "--mean"),
                "std": parse_numbers(std, "--std"), **flags}
    return {name: value for name, value in settings.items() if value is not None}


MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", metavar="M [M M]",
    help="Per-channel mean subtracted after --scale, in the model's channel order (space- or "
         "comma-separated). Default: the file's metadata; without it ImageNet's (0.485 0.456 "
         "0.406) for 3 channels, else 0 (and 0 for an integer input).")]
StdOpt = Annotated[Optional[str], typer.Option(
    "--std", metavar="S [S S]",
    help="Per-channel std divided by after the mean. Default: the file's metadata; without it "
         "ImageNet's (0.229 0.224 0.225) for 3 channels, else 1 (and 1 for an integer input).")]
PreprocessInputSizeOpt = Annotated[Optional[str], typer.Option(
    "--input-size", metavar="H W",
    help="Input height and width: one int (square) or two. Default: the graph's when fixed "
         "(needed when they are dynamic).")]
LayoutOpt = Annotated[Optional[str], typer.Option(
    "--layout", metavar="NCHW|NHWC",
    help="Axis order of the input. Default: from the graph (NHWC when only its last axis "
         "has 1 or 3 elements), else NCHW.")]
ColorOpt = Annotated[Optional[str], typer.Option(
    "--color", metavar="RGB|BGR|GRAY",
    help="Channel order the model expects. Default: RGB for 3 channels, GRAY otherwise.")]
ScaleOpt = Annotated[Optional[float], typer.Option(
    "--scale", help="Pixel values (0-255) are divided by this before --mean/--std. Default: 255 "
                    "(1 for an integer input, which takes the pixels as they are).")]
TaskOpt = Annotated[Optional[str], typer.Option(
    "--task", metavar="classification|segmentation",
    help="What the first output is. Default: segmentation for a 4-D output other than "
         "(N, classes, 1, 1), else classification.")]
CropFractionOpt = Annotated[Optional[float], typer.Option(
    "--crop-fraction",
    help="Share of the resized image the model sees (center crop), in [{min_crop}, 1]. "
         "Default: 0.875 "
         "(ImageNet's resize 256, crop 224); 1 keeps the whole frame.")]
LabelsOpt = Annotated[Optional[str], typer.Option(
    "--labels", metavar="FILE",
    help="Text file of class names, one per line (as many as the output has classes).")]
InputNameOpt = Annotated[Optional[str], typer.Option(
    "--input-name", metavar="NAME",
    help="The image input of a model with several inputs. Default: the only input.")]


# The preprocessing flags in the order --help lists them (run, evaluate, quantize, annotate).
PREPROCESSING_FLAGS = {"mean": MeanOpt, "std": StdOpt, "input_size": PreprocessInputSizeOpt,
                       "layout": LayoutOpt, "color": ColorOpt, "scale": ScaleOpt,
                       "labels": LabelsOpt, "task": TaskOpt, "crop_fraction": CropFractionOpt,
                       "input_name": InputNameOpt}


def with_preprocessing_flags(command):
    """Give a command the preprocessing flags of a file without edgecnn metadata: they arrive
    as its ``preprocessing`` argument, the dict ``preprocessing_settings`` makes of the flags
    given. One declaration for every command that takes them."""
    signature = inspect.signature(command, eval_str=True)  # the module's Annotated options
    kept = [parameter for name, parameter in signature.parameters.items()
            if name != "preprocessing"]
    flags = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=option) for name, option in PREPROCESSING_FLAGS.items()]

    @functools.wraps(command)
    def with_flags(**arguments):
        given = {name: arguments.pop(name) for name in PREPROCESSING_FLAGS}
        return command(**arguments, preprocessing=preprocessing_settings(**given))

    with_flags.__signature__ = signature.replace(parameters=kept + flags)
    return with_flags
