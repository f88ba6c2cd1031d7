"""Reference data from real torchvision, for tests/test_torchvision_compat.py.

torchvision cannot be installed next to edgecnn's torch, so this script runs ONCE, by hand, in a
separate virtual environment that has torchvision (never in CI):

    python3 -m venv /tmp/tvenv
    /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy
    /tmp/tvenv/bin/python tests/data/make_torchvision_reference.py

For every architecture edgecnn shares with torchvision it writes

- ``torchvision_manifest.json``: the state_dict manifest, ``[key, shape]`` in torchvision's
  order (BatchNorm running statistics and ``num_batches_tracked`` included), plus the input
  shape used below and the torchvision version;
- ``torchvision_logits.npz``: torchvision's eval-mode output on a fixed input, with every
  tensor of the state_dict filled by ``fill_state`` — numpy only, seeded per key name — so the
  test regenerates the same weights without torchvision and compares the logits.

No checkpoint is stored: the weights are a function of the key names.
"""

from __future__ import annotations

import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MANIFEST_FILE = HERE / "torchvision_manifest.json"
LOGITS_FILE = HERE / "torchvision_logits.npz"
BATCH = 2

# edgecnn name -> (torchvision builder, builder kwargs, input H = W). Small inputs keep the
# test cheap; each is valid for the architecture (VGG/DenseNet: 32 is the smallest).
ARCHITECTURES = {
    "alexnet": ("alexnet", {}, 63),
    **{f"vgg{d}{bn}": (f"vgg{d}{bn}", {}, 32) for d in (11, 13, 16, 19) for bn in ("", "_bn")},
    "googlenet": ("googlenet", {"aux_logits": False, "init_weights": False}, 64),
    **{f"resnet{d}": (f"resnet{d}", {}, 64) for d in (18, 34, 50, 101, 152)},
    "densenet121": ("densenet121", {}, 32),
    "mobilenet_v2": ("mobilenet_v2", {}, 64),
}
# Manifests only: the layouts with training-only parts, as torchvision's checkpoints store them.
EXTRA_MANIFESTS = {
    "googlenet_aux_logits": ("googlenet", {"aux_logits": True, "init_weights": False}),
}


def fill_tensor(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic, realistic values for one state_dict entry, from its name and shape."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    if key.endswith("running_mean"):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)
    if key.endswith("running_var"):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if len(shape) >= 2:  # conv / linear weight: He-scaled so activations stay of order one
        scale = np.float32(math.sqrt(2.0 / math.prod(shape[1:])))
        return rng.standard_normal(shape, dtype=np.float32) * scale
    if key.endswith("bias"):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)
    return rng.uniform(0.5, 1.5, shape).astype(np.float32)  # BatchNorm weight


def fill_state(manifest: list) -> dict[str, np.ndarray]:
    return {key: fill_tensor(key, tuple(shape)) for key, shape in manifest}


def reference_input(size: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((BATCH, 3, size, size), dtype=np.float32)


def main() -> int:
    import torch
    import torchvision

    torch.set_grad_enabled(False)

    def manifest_of(builder: str, kwargs: dict) -> tuple:
        model = getattr(torchvision.models, builder)(weights=None, **kwargs).eval()
        return model, [[key, list(value.shape)] for key, value in model.state_dict().items()]

    manifests, logits = {}, {}
    for name, (builder, kwargs, size) in ARCHITECTURES.items():
        model, manifest = manifest_of(builder, kwargs)
        state = {key: torch.from_numpy(value) for key, value in fill_state(manifest).items()}
        model.load_state_dict(state, strict=True)
        logits[name] = model(torch.from_numpy(reference_input(size))).numpy()
        manifests[name] = {"builder": builder, "kwargs": kwargs, "input": [BATCH, 3, size, size],
                           "state_dict": manifest}
        print(f"{name}: {len(manifest)} keys, logits {logits[name].shape}", file=sys.stderr)
    for name, (builder, kwargs) in EXTRA_MANIFESTS.items():
        manifests[name] = {"builder": builder, "kwargs": kwargs,
                           "state_dict": manifest_of(builder, kwargs)[1]}
    document = {"torchvision": torchvision.__version__, "torch": torch.__version__,
                "architectures": manifests}
    MANIFEST_FILE.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    np.savez_compressed(LOGITS_FILE, **logits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
