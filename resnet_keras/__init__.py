"""ResNet (He et al. 2015; pre-activation: He et al. 2016) for TensorFlow and Keras 3.

    >>> import resnet_keras
    >>> model = resnet_keras.create_model("resnet20")          # CIFAR-10, option A shortcuts
    >>> model = resnet_keras.build_model(resnet_keras.ModelConfig(depth=50, variant="v1.5"))

Names are imported on first use, so `import resnet_keras` (and `resnet-keras --help`)
does not pay TensorFlow's start-up time until a model or dataset is touched.
"""

import importlib
import os

# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI/BF16 or AMX.
# On AVX2 CPUs they still train ResNet-20 2.95x and ResNet-50 2.05x faster than the default kernels
# (AMD EPYC, 2 cores: 272 vs 92 and 3.44 vs 1.68 images/s, `resnet-keras benchmark --compare`). The
# switch is read once, when TensorFlow loads, so it is set here, before any module imports it;
# TF_ENABLE_ONEDNN_OPTS=0 in the environment still turns it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

_EXPORTS = {
    "config.schema": ["DataConfig", "ModelConfig", "TrainConfig"],
    "core.errors": ["ConfigError", "DataError", "ExportFailure", "ResNetKerasError", "TrainingFailure", "UsageError"],
    "zoo.models": [
        "build_backbone",
        "build_classifier",
        "build_model",
        "count_multiply_adds",
        "count_parameters",
        "describe",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet1202",
    ],
    "pretrained.resolve": ["create_model"],
    "config.recipes": ["RECIPES", "Recipe"],
    "runs.rundir": ["RunDir"],
    "zoo.portable": ["load_model"],
    "config.specs": ["PRESETS", "StageSpec"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


# Registers our custom Keras layers when Keras loads, so `keras.saving.load_model` reads our files
# after a plain `import resnet_keras` without this import paying for TensorFlow (see portable.py).
importlib.import_module("resnet_keras.zoo.portable").register_when_keras_loads()


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'resnet_keras' has no attribute {name!r}")
    return getattr(importlib.import_module(f"resnet_keras.{_WHERE[name]}"), name)


def __dir__():
    return sorted(list(globals()) + __all__)
