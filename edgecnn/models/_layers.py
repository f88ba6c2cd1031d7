"""Helpers several architecture files share: initialisations and dataset constants."""

from __future__ import annotations

from torch import nn

# MNIST's pixel statistics (0-1 scale), the usual normalization for 28x28 grey digits.
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

# Spec fields shared by the fixed-size 28x28 grey classifiers (lenet.py, keras_cnn.py).
GREY_28 = dict(task="classification", input_size=(1, 28, 28), num_classes=10,
               test_input=(28, 28), fixed_input_size=True, crop_fraction=1.0)


def init_like_torchvision(model: nn.Module, *, conv_mode: str = "fan_out",
                          linear_std: float | None = None) -> None:
    """torchvision's CNN initialisation: Kaiming-normal convolutions (``conv_mode`` fan_out or
    fan_in, zero bias), unit/zero BatchNorm; with ``linear_std`` also N(0, std) fully
    connected weights and zero biases (VGG, MobileNet), else PyTorch's default for those."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode=conv_mode, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0, linear_std)
            nn.init.zeros_(module.bias)


def init_xavier_uniform(model: nn.Module) -> None:
    """Xavier/Glorot-uniform weights and zero biases for every conv and fully connected layer:
    d2l's ``init_cnn`` and Keras' default initialisation."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
