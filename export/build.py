"""The eager side of an export or a check: the module (a registered name, or a ModelSpec of
edgecnn.export.user_model) with its weights, a seeded random input, the eager outputs by name,
and what the metadata records of the weights."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from edgecnn import models
from edgecnn.errors import BadInput, first_line, out_of_memory
from edgecnn.export.user_model import check_one_input, is_program, resolve_spec
from edgecnn.ops import randomize_offset_predictors

# export_model's own arguments that a model builder also takes: model_options cannot set them
# (the CLI has a flag for each, --num-classes and so on).
OWN_ARGUMENTS = ("num_classes", "in_channels", "weights", "seed")


def check_model_options(model_options: Mapping | None, *, registered: bool) -> None:
    """BadInput when ``model_options`` sets what is an argument of its own (num_classes...).
    A model that is not registered takes in_channels, if at all, as one of its own options."""
    owned = OWN_ARGUMENTS if registered else set(OWN_ARGUMENTS) - {"in_channels"}
    own = sorted(set(model_options or ()) & set(owned))
    if own:
        raise BadInput(f"model_options cannot set {', '.join(own)}: each is an argument of "
                       "its own")


def builder_arguments(spec: models.ModelSpec, in_channels: int | None,
                      model_options: Mapping | None) -> dict:
    """build_model's keyword arguments besides num_classes/weights/seed: a registered builder
    takes ``in_channels``; for a model that is not registered it describes the input, and
    ``model_options`` (its builder's own) may hold an ``in_channels`` of its own."""
    options = dict(model_options or {})
    return {**options, "in_channels": in_channels} if spec.source is None else options


def build_model(name: str | models.ModelSpec, *, num_classes: int | None = None,
                in_channels: int | None = None, weights: str | os.PathLike | None = None,
                seed: int = 0, **options) -> nn.Module:
    """A model in eval mode (a registered name, or a ModelSpec of edgecnn.export.user_model):
    loaded from ``weights`` or seeded random; a .pt2 program keeps the weights it carries.

    Random models get non-trivial BatchNorm statistics (see randomize_batchnorm_stats) and
    deformable convolutions random offsets (randomize_offset_predictors) so that a parity check
    exercises both. ``in_channels`` goes to the builder: a registered one's, or the option of
    that name of a model that is not registered, for which the input's channels are not an
    argument (``builder_arguments`` gives the arguments either way).
    """
    spec = resolve_spec(name)
    if in_channels is not None:
        options["in_channels"] = in_channels
    if weights is not None and spec.own_weights:
        raise BadInput(f"weights: {spec.source} carries its own weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.create(spec, num_classes=num_classes, **options)
    if spec.own_weights:
        return model.eval()
    if weights is not None:
        models.load_weights(model, weights)
    else:
        models.randomize_batchnorm_stats(model, seed)
        randomize_offset_predictors(model, seed)
    return model.eval()


@contextlib.contextmanager
def in_eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside; on the way out every submodule gets its own mode back (a
    check inside a training loop leaves training on, and a part frozen in eval stays so)."""
    modes = [(part, part.training) for part in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for part, training in modes:
            part.training = training


def random_input(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator)


def _input_hint(model: nn.Module, example: torch.Tensor) -> str:
    """What to give when the module fails on ``example``: the channels its first convolution
    takes, when they are not the input's; else batch 1, for a module of one image at a time."""
    first = next(((name, layer) for name, layer in model.named_modules()
                  if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))), None)
    if first is not None and example.ndim > 1 and first[1].in_channels != example.shape[1]:
        channels = first[1].in_channels
        return (f"; its first convolution, {first[0]}, takes {channels} channels: give "
                f"in_channels={channels}")
    return "; if it takes one batch size only, give it: batch=1" if len(example) > 1 else ""


def run_eager(model: nn.Module, example: torch.Tensor,
              spec: models.ModelSpec) -> dict[str, np.ndarray]:
    """The eager outputs by name: the task's output name for one tensor; a tuple or list of
    tensors adds ``<name>_1``, ``<name>_2``...; a dict keeps its keys. A failure here means the
    input's size (or its batch) does not suit the model."""
    check_one_input(model, spec.name)
    try:
        with torch.no_grad():
            result = model(example)
    except RuntimeError as error:
        if out_of_memory(error):  # not the input's fault: the CLI says out of memory
            raise
        hint = _input_hint(model, example)
        raise BadInput(f"input {list(example.shape)} does not work for {spec.name}: "
                       f"{first_line(error, 200)}{hint}") from None
    if isinstance(result, torch.Tensor):
        named = {spec.output_name: result}
    elif isinstance(result, dict):
        named = {str(key): value for key, value in result.items()}
    elif isinstance(result, (tuple, list)):
        named = {spec.output_name if index == 0 else f"{spec.output_name}_{index}": value
                 for index, value in enumerate(result)}
    else:
        named = {"": result}
    if not named or not all(isinstance(value, torch.Tensor) for value in named.values()):
        kinds = sorted({type(value).__name__ for value in named.values()}) or ["nothing"]
        raise BadInput(f"{spec.name} returns {', '.join(kinds)}; edgecnn exports models that "
                       "return a tensor, or a tuple, list or dict of tensors")
    return {name: value.numpy() for name, value in named.items()}


def weights_provenance(spec: models.ModelSpec, module: nn.Module,
                       weights: str | os.PathLike | None, seed: int) -> str:
    """What the metadata records of the weights: "random (seed N)", "NAME sha256:HEX" of the
    weights file (or of the .pt2 program that carries them), or, for a module passed in with
    its weights, ``state_dict_provenance``."""
    if is_program(spec):
        return _file_digest(spec.source)
    if spec.own_weights:
        return state_dict_provenance(module)
    return f"random (seed {seed})" if weights is None else _file_digest(weights)


def _file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return f"{Path(path).name} sha256:{digest.hexdigest()}"


def state_dict_provenance(module: nn.Module) -> str:
    """What the metadata records of a module passed in with its weights: "NAME state_dict
    sha256:HEX" over its state_dict's names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(f"{key} {tuple(value.shape)} {value.dtype}".encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return f"{type(module).__name__} state_dict sha256:{digest.hexdigest()}"
