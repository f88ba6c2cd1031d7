"""The model zoo: ``create(name)``, ``list_models()``, ``get_spec(name)``.

Each architecture module registers its builders with ``@register_model`` when imported; the
imports below are the only place that names the modules.
"""

from edgecnn.models._registry import (
    ModelSpec,
    create,
    get_spec,
    list_models,
    register_model,
)
from edgecnn.models.weights import load_weights, randomize_batchnorm_stats, read_state_dict

# Architecture modules (imported for their @register_model side effect).
from edgecnn.models import resnet  # noqa: E402,F401
from edgecnn.models import resnet_dcn  # noqa: E402,F401
from edgecnn.models import (  # noqa: E402,F401
    alexnet, densenet, fcn, googlenet, keras_cnn, lenet, mobilenet, nin, preact_resnet, vgg,
)

__all__ = [
    "ModelSpec", "create", "get_spec", "list_models", "register_model",
    "load_weights", "randomize_batchnorm_stats", "read_state_dict",
]
