"""Loading checkpoints into zoo models, and random-but-realistic BatchNorm statistics."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from edgecnn.errors import BadInput, first_line

# Checkpoints written by training scripts often nest the state_dict under one of these keys.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_SHOWN_KEYS = 3


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict file safely (``weights_only=True``); BadInput on any problem."""
    path = Path(path)
    if path.is_dir():
        raise BadInput(f"weights path is a directory, not a file: {path}")
    if not path.is_file():
        raise BadInput(f"weights file not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before failing
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" not in str(error):
            raise BadInput(f"cannot read weights file {path}: {first_line(error, 200)}") from None
        raise BadInput(_refused_pickle(path, str(error))) from None
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise BadInput(f"cannot read weights file {path}: {first_line(error, 200)}") from None
    for key in _NESTED_KEYS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()):
        raise BadInput(f"weights file {path} does not hold a state_dict (name -> tensor)")
    return loaded


_RESAVE = "re-save only the weights with torch.save(model.state_dict(), FILE)"


def _refused_pickle(path: Path, torch_message: str) -> str:
    """One line for a file the weights-only unpickler refused (torch's message is a page)."""
    detail = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", torch_message, re.S)
    detail = " ".join(detail.group(1).split()) if detail else ""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", detail)
    if found:  # a whole pickled model, or a checkpoint with Python objects beside its tensors
        return (f"cannot read weights file {path}: it holds a pickled Python object "
                f"({found.group(1)}), not only tensors, and unpickling objects can run "
                "arbitrary code; " + _RESAVE)
    with open(path, "rb") as stream:
        head = stream.read(2)
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle's PROTO opcode
        return (f"cannot read weights file {path}: a plain pickle (protocol {head[1]}), not a "
                "torch.save file of tensors, and unpickling it could run arbitrary code; "
                + _RESAVE)
    return f"cannot read weights file {path}: not a torch.save file ({detail[:120] or 'unreadable'})"


def _first(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a state_dict file into ``model`` strictly; mismatches raise BadInput naming the keys.

    Only optional state may be absent from the file, and keeps the model's values: BatchNorm's
    ``num_batches_tracked`` and the ``optional_state_keys`` a submodule declares (e.g. the
    offset predictors of a DeformConv2d, so a plain ResNet checkpoint loads into a deformable
    ResNet).
    """
    state = read_state_dict(path)
    # A model may translate a checkpoint format it is known to meet (torchvision's legacy
    # DenseNet key names, GoogLeNet's training-only auxiliary heads); see the model's docstring.
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        state = adapt(state)
    expected = model.state_dict()
    state = {**_optional_state(model, expected), **state}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    if problems:
        raise BadInput(f"weights {path} do not match {type(model).__name__}: " + "; ".join(problems))
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
                  for key, value in expected.items()
                  if key in state and state[key].shape != value.shape]
    if mismatched:
        raise BadInput(f"weights {path} have wrong shapes (file vs model): {_first(mismatched)}"
                       " (check --num-classes / --in-channels)")
    model.load_state_dict(state)
    return model


def _optional_state(model: nn.Module, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``expected`` (the model's state_dict) a checkpoint may leave out."""
    # Checkpoints from before PyTorch 0.4.1 (e.g. torchvision's VGG-BN and DenseNet downloads)
    # have no BatchNorm ``num_batches_tracked``, a training counter that eval never reads;
    # torch's own strict loading accepts them, so do we.
    optional = {key: value for key, value in expected.items()
                if key.endswith(".num_batches_tracked")}
    for name, module in model.named_modules():
        for key in getattr(module, "optional_state_keys", ()):
            full_key = f"{name}.{key}" if name else key
            optional[full_key] = expected[full_key]
    return optional


@torch.no_grad()
def randomize_batchnorm_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters.

    Freshly initialised BatchNorm has running_mean 0, running_var 1, weight 1, bias 0, which
    makes it the identity in eval mode and lets a broken BatchNorm export pass a parity test.
    The values stay in a realistic range so activations neither vanish nor explode.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(shape, generator=generator) * 0.5 + 0.75)
            if module.affine:
                module.weight.copy_(torch.rand(shape, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(shape, generator=generator) * 0.1)
    return model
